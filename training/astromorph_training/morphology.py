"""Optical galaxy morphology (``morphology``): Galaxy Zoo 1 SDSS cutouts, 5 classes.

Data: ``<data-dir>/gz1/images/<objid>.jpeg`` (423 x 423 SDSS gri composites)
with the Galaxy Zoo 1 leaf class in ``gz1/labels.csv``. Classes, in output
order: elliptical, spiral (clockwise and anticlockwise merged), edge_on,
merger, artifact (GZ1 "star / don't know").

Steps
-----
``train``
    Stratified 70/15/15 train/validation/test split with a fixed seed
    (`SPLIT_SEED`, independent of ``--seed``). Every image goes once through
    `astromorph.preprocessing._optical.preprocess_colour_cutout` at 1.5 times
    the network field of view (96 x 96 pixels) and at the network field of
    view (64 x 64); both are cached as ``.npy`` under ``training/cache/``.
    Training stamps are cut from the larger cache by a random affine
    resampling (any rotation, flips, shifts, zooms) and then blurred, noised,
    re-stretched, colour-jittered and turned grey at random. Class imbalance:
    square-root class-balanced sampling; the prior shift it introduces is
    undone at export by a logit adjustment. AdamW with cosine learning rate,
    exponential moving average (EMA) of the weights; checkpoints every epoch
    in ``training/checkpoints/morphology/`` (``last.pt``; rerun to resume).
``evaluate``
    Builds the deployed network (EMA weights, logit adjustment, `DEFAULT_TTA`
    orientations averaged inside the graph (1 since 1.1.0), temperature fitted on
    the validation split, softmax), exports it to
    ``models/morphology/model.onnx`` and evaluates *that file* with
    onnxruntime on the held-out test split: ``training/reports/morphology/``
    ``metrics.json``, ``confusion_matrix.png``, ``reliability.png``.
``export``
    Re-exports the same ONNX graph (deterministic), checks torch/ONNX parity,
    measures throughput and writes ``models/morphology/card.json`` quoting
    ``metrics.json``.
"""
import copy
import csv
import json
import logging
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from astromorph.preprocessing._optical import (
    CROP_FRACTION,
    GZ1_CUTOUT_PIXELS,
    GZ1_PIXEL_SCALE_PER_PETRO_R90,
    LUPTON_BAND_SCALES,
    LUPTON_MINIMUM,
    LUPTON_Q,
    LUPTON_STRETCH,
    STAMP_SIZE,
    preprocess_colour_cutout,
)

from . import _common

log = logging.getLogger(__name__)

NAME = "morphology"
CLASS_NAMES = ("elliptical", "spiral", "edge_on", "merger", "artifact")
#: GZ1 ``class_id`` -> index into `CLASS_NAMES`.
GZ1_TO_CLASS = {0: 0, 1: 1, 2: 1, 3: 2, 4: 4, 5: 3}
#: Seed of the train/validation/test split (fixed, independent of ``--seed``).
SPLIT_SEED = 20240601
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
#: `_common.split_fingerprint` of the (objid, class) rows of ``gz1/labels.csv`` that the
#: shipped models' split was drawn from: other rows are refused without ``--new-split``.
SPLIT_SOURCE_SHA256 = "0ab76a8e949c8d23795fbf4dd5063935f9bda28850b48c8bad4c6222393c640b"
#: Side of the cached training stamps: 1.5 x the network stamp, same pixel scale.
CACHE_SIZE = 96
#: The cached training stamps cover this multiple of the network stamp's field.
CACHE_FIELD = CACHE_SIZE / STAMP_SIZE
CACHE_CROP_FRACTION = CROP_FRACTION * CACHE_FIELD
CACHE_VERSION = 1
DEFAULT_EPOCHS = 60
GREY_PROBABILITY = 0.2
#: Network and loss of the shipped model (2.x). The 1.x models had stem
#: ``conv-pool``, widths (32, 48, 80, 160), no label smoothing and 1 thread
#: (`RECIPE_1X`): 68 M multiply-adds per stamp against 40 M.
DEFAULT_WIDTHS = (32, 48, 48, 128)
WIDTHS_1X = (32, 48, 80, 160)
STEM_1X = "conv-pool"
#: Ways from the input to the 16x16 stage (see `MorphologyNet`).
STEMS = ("conv-pool", "strided", "stride3")
DEFAULT_STEM = "strided"
DEFAULT_LABEL_SMOOTHING = 0.1
DEFAULT_THREADS = 2
#: ``train`` options that reproduce the 1.x network (morphology 1.2.0, the
#: ``morphology-gz2`` 1.1.0 initialisation).
RECIPE_1X = (f"--stem {STEM_1X} --widths {' '.join(map(str, WIDTHS_1X))} "
             "--label-smoothing 0 --threads 1")
#: Orientations averaged inside the exported graph, as (transpose, flip rows, flip
#: columns): the 8 symmetries of the square. The first 4 are the identity, the
#: two flips and the 180 degree rotation; ``--tta 2`` uses identity and 180 degrees.
#: Orientations averaged by the shipped graph. One: on validation galaxies two
#: (identity + 180 degrees) gave accuracy / macro recall 0.864 / 0.776 and one
#: gave 0.863 / 0.806, at half the cost per stamp (so ``annotate`` of large
#: catalogues runs twice as fast).
DEFAULT_TTA = 1
#: What counts as a GZ1 spiral among GZ2 galaxies (`gz2_leaf_labels`, ``--gz2-labels``).
GZ2_SPIRAL_MAPPINGS = ("features", "arms")
TTA_ORIENTATIONS = tuple((t, fr, fc) for t in (False, True) for fr in (False, True)
                         for fc in (False, True))


# ------------------------------------------------------------------------ arguments

#: Input channels of the optical models (``morphology``, ``morphology-gz2``, ``embedding``).
OPTICAL_CHANNELS = ("R: SDSS i (display value in [0, 1])", "G: SDSS r (display value in [0, 1])",
                    "B: SDSS g (display value in [0, 1])")


def optical_preprocessing_options(**extra):
    """The cards' ``input.preprocessing_options`` of the optical models (one definition)."""
    return {
        "size": STAMP_SIZE,
        "crop_fraction": CROP_FRACTION,
        "colour_function": "astromorph.preprocessing.preprocess_colour_cutout",
        "gri_function": "astromorph.preprocessing.preprocess_gri",
        "single_band_function": "astromorph.preprocessing.preprocess_single_band",
        "lupton": {"Q": LUPTON_Q, "stretch": LUPTON_STRETCH, "minimum": LUPTON_MINIMUM,
                   "band_scales": dict(LUPTON_BAND_SCALES),
                   "flux_unit": "SDSS nanomaggies (linear flux, sky subtracted)",
                   "mapping": "R = i, G = r, B = g (astropy.visualization.make_lupton_rgb)"},
        **extra,
    }


#: Options only some steps read -> those steps (the command line refuses them elsewhere).
STEP_OPTIONS = {**dict.fromkeys(("batch_size", "lr", "weight_decay", "ema_decay", "restart",
                                 "widths", "stem", "synthetic_mergers", "gz2_labels",
                                 "label_smoothing", "stamp_size"),
                                ("train",)),
                "tta": ("evaluate", "export")}


def add_arguments(parser):
    """Options of the morphology model."""
    g = parser.add_argument_group("morphology")
    g.add_argument("--batch-size", type=_common.positive_int, default=64,
                   help="training batch size (default %(default)s)")
    g.add_argument("--lr", type=float, default=2e-3,
                   help="peak AdamW learning rate (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=0.05,
                   help="AdamW weight decay (default %(default)s)")
    g.add_argument("--ema-decay", type=float, default=0.995,
                   help="decay of the moving average of the weights that is evaluated and "
                        "exported (default %(default)s)")
    g.add_argument("--threads", type=_common.positive_int, default=None,
                   help=f"torch CPU threads (default: {DEFAULT_THREADS} for train, 1 for evaluate "
                        "and export)")
    g.add_argument("--restart", action="store_true",
                   help="train from scratch (an existing last.pt is kept as last.pt.<time>.bak)")
    g.add_argument("--widths", type=_common.positive_int, nargs=4, default=None, metavar="C",
                   help=f"channel widths of the four CNN stages (default {DEFAULT_WIDTHS})")
    g.add_argument("--stem", choices=STEMS, default=None,
                   help=f"input -> 16x16 steps of the network (default {DEFAULT_STEM}; see MorphologyNet)")
    g.add_argument("--stamp-size", type=_common.positive_int, default=None, metavar="PX",
                   help=f"network input side in pixels over the same field (default {STAMP_SIZE}; "
                        "train only: evaluate and export read the checkpoint's, and need the "
                        "default)")
    g.add_argument("--synthetic-mergers", type=float, default=0.0, metavar="P",
                   help="replace each sampled merger by a composite of two real galaxies with "
                        "probability P (default %(default)s: none; see synthetic_mergers)")
    g.add_argument("--gz2-labels", nargs="?", const="features", default=None,
                   choices=GZ2_SPIRAL_MAPPINGS, metavar="SPIRAL",
                   help="add the morphology-gz2 training split of the GZ2 galaxies with vote "
                        "fractions to the training pool, labelled by `gz2_leaf_labels` with "
                        "spiral = SPIRAL (features: Class2.2, the default; arms: Class4.1) "
                        "(default: GZ1 only)")
    g.add_argument("--label-smoothing", type=float, default=None,
                   help=f"label smoothing of the cross-entropy loss (default {DEFAULT_LABEL_SMOOTHING})")
    g.add_argument("--tta", type=int, default=DEFAULT_TTA, choices=(1, 2, 4, 8),
                   help=f"orientations averaged inside the exported graph (default {DEFAULT_TTA})")


def _get(args, name, default):
    return getattr(args, name, default) if getattr(args, name, None) is not None else default


# ----------------------------------------------------------------------------- data
def read_labels(data_dir):
    """Object ids (str) and class indices of the GZ1 set, in ``labels.csv`` order."""
    path = Path(data_dir) / "gz1" / "labels.csv"
    ids, labels = [], []
    for line, row in _common.read_csv(path, ("objid", "class_id")):
        try:
            labels.append(GZ1_TO_CLASS[int(row["class_id"])])
        except (KeyError, ValueError):
            raise SystemExit(f"{path}, line {line}: class_id {row['class_id']!r} of objid "
                             f"{row['objid']!r} is none of the Galaxy Zoo 1 classes "
                             f"{sorted(GZ1_TO_CLASS)}") from None
        ids.append(row["objid"])
    return np.array(ids), np.array(labels, dtype=np.int64)


def stratified_split(labels, fractions=SPLIT_FRACTIONS, seed=SPLIT_SEED):
    """Indices of a stratified train/validation/test split.

    Every class is shuffled with a fixed generator and cut in the given
    fractions (validation and test rounded, at least one each where a class
    has three or more members).
    """
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(fractions[1] * len(idx))) if len(idx) >= 3 else 0
        n_test = max(1, round(fractions[2] * len(idx))) if len(idx) >= 3 else 0
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test:n_test + n_val])
        parts[0].append(idx[n_test + n_val:])
    return tuple(np.sort(np.concatenate(p)) for p in parts)


def load_jpegs(paths):
    """Decode JPEG/PNG files into a uint8 ``(N, H, W, 3)`` array."""
    from PIL import Image

    def read(path):
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        except FileNotFoundError:
            raise
        except (OSError, SyntaxError, ValueError) as exc:  # corrupt or truncated file
            raise SystemExit(f"{path}: unreadable image ({exc}): replace the file or remove "
                             "its galaxy from the labels") from None

    return np.stack([read(p) for p in paths])


def _preprocess_files(paths, chunk=256, size=STAMP_SIZE):
    """Network stamps (float32, ``size`` px, default 64) and training stamps (float16,
    ``CACHE_FIELD`` times the field at the same pixel scale: 96 px by default)."""
    stamps, big = [], []
    big_size = round(CACHE_FIELD * size)
    for start in range(0, len(paths), chunk):
        images = load_jpegs(paths[start:start + chunk])
        stamps.append(preprocess_colour_cutout(images, size=size))
        big.append(preprocess_colour_cutout(images, size=big_size,
                                            crop_fraction=CACHE_CROP_FRACTION).astype(np.float16))
    return np.concatenate(stamps), np.concatenate(big)


def load_dataset(args, *, size=None, trained=None):
    """All GZ1 stamps, labels and the split, from the cache (built on first use).

    ``size`` is the network input side (default: ``--stamp-size``, else `STAMP_SIZE`);
    evaluate and export pass their checkpoint's, and ``trained``, the fingerprint of
    ``labels.csv`` it records (`_common.check_split_source`).

    Returns
    -------
    dict
        ``ids``, ``labels``, ``stamps`` (N, 3, 64, 64) float32 network input,
        ``big`` (N, 3, 96, 96) float16 training stamps, ``split`` (train,
        val, test index arrays); other sides with ``--stamp-size``. In smoke
        mode: 4 images per class, nothing cached, every split = all of them.
    """
    size = size or _get(args, "stamp_size", None) or STAMP_SIZE
    big_size = round(CACHE_FIELD * size)
    ids, labels = read_labels(args.data_dir)
    image_dir = Path(args.data_dir) / "gz1" / "images"
    if args.smoke:
        rng = np.random.default_rng(0)
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:4]
                                       for c in range(len(CLASS_NAMES))]))
        ids, labels = ids[keep], labels[keep]
        stamps, big = _preprocess_files([image_dir / f"{i}.jpeg" for i in ids], size=size)
        everything = np.arange(len(ids))
        return dict(ids=ids, labels=labels, stamps=stamps, big=big,
                    split=(everything, everything, everything), split_source=None)
    source = _common.check_split_source(Path(args.data_dir) / "gz1" / "labels.csv",
                                        SPLIT_SOURCE_SHA256, ids, labels, args=args,
                                        trained=trained)
    cache = _common.cache_dir(args.out_dir)
    stem = f"morphology_gz1_v{CACHE_VERSION}_s{size}_c{CROP_FRACTION:g}"
    f_ids, f_stamps, f_big = (cache / f"{stem}_{k}.npy" for k in ("ids", "stamps", f"big{big_size}"))
    if f_ids.exists() and f_stamps.exists() and f_big.exists() and \
            np.array_equal(np.load(f_ids), ids):
        stamps, big = np.load(f_stamps), np.load(f_big)
    else:
        log.info("preprocessing %d GZ1 images into %s", len(ids), cache)
        t0 = time.perf_counter()
        stamps, big = _preprocess_files([image_dir / f"{i}.jpeg" for i in ids], size=size)
        for path, arr in ((f_stamps, stamps), (f_big, big), (f_ids, ids)):
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, arr)
            os.replace(tmp, path)
        log.info("cached in %.0f s", time.perf_counter() - t0)
    return dict(ids=ids, labels=labels, stamps=stamps, big=big, split=stratified_split(labels),
                split_source=source)


def gz2_leaf_labels(fractions, columns, spiral="features"):
    """GZ1-style leaf classes (indices into `CLASS_NAMES`) from GZ2 vote fractions: the
    largest of `gz2_leaf_scores`."""
    return gz2_leaf_scores(fractions, columns, spiral).argmax(1)


def gz2_leaf_scores(fractions, columns, spiral="features"):
    """GZ1-style leaf class scores (N, 5), columns in `CLASS_NAMES` order, from GZ2 vote
    fractions; with ``spiral="features"`` they sum to 1 like the answers to GZ1's one question.

    The largest of: merger = Class8.6 (odd feature: merger); elliptical, spiral,
    edge_on and artifact = (1 - Class8.6) times Class1.1 (smooth), Class2.2
    (features or disk, not edge-on), Class2.1 (edge-on) and Class1.3 (star or
    artifact). With ``spiral="arms"`` spiral is Class4.1 (features, not
    edge-on, spiral arms) and Class4.2 (no arms) counts as elliptical. GZ1 leaf
    labels are plurality classes too.

    Parameters
    ----------
    fractions : numpy.ndarray, (N, 37)
        Willett et al. (2013) weighted vote fractions.
    columns : sequence of str
        Their column names (``ClassN.M``).
    spiral : {"features", "arms"}
    """
    if spiral not in GZ2_SPIRAL_MAPPINGS:
        raise ValueError(f"spiral must be one of {GZ2_SPIRAL_MAPPINGS}, got {spiral!r}")
    columns = list(columns)

    def col(name):
        return fractions[:, columns.index(name)]

    if spiral == "arms":
        elliptical, spirals = col("Class1.1") + col("Class4.2"), col("Class4.1")
    else:
        elliptical, spirals = col("Class1.1"), col("Class2.2")
    merger = col("Class8.6")
    by_class = {"elliptical": (1 - merger) * elliptical, "spiral": (1 - merger) * spirals,
                "edge_on": (1 - merger) * col("Class2.1"), "merger": merger,
                "artifact": (1 - merger) * col("Class1.3")}
    return np.stack([by_class[name] for name in CLASS_NAMES], axis=1)


def load_gz2_extra(args, gz1_big, heldout):
    """Extra training galaxies from GZ2 (``--gz2-labels``), at the GZ1 field of view.

    The morphology-gz2 model's training split of the GZ2 galaxies with votes,
    labelled by `gz2_leaf_labels`, minus cutouts that duplicate a held-out GZ1
    galaxy (``embedding.find_duplicates``).

    Returns
    -------
    dict
        ``ids``, ``labels``, ``big`` (N, 3, 96, 96) float16 training stamps,
        ``dropped`` (ids of duplicates removed).
    """
    from . import embedding, gz2  # both import this module

    ids, fractions = gz2.read_votes(args.data_dir)
    tr = gz2.split_indices(len(ids))[0]
    if args.smoke:
        tr = tr[:12]
    else:
        _common.check_split_source(Path(args.data_dir) / "gz2" / "votes.csv",
                                   gz2.SPLIT_SOURCE_SHA256, ids, args=args)
    ids, labels = ids[tr], gz2_leaf_labels(fractions[tr], gz2.LABELS, args.gz2_labels)
    paths = gz2.image_paths(args.data_dir, ids)
    make = lambda: embedding.preprocess_files(paths, "gz2", size=CACHE_SIZE).astype(np.float16)  # noqa: E731
    if args.smoke:
        big = make()
    else:
        big = embedding._cached(_common.cache_dir(args.out_dir)
                                / f"morphology_gz2train_v{CACHE_VERSION}_c{CROP_FRACTION:g}_big{CACHE_SIZE}.npy",
                                make, key=ids.astype(np.int64))

    dup, _, _ = embedding.find_duplicates(embedding._to_uint8(big.astype(np.float32)),
                                          embedding._to_uint8(gz1_big[heldout].astype(np.float32)))
    log.info("GZ2 extra training galaxies: %d, class counts %s, %d dropped as duplicates of "
             "held-out GZ1 galaxies", int((~dup).sum()),
             np.bincount(labels[~dup], minlength=len(CLASS_NAMES)).tolist(), int(dup.sum()))
    return dict(ids=ids[~dup], labels=labels[~dup], big=big[~dup], dropped=ids[dup].tolist())


# ---------------------------------------------------------------------------- model
def _cbr(c_in, c_out, stride=1, kernel=3):
    return [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class MorphologyNet(nn.Module):
    """Small VGG-style CNN: (N, 3, 64, 64) display values in [0, 1] -> logits (N, 5).

    A stride-2 stem to 32x32, then to 16x16 either a 3x3 convolution at 32x32
    and 2x2 max pooling (``stem="conv-pool"``, the 1.x models) or one stride-2
    3x3 convolution (``stem="strided"``, a sixth of the multiply-adds at that
    step). ``stem="stride3"`` is for 96 px stamps: a 5x5 stride-3 first
    convolution to 32x32, then as ``strided``, so that the rest of the network
    costs what it costs on 64 px stamps. Then two stages of two 3x3 convolutions at 16x16 and 8x8 (2x2 max
    pooling after each), one wider convolution at 4x4, global average pooling,
    dropout and a linear classifier.
    """

    def __init__(self, n_classes=len(CLASS_NAMES), widths=DEFAULT_WIDTHS, dropout=0.3,
                 stem=DEFAULT_STEM):
        super().__init__()
        a, b, c, d = widths
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        to16 = [*_cbr(a, b), nn.MaxPool2d(2)] if stem == "conv-pool" else _cbr(a, b, 2)
        first = _cbr(3, a, 3, kernel=5) if stem == "stride3" else _cbr(3, a, 2)
        self.features = nn.Sequential(
            *first,                                                   # 32 x 32 (64 px input)
            *to16,                                                    # 16 x 16
            *_cbr(b, c), *_cbr(c, c), nn.MaxPool2d(2),                # 8 x 8
            *_cbr(c, d), *_cbr(d, d), nn.MaxPool2d(2),                # 4 x 4
            *_cbr(d, 2 * d),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * d, n_classes))
        self.arch = {"widths": [int(w) for w in widths], "stem": stem}

    def forward(self, x):
        # Centre the [0, 1] display values; the first BatchNorm does the rest.
        x = self.features(x - 0.5)
        return self.head(F.adaptive_avg_pool2d(x, 1))


class DeployedMorphology(nn.Module):
    """The shipped graph: orientation-averaged, prior-adjusted, calibrated probabilities.

    ``probabilities = softmax((mean_o logits(o(x)) + bias) / T)`` where ``o``
    runs over the first ``tta`` of `TTA_ORIENTATIONS` (flips, transposes and
    their combinations = rotations by multiples of 90 degrees with or without
    a mirror).
    """

    def __init__(self, net, bias, temperature, tta=8):
        super().__init__()
        self.net = net
        self.tta = int(tta)
        self.orientations = TTA_ORIENTATIONS[:tta] if tta != 2 else TTA_ORIENTATIONS[0:4:3]
        self.register_buffer("bias", torch.as_tensor(np.asarray(bias), dtype=torch.float32))
        self.register_buffer("inv_temperature", torch.tensor(1.0 / float(temperature)))

    def logits(self, x):
        """Orientation-averaged logits plus the prior adjustment (before temperature)."""
        views = []
        for transpose, flip_rows, flip_cols in self.orientations:
            v = x.transpose(2, 3) if transpose else x
            dims = (2,) * flip_rows + (3,) * flip_cols
            views.append(torch.flip(v, dims=dims) if dims else v)
        n = x.shape[0]
        z = self.net(torch.cat(views, 0))
        z = z.reshape(len(views), n, -1).mean(0)
        return z + self.bias

    def forward(self, x):
        return torch.softmax(self.logits(x) * self.inv_temperature, dim=1)


# --------------------------------------------------------------------- augmentation
def _gaussian_kernels(sigma, radius=3):
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    return k / k.sum(1, keepdim=True)


def _uniform(gen, b):
    """``u(lo, hi, *shape)``: uniform draws from ``gen``, shape ``(b,)`` by default."""
    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*(shape or (b,)), generator=gen)
    return u


def random_views(big, gen, *, size, zoom, shift):
    """Views of side ``size`` of cached stamps: rotation by any angle, a random flip, a zoom by
    up to ``exp(+-zoom)`` and a shift by up to ``shift`` cached pixels (bilinear resampling,
    reflected edges). Shared by the supervised and self-supervised augmentations."""
    b = big.shape[0]
    u = _uniform(gen, b)
    angle = u(0, 2 * math.pi)
    scale = torch.exp(u(-zoom, zoom))
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    side = big.shape[-1]
    k = size / side / scale
    cos, sin = torch.cos(angle) * k, torch.sin(angle) * k
    offset = u(-shift, shift, b, 2) * 2 / side
    theta = torch.stack([torch.stack([cos * flip, -sin, offset[:, 0]], 1),
                         torch.stack([sin * flip, cos, offset[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, (b, 3, size, size), align_corners=False)
    return F.grid_sample(big, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_blur(x, gen, *, p, sigma):
    """A Gaussian PSF blur (``sigma`` = (lo, hi) pixels, uniform) of a random fraction ``p`` of
    the stamps ``x`` (B, C, H, W), separable, reflected edges."""
    b, c, h, w = x.shape
    blur = torch.rand(b, generator=gen) < p
    if not blur.any():
        return x
    kern = _gaussian_kernels(_uniform(gen, b)(*sigma, int(blur.sum())))
    xb = x[blur]
    n, r = xb.shape[0], kern.shape[1] // 2
    xb = xb.reshape(1, n * c, h, w)
    kh = kern.repeat_interleave(c, 0)[:, None, None, :]
    xb = F.conv2d(F.pad(xb, (r, r, 0, 0), mode="reflect"), kh, groups=n * c)
    xb = F.conv2d(F.pad(xb, (0, 0, r, r), mode="reflect"), kh.transpose(2, 3), groups=n * c)
    x = x.clone()
    x[blur] = xb.reshape(n, c, h, w)
    return x


def augment(big, gen, *, grey_p=GREY_PROBABILITY, size=STAMP_SIZE):
    """Random network stamps from cached 96 px stamps.

    Parameters
    ----------
    big : torch.Tensor, (B, 3, 96, 96) float32
        Cached training stamps (display values in [0, 1]), ``CACHE_FIELD``
        times the network field.
    gen : torch.Generator
    size : int
        Side of the output stamps (the shifts and blur widths below are for
        64 px and scale with ``size``).

    Returns
    -------
    torch.Tensor, (B, 3, 64, 64) float32
        With probability 1 each: rotation by any angle, random flip, shift of
        up to 3 px, zoom by up to +-12 per cent (bilinear resampling). Then a
        Gaussian PSF blur (p=0.3, sigma 0.3-1.3 px), brightness gain and
        gamma stretch (+-25 per cent), per-channel colour gains (sigma 6 per
        cent), Gaussian noise (sigma 0-0.03) and, with ``grey_p``, the
        channel mean in all three channels.
    """
    b = big.shape[0]
    u = _uniform(gen, b)
    px = size / STAMP_SIZE  # pixels of this stamp per pixel of a 64 px stamp
    x = random_views(big, gen, size=size, zoom=0.12, shift=3 * px)
    x = random_blur(x, gen, p=0.3, sigma=(0.3 * px, 1.3 * px))
    gain = torch.exp(u(-0.25, 0.25))[:, None, None, None]
    gamma = torch.exp(u(-0.25, 0.25))[:, None, None, None]
    colour = torch.exp(0.06 * torch.randn(b, 3, 1, 1, generator=gen))
    x = (x.clamp(0, 1) * gain * colour).clamp(0, 1) ** gamma
    x = x + u(0, 0.03)[:, None, None, None] * torch.randn(x.shape, generator=gen)
    grey = (torch.rand(b, generator=gen) < grey_p)[:, None, None, None]
    x = torch.where(grey, x.mean(1, keepdim=True).expand_as(x), x)
    return x.clamp(0, 1)


def synthetic_mergers(primary, secondary, gen):
    """Close pairs built from two real cached stamps, for the rare merger class.

    The ``secondary`` galaxy, background-subtracted (median of its border), is
    shrunk to 0.5-1.0 of its size, dimmed to 0.4-1.0 of its brightness, turned
    and flipped at random and placed 10-25 per cent of the stamp width from the
    centre, then added to ``primary`` with a screen blend ``1 - (1 - a)(1 - b)``
    (light added in display units).

    Parameters
    ----------
    primary, secondary : torch.Tensor, (B, 3, 96, 96) float32
        Cached training stamps (display values in [0, 1]).
    gen : torch.Generator

    Returns
    -------
    torch.Tensor, (B, 3, 96, 96) float32
    """
    b = primary.shape[0]
    u = _uniform(gen, b)
    border = torch.cat([secondary[..., :4, :].flatten(2), secondary[..., -4:, :].flatten(2),
                        secondary[..., :, :4].flatten(2), secondary[..., :, -4:].flatten(2)], 2)
    sec = (secondary - border.median(2).values[..., None, None]).clamp_min(0)
    size, angle, sep, direction = u(0.5, 1.0), u(0, 2 * math.pi), u(0.1, 0.25), u(0, 2 * math.pi)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / size, torch.sin(angle) / size
    # the secondary's centre lands 2 * sep (normalised units) from the stamp centre
    tx, ty = -2 * sep * torch.cos(direction) / size, -2 * sep * torch.sin(direction) / size
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1),
                         torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, tuple(sec.shape), align_corners=False)
    sec = F.grid_sample(sec, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sec = sec * u(0.4, 1.0)[:, None, None, None]
    return 1 - (1 - primary.clamp(0, 1)) * (1 - sec.clamp(0, 1))


# ---------------------------------------------------------------------------- train
def _lr_at(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def predict_logits(net, x, batch=512):
    """Logits of ``net`` (a module, put in eval mode, or a callable) for numpy stamps."""
    if isinstance(net, nn.Module):
        net.eval()
    out = [net(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])))
           for i in range(0, len(x), batch)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(CLASS_NAMES)), np.float32)


def _quick_metrics(logits, labels):
    pred = logits.argmax(1)
    recalls = [np.mean(pred[labels == c] == c) for c in range(len(CLASS_NAMES)) if (labels == c).any()]
    nll = float(np.mean(-np.log(np.clip(_common.softmax(logits)[np.arange(len(labels)), labels],
                                        1e-12, None))))
    return float(np.mean(pred == labels)), float(np.mean(recalls)), nll, recalls


def sampling_weights(labels, n_classes=len(CLASS_NAMES), power=0.5, counts=None):
    """Per-example sampling probabilities giving class ``c`` a share ``∝ n_c**power``.

    ``n_c`` are ``counts`` (default: the class counts of ``labels``); within a
    class every example is equally likely.
    """
    members = np.bincount(labels, minlength=n_classes).astype(float)
    if counts is None:
        w = members[labels] ** (power - 1.0)
    else:
        w = np.asarray(counts, dtype=float)[labels] ** power / members[labels]
    return w / w.sum()


#: Options a resumed run must share with its checkpoint (`_common.check_resume`).
RECIPE_KEYS = ("seed", "lr", "weight_decay", "batch_size", "ema_decay", "label_smoothing",
               "synthetic_mergers", "gz2_labels")


#: Options the card's train command repeats when a run set them.
TRAIN_COMMAND_KEYS = ("seed", "epochs", "widths", "stem", "stamp_size", "label_smoothing",
                      "synthetic_mergers", "gz2_labels", "lr", "weight_decay", "batch_size",
                      "ema_decay", "threads")


def train(args):
    """Train the morphology CNN (resumes from ``last.pt`` unless ``--restart``)."""
    size = _get(args, "stamp_size", None) or STAMP_SIZE
    if size != STAMP_SIZE and getattr(args, "step", "train") == "build":
        # checked before training: evaluate would refuse the checkpoint afterwards
        raise SystemExit(f"build --stamp-size {size}: evaluate and export support "
                         f"{STAMP_SIZE} px stamps only (run train alone for {size} px)")
    torch.set_num_threads(_get(args, "threads", DEFAULT_THREADS))
    _common.set_seed(args.seed)
    epochs = args.epochs or (2 if args.smoke else DEFAULT_EPOCHS)
    batch_size = _get(args, "batch_size", 64) if not args.smoke else 8
    data = load_dataset(args)
    tr, va, _ = data["split"]
    labels = data["labels"]
    log.info("split train/val/test = %d/%d/%d; train class counts %s", len(tr), len(va),
             len(data["split"][2]), np.bincount(labels[tr], minlength=len(CLASS_NAMES)).tolist())

    ckdir = _common.checkpoint_dir(NAME, _root(args))
    log.info("checkpoints in %s", ckdir)
    widths = tuple(_get(args, "widths", DEFAULT_WIDTHS))
    stem = _get(args, "stem", DEFAULT_STEM)
    smoothing = _get(args, "label_smoothing", DEFAULT_LABEL_SMOOTHING)
    if size != STAMP_SIZE and _get(args, "gz2_labels", False):
        raise SystemExit("--gz2-labels needs the default --stamp-size")
    net = MorphologyNet(widths=widths, stem=stem)
    ema = copy.deepcopy(net)
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=_get(args, "lr", 2e-3),
                            weight_decay=_get(args, "weight_decay", 0.05))
    start_epoch, history = 0, []
    last = ckdir / "last.pt"
    state = _common.resume_checkpoint(last, model=NAME, restart=_get(args, "restart", False)
                                      or args.smoke, keep=not args.smoke)
    if state is not None:
        # checked before the weights are loaded, which fail (a torch traceback) on others
        if network_of(state) != (widths, stem) or state.get("stamp_size", STAMP_SIZE) != size:
            raise SystemExit(f"{last} has widths and stem {network_of(state)} and stamp size "
                             f"{state.get('stamp_size', STAMP_SIZE)}; pass --restart")
        start_epoch, history = state["epoch"] + 1, state["history"]
        _common.check_resume(last, state.get("args", {}), args, RECIPE_KEYS, trained=start_epoch,
                             epochs=epochs)
        _common.check_resumed_split(last, state, data["split_source"])
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        log.info("resumed from %s at epoch %d", last, start_epoch)

    train_counts = np.bincount(labels[tr], minlength=len(CLASS_NAMES))
    steps_per_epoch = max(1, len(tr) // batch_size)
    total = epochs * steps_per_epoch
    warmup = min(2 * steps_per_epoch, total // 10 + 1)
    decay = _get(args, "ema_decay", 0.995)
    big = data["big"]
    val_x, val_y = data["stamps"][va], labels[va]
    gz2_info = None
    if _get(args, "gz2_labels", False):
        # Extra galaxies widen the pool of each class; the class shares of the batches
        # (from the GZ1 counts) and the steps per epoch stay those of GZ1 alone.
        extra = load_gz2_extra(args, big, np.concatenate(data["split"][1:]))
        n1 = len(labels)
        big = np.concatenate([big, extra["big"]])
        labels = np.concatenate([labels, extra["labels"]])
        tr = np.concatenate([tr, n1 + np.arange(len(extra["labels"]))])
        probs = sampling_weights(labels[tr], counts=train_counts)
        gz2_info = {"galaxies": int(len(extra["labels"])), "spiral": args.gz2_labels,
                    "class_counts": np.bincount(extra["labels"], minlength=len(CLASS_NAMES)).tolist(),
                    "dropped_as_heldout_duplicates": extra["dropped"]}
    else:
        probs = sampling_weights(labels[tr])
    p_synthetic = _get(args, "synthetic_mergers", 0.0)
    merger = CLASS_NAMES.index("merger")
    donors = tr[np.isin(labels[tr], [CLASS_NAMES.index(c) for c in ("elliptical", "spiral", "edge_on")])]
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([args.seed, epoch])
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        order = rng.choice(tr, size=steps_per_epoch * batch_size, p=probs)
        net.train()
        running = 0.0
        for s in range(steps_per_epoch):
            step = epoch * steps_per_epoch + s
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, _get(args, "lr", 2e-3), warmup)
            idx = order[s * batch_size:(s + 1) * batch_size]
            x = torch.from_numpy(big[idx].astype(np.float32))
            if p_synthetic > 0:
                swap = np.flatnonzero((labels[idx] == merger) & (rng.random(len(idx)) < p_synthetic))
                if len(swap):
                    pair = rng.choice(donors, size=(2, len(swap)))
                    x[swap] = synthetic_mergers(torch.from_numpy(big[pair[0]].astype(np.float32)),
                                                torch.from_numpy(big[pair[1]].astype(np.float32)), gen)
            x = augment(x, gen, size=size)
            y = torch.from_numpy(labels[idx])
            loss = F.cross_entropy(net(x), y, label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
            d = min(decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pn in zip(ema.parameters(), net.parameters()):
                    pe.mul_(d).add_(pn.detach(), alpha=1 - d)
                for be, bn in zip(ema.buffers(), net.buffers()):
                    be.copy_(bn)
        acc, mrec, nll, recalls = _quick_metrics(predict_logits(ema, val_x), val_y)
        row = dict(epoch=epoch, train_loss=running / steps_per_epoch, val_accuracy=acc,
                   val_macro_recall=mrec, val_nll=nll, val_recalls=[round(float(r), 3) for r in recalls],
                   lr=opt.param_groups[0]["lr"], seconds=time.perf_counter() - t0)
        history.append(row)
        log.info("epoch %d/%d loss %.4f | val (EMA, sampled prior) acc %.4f macro-recall %.4f "
                 "nll %.3f recalls %s | %.0f s", epoch + 1, epochs, row["train_loss"], acc, mrec,
                 nll, row["val_recalls"], row["seconds"])
        state = dict(epoch=epoch, model=net.state_dict(), ema=ema.state_dict(),
                     optimizer=opt.state_dict(), history=history, epochs=epochs,
                     train_counts=train_counts.tolist(), gz2_labels=gz2_info,
                     sampling_power=0.5, widths=list(widths), stem=stem,
                     label_smoothing=smoothing, synthetic_mergers=p_synthetic,
                     threads=torch.get_num_threads(), crop_fraction=CROP_FRACTION,
                     stamp_size=size, split_source=data["split_source"],
                     args={k: str(v) for k, v in vars(args).items()})
        _common.save_checkpoint(state, last, model=NAME)
    _common.write_text(ckdir / "history.json", json.dumps(history, indent=1) + "\n")
    return ckdir


# ------------------------------------------------------------------------- deploy
def _root(args):
    return _common.smoke_root(NAME) if args.smoke else Path(args.out_dir)


def network_of(state):
    """Widths and stem of the network in a checkpoint (1.x checkpoints record neither)."""
    return tuple(state.get("widths", WIDTHS_1X)), state.get("stem", STEM_1X)


def load_trained(args):
    """The EMA network of ``last.pt`` and the checkpoint dict (trains first in smoke mode)."""
    last = _common.checkpoint_dir(NAME, _root(args)) / "last.pt"
    if args.smoke and not last.exists():
        train(args)
    if not last.exists():
        raise SystemExit(f"no checkpoint {last}; run `python -m astromorph_training {NAME} train`")
    state = _common.load_checkpoint(last, hint=f"rerun `python -m astromorph_training {NAME} "
                                                "train`")
    if state.get("crop_fraction", CROP_FRACTION) != CROP_FRACTION:
        raise SystemExit(f"{last} was trained with crop_fraction {state['crop_fraction']}, "
                         f"astromorph.preprocessing uses {CROP_FRACTION}")
    if state.get("stamp_size", STAMP_SIZE) != STAMP_SIZE:
        raise SystemExit(f"{last} was trained on {state['stamp_size']} px stamps; evaluate and "
                         f"export support {STAMP_SIZE} px only")
    widths, stem = network_of(state)
    net = MorphologyNet(widths=widths, stem=stem)
    net.load_state_dict(state["ema"])
    return net.eval(), state


def prior_bias(train_counts, power, tau):
    """Logit adjustment undoing a fraction ``tau`` of the sampling prior shift.

    Training drew class ``c`` with probability ``∝ n_c**power`` instead of
    ``∝ n_c``; adding ``(1 - power) * log n_c`` to the logits restores the
    natural prior (Menon et al. 2021). ``tau`` scales that term (negative values favour the rare classes further).
    """
    log_n = np.log(np.asarray(train_counts, dtype=np.float64))
    b = tau * (1.0 - power) * log_n
    return (b - b.mean()).astype(np.float32)


def calibrate(net, state, val_x, val_y, tta, taus=(-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)):
    """Choose the logit adjustment and fit the temperature on the validation split.

    The adjustment strength ``tau`` maximises accuracy + macro recall of the
    orientation-averaged validation predictions; the temperature then
    minimises their negative log-likelihood.

    Returns
    -------
    dict
        ``tau``, ``bias`` (list), ``temperature``, ``tta`` and the validation
        scores of every ``tau`` tried.
    """
    deployed = DeployedMorphology(net, np.zeros(len(CLASS_NAMES)), 1.0, tta).eval()
    z = predict_logits(deployed.logits, val_x, batch=128)
    scores = {}
    for tau in taus:
        b = prior_bias(state["train_counts"], state["sampling_power"], tau)
        acc, mrec, _, _ = _quick_metrics(z + b, val_y)
        scores[tau] = dict(accuracy=round(acc, 4), macro_recall=round(mrec, 4))
    tau = max(taus, key=lambda t: (scores[t]["accuracy"] + scores[t]["macro_recall"], t))
    bias = prior_bias(state["train_counts"], state["sampling_power"], tau)
    temperature = _common.fit_temperature(z + bias, val_y)
    return dict(tau=tau, bias=[float(v) for v in bias], temperature=temperature, tta=tta,
                validation_scores={str(k): v for k, v in scores.items()})


def build_deployed(net, calibration):
    """`DeployedMorphology` from a network and the dict returned by `calibrate`."""
    return DeployedMorphology(net, calibration["bias"], calibration["temperature"],
                              calibration["tta"]).eval()


def architecture(deployed):
    """What `from_architecture` needs to rebuild ``deployed`` (recorded in the card).

    Returns
    -------
    dict
        ``network``, ``widths``, ``stem``, ``classes`` and ``tta``.
    """
    return {"network": "MorphologyNet", **deployed.net.arch,
            "classes": deployed.net.head[-1].out_features, "tta": deployed.tta}


def from_architecture(arch):
    """A `DeployedMorphology` of the recorded architecture, with untrained weights.

    Parameters
    ----------
    arch : dict
        As returned by `architecture` (``training.architecture`` in the card).
    """
    net = MorphologyNet(n_classes=arch["classes"], widths=tuple(arch["widths"]), stem=arch["stem"])
    return DeployedMorphology(net, np.zeros(arch["classes"]), 1.0, arch["tta"]).eval()


def export_model(deployed, root):
    """Export the deployed graph to ``<root>/models/morphology/model.onnx``."""
    path = _common.model_dir(NAME, root) / "model.onnx"
    example = np.zeros((2, 3, STAMP_SIZE, STAMP_SIZE), dtype=np.float32)
    _common.export_onnx(deployed, example, path, input_name="input",
                        output_names=("probabilities",), opset=18)
    return path


#: Training-split stamps whose activation ranges calibrate the int8 variant.
INT8_CALIBRATION_STAMPS = 1024


def export_int8(onnx_path, data):
    """Quantise the exported graph to ``model.int8.onnx`` beside it (calibrated on training stamps)."""
    train = data["split"][0]
    rng = np.random.default_rng(SPLIT_SEED)
    pick = np.sort(rng.choice(train, min(INT8_CALIBRATION_STAMPS, len(train)), replace=False))
    return _common.quantize_int8(onnx_path, Path(onnx_path).parent / "model.int8.onnx",
                                 data["stamps"][pick])


def _int8_report(int8_path, stamps, labels, float_probs, n_calibration):
    """Held-out metrics of the int8 variant and its agreement with the float model."""
    probs = _common.run_onnx(int8_path, stamps)
    rep = _common.classification_report(probs, labels, CLASS_NAMES)
    diff = np.abs(probs - float_probs)
    return {
        "source": "models/morphology/model.int8.onnx run with onnxruntime (CPU) on the test split",
        "n_test": rep["n"],
        "accuracy": rep["accuracy"],
        "macro_recall": rep["macro_recall"],
        "per_class": rep["per_class"],
        "confusion_matrix": rep["confusion_matrix"],
        "ece": rep["ece"],
        "label_agreement_with_float32": float(np.mean(probs.argmax(1) == float_probs.argmax(1))),
        "probability_abs_diff_vs_float32": {"mean": float(diff.mean()),
                                            "p99": float(np.quantile(diff, 0.99)),
                                            "max": float(diff.max())},
        "calibration_stamps": int(n_calibration),
        "onnx_sha256": _common.sha256sum(int8_path),
    }


def cpu_time_throughput(path, batch=256, repeats=4):
    """Stamps per CPU-second of one onnxruntime thread (robust to a shared, loaded machine)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((batch, 3, STAMP_SIZE, STAMP_SIZE), dtype=np.float32)
    sess.run(None, {"input": x})
    best = np.inf
    for _ in range(repeats):
        t = time.process_time()
        sess.run(None, {"input": x})
        best = min(best, time.process_time() - t)
    return batch / best


def _grey(x):
    return np.repeat(x.mean(axis=1, keepdims=True), 3, axis=1)


# ------------------------------------------------------------------------- evaluate
#: Volunteer counts for `label_resampling`: Galaxy Zoo 1 and 2 galaxies were classified
#: by a few tens of volunteers each (Lintott et al. 2011; Willett et al. 2013).
REVOTE_SIZES = (20, 40, 60)


def label_resampling(data_dir, sizes=REVOTE_SIZES, n_draws=200, seed=0):
    """How often a fresh vote keeps the plurality answer: context for the test accuracy.

    GZ1 labels are the plurality of a few tens of volunteer votes; the GZ1
    folder has no vote fractions, the GZ2 one does. For the first GZ2
    question (smooth / features or disk / star or artefact, the same split
    as GZ1's elliptical / spiral / don't know) this draws ``n`` new votes
    from each galaxy's observed fractions and counts how often their
    plurality equals the observed one. That is the accuracy a perfect
    predictor of volunteer opinion would reach against a re-vote, for this
    one question; the five-class leaf label (edge-on vs spiral, merger) is
    noisier still.

    Returns
    -------
    dict or None
        None where ``gz2/votes.csv`` is missing.
    """
    path = Path(data_dir) / "gz2" / "votes.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    p = np.array([[float(r[f"Class1.{k}"]) for k in (1, 2, 3)] for r in rows])
    p = p[p.sum(1) > 0]
    p /= p.sum(1, keepdims=True)
    rng = np.random.default_rng(seed)

    def revote(p, names=()):
        """Plurality kept (accuracy) and per-class recall (classes ``names``) of argmax(p)
        against re-votes."""
        truth = p.argmax(1)
        kept, recall = {}, {}
        for n in sizes:
            counts = rng.multinomial(n, p, size=(n_draws, len(p))).astype(float)
            counts += rng.random(counts.shape) * 0.5  # ties broken at random
            label = counts.argmax(-1)
            kept[str(n)] = round(float((label == truth).mean()), 4)
            recall[str(n)] = {name: round(float((np.broadcast_to(truth, label.shape) == c)[label == c].mean()), 4)
                              for c, name in enumerate(names) if (label == c).any()}
        return truth, kept, recall

    truth, out, _ = revote(p)
    result = {"question": "GZ2 question 1: smooth / features or disk / star or artefact",
              "n_galaxies": int(len(p)),
              "plurality_kept_by_a_revote_of_n_volunteers": out,
              "fraction_with_plurality_below_0.6": round(float((p.max(1) < 0.6).mean()), 4),
              "note": ("new votes drawn from each GZ2 galaxy's observed vote fractions; the "
                       "fraction whose plurality answer is unchanged is what a perfect predictor "
                       "of volunteer opinion would score against a re-vote on this one question. "
                       "The five-class GZ1 leaf label adds the edge-on / spiral / merger answers "
                       "and is noisier still.")}
    columns = [c for c in rows[0] if c.startswith("Class")]
    if all(c in columns for c in ("Class1.1", "Class1.3", "Class2.1", "Class2.2", "Class8.6")):
        leaf = gz2_leaf_scores(np.array([[float(r[c] or 0) for c in columns] for r in rows]), columns)
        leaf = leaf[leaf.sum(1) > 0]
        leaf /= leaf.sum(1, keepdims=True)
        truth, kept, recall = revote(leaf, CLASS_NAMES)
        result["five_class_leaf"] = {
            "labels": "gz2_leaf_scores (spiral = features or disk, not edge-on), as one GZ1-style question",
            "n_galaxies": int(len(leaf)),
            "class_counts": dict(zip(CLASS_NAMES, np.bincount(truth, minlength=len(CLASS_NAMES)).tolist())),
            "accuracy_of_a_perfect_predictor_against_a_revote_of_n": kept,
            "recall_of_a_perfect_predictor_against_a_revote_of_n": recall,
            "note": ("the ceiling on accuracy and recall against labels that are the plurality of "
                     "n volunteer votes, for a model that knows each galaxy's vote fractions; "
                     "the observed fractions stand in for the true ones, which if anything "
                     "overstates the ceiling (sampling noise widens the margins of near ties)")}
    return result


def evaluate(args):
    """Calibrate on validation, export the ONNX graph and score it on the test split.

    All test numbers come from ``models/morphology/model.onnx`` run through
    onnxruntime, i.e. the file that is shipped.
    """
    torch.set_num_threads(_get(args, "threads", 1))
    _common.set_seed(args.seed)
    root = _root(args)
    net, state = load_trained(args)
    data = load_dataset(args, size=state.get("stamp_size", STAMP_SIZE),
                        trained=state.get("split_source"))
    _, va, te = data["split"]
    stamps, labels = data["stamps"], data["labels"]
    tta = _get(args, "tta", DEFAULT_TTA)

    calibration = calibrate(net, state, stamps[va], labels[va], tta)
    log.info("calibration: tau %.2f bias %s T %.3f", calibration["tau"],
             np.round(calibration["bias"], 3).tolist(), calibration["temperature"])
    deployed = build_deployed(net, calibration)
    onnx_path = export_model(deployed, root)

    t = calibration["temperature"]
    report = {}
    for split, idx in (("validation", va), ("test", te)):
        probs = _common.run_onnx(onnx_path, stamps[idx])
        uncal = _common.softmax(t * np.log(np.clip(probs, 1e-30, None)))  # = softmax(z + bias)
        rep = _common.classification_report(probs, labels[idx], CLASS_NAMES)
        rep["ece_before_temperature"] = _common.expected_calibration_error(uncal, labels[idx])
        rep["ece_after_temperature"] = rep["ece"]
        report[split] = rep
        if split == "test":
            test_probs, test_uncal = probs, uncal
            int8_path = export_int8(onnx_path, data)
            int8 = _int8_report(int8_path, stamps[idx], labels[idx], probs,
                                min(INT8_CALIBRATION_STAMPS, len(data["split"][0])))
            grey_probs = _common.run_onnx(onnx_path, _grey(stamps[idx]))
            grey = _common.classification_report(grey_probs, labels[idx], CLASS_NAMES)
            with torch.no_grad():
                ref = deployed(torch.from_numpy(stamps[idx][:256])).numpy()
            parity = float(np.max(np.abs(ref - probs[:256])))

    test = report["test"]
    metrics = {
        "model": NAME,
        "split": "test",
        "command": f"python -m astromorph_training {NAME} evaluate",
        "source": "models/morphology/model.onnx run with onnxruntime (CPU) on the held-out test split",
        "class_names": list(CLASS_NAMES),
        "n_test": test["n"],
        "accuracy": test["accuracy"],
        "macro_recall": test["macro_recall"],
        "per_class": test["per_class"],
        "confusion_matrix": test["confusion_matrix"],
        "ece_before_temperature": test["ece_before_temperature"],
        "ece_after_temperature": test["ece_after_temperature"],
        "ece_noise_floor": _common.ece_noise_floor(test_probs),
        "greyscale_input": {"accuracy": grey["accuracy"], "macro_recall": grey["macro_recall"],
                            "note": "test stamps replaced by their channel mean (single-band use)"},
        "validation": {k: report["validation"][k] for k in
                       ("n", "accuracy", "macro_recall", "ece_before_temperature",
                        "ece_after_temperature", "per_class")},
        "calibration": calibration,
        "torch_onnx_max_abs_diff": parity,
        "onnx_sha256": _common.sha256sum(onnx_path),
        "int8": int8,
        "split_definition": {"seed": SPLIT_SEED, "fractions": list(SPLIT_FRACTIONS),
                             "stratified": True, "counts": [int(len(i)) for i in data["split"]]},
        "training": {"epochs": state["epochs"], "seed": _common.recorded_seed(state),
                     "train_seconds": round(sum(h["seconds"] for h in state["history"]), 1),
                     "last_epoch": state["history"][-1] if state["history"] else None},
        "label_noise_context": label_resampling(args.data_dir),
        "smoke": bool(args.smoke),
    }
    path = _common.write_metrics(NAME, metrics, root)
    rdir = _common.report_dir(NAME, root)
    title = f"morphology, GZ1 test split (n={test['n']})"
    _common.plot_confusion_matrix(np.array(test["confusion_matrix"]), CLASS_NAMES,
                                  rdir / "confusion_matrix.png", title)
    _common.plot_reliability(test_probs, labels[te], rdir / "reliability.png",
                             title + ", after temperature scaling")
    _common.plot_reliability(test_uncal, labels[te], rdir / "reliability_before_temperature.png",
                             title + ", before temperature scaling")
    _common.plot_error_gallery(stamps[te], test_probs, labels[te], CLASS_NAMES, rdir / "errors.png",
                               title + ", network input")
    log.info("test: accuracy %.4f macro recall %.4f ECE %.4f -> %.4f | recalls %s | wrote %s",
             test["accuracy"], test["macro_recall"], test["ece_before_temperature"],
             test["ece_after_temperature"],
             {k: v["recall"] for k, v in test["per_class"].items()}, path)
    log.info("int8 variant: accuracy %.4f macro recall %.4f ECE %.4f, labels as float32 for "
             "%.2f%% of test galaxies", int8["accuracy"], int8["macro_recall"], int8["ece"],
             100 * int8["label_agreement_with_float32"])
    return metrics


# --------------------------------------------------------------------------- export
def _card_test_metrics(m):
    """The headline test-split numbers of a metrics dict (float32 or int8), for a card."""
    return {
        "split": "test",
        "command": f"python -m astromorph_training {NAME} evaluate",
        "n": m["n_test"],
        "accuracy": round(m["accuracy"], 4),
        "macro_recall": round(m["macro_recall"], 4),
        "per_class": {c: {k: m["per_class"][c][k] for k in ("recall", "precision", "support")}
                      for c in CLASS_NAMES},
    }


def _int8_card(m, path, sha, rate, cpu_rate):
    """The ``variants["int8"]`` entry of the card."""
    return {
        "file": path.name,
        "sha256": sha,
        "file_size_bytes": path.stat().st_size,
        "precision": "int8",
        "quantization": (f"{_common.INT8_RECIPE}; {m['calibration_stamps']} calibration stamps; "
                         f"made from model.onnx by `python -m astromorph_training {NAME} "
                         "evaluate` (and again, identically, by `export`)"),
        "use": ("astromorph.load_model('morphology', precision='int8'), or precision='int8' / "
                "--precision int8 in annotate and predict; made for CPUs (on GPU providers "
                "its speed has not been measured)"),
        "metrics": {
            **_card_test_metrics(m),
            "ece_after_temperature": round(m["ece"], 4),
            "label_agreement_with_float32": round(m["label_agreement_with_float32"], 4),
            "probability_abs_diff_vs_float32": {k: round(v, 4) for k, v in
                                                m["probability_abs_diff_vs_float32"].items()},
            "report": "training/reports/morphology/metrics.json (key int8)",
        },
        "performance": {"onnxruntime_cpu_threads": 2, "batch": 256,
                        "stamps_per_second": round(rate),
                        "stamps_per_cpu_second_one_thread": round(cpu_rate)},
    }


def _label_noise_card(context):
    """The card's summary of `label_resampling` (empty without GZ2 votes)."""
    if not context:
        return {}
    return {"label_noise_context": {
        "summary": ("the labels are volunteer pluralities: a re-vote of n volunteers keeps the "
                    "plurality answer to the first Galaxy Zoo question (GZ2 vote fractions) for "
                    "this fraction of galaxies"),
        **context["plurality_kept_by_a_revote_of_n_volunteers"]}}


def _state_option(state, key, default):
    """A training option of a checkpoint: its own entry, else its recorded command-line value."""
    if key in state:
        return state[key]
    value = state.get("args", {}).get(key)
    return default if value in (None, "None") else type(default)(value)


def _card(metrics, calibration, state, throughput, cpu_rate, size_bytes, n_params):
    from astromorph import __version__ as astromorph_version

    history = state["history"]
    train_min = sum(h["seconds"] for h in history) / 60
    threads = _state_option(state, "threads", 1)
    return {
        "name": NAME,
        "version": "2.1.0",
        "changes": ("2.1.0: the third stage is 48 channels wide instead of 64 (widths "
                    "32/48/48/128: 0.56 M parameters, 33 M multiply-adds per stamp), chosen on "
                    "validation under a rule written down first "
                    "(training/reports/morphology/preregistration_2_1.md) because ONNX Runtime "
                    "runs it about a sixth faster (2.0 and 2.1 timed in one run on the 2-core "
                    "machine: 3,479-3,596 -> 4,161-4,248 stamps/s with 2 threads, 1,978-1,981 -> "
                    "2,313-2,320 per CPU-second of one thread; the machine ran slower than when "
                    "2.0's performance figures were taken); held-out test accuracy / macro recall "
                    "0.870 / 0.715 -> 0.871 / 0.718, ECE 0.037 -> 0.033, single-band input "
                    "0.850 -> 0.865. "
                    "2.0.0: a smaller network (one stride-2 convolution in place of the 32x32 "
                    "convolution and max pooling, widths 32/48/64/128: 0.60 M parameters and "
                    "40 M multiply-adds per stamp instead of 0.92 M and 68 M), trained with label "
                    "smoothing 0.1 and chosen on validation under a rule written down first "
                    "(training/reports/morphology/preregistration.md): held-out test accuracy / "
                    "macro recall 0.8575 / 0.721 -> 0.870 / 0.715, ECE 0.016 -> 0.037 (noise floor "
                    "0.025, 95th percentile 0.037, on 800 galaxies); 1.8 times the stamps per "
                    "second. Same input, outputs and preprocessing as 1.x. "
                    "1.2.0: adds the int8 variant model.int8.onnx (variants.int8, with its own "
                    "held-out metrics); model.onnx is unchanged. "
                    "1.1.0: the graph averages 1 orientation instead of 2 (same network "
                    "weights, recalibrated on validation): validation accuracy / macro recall "
                    "0.8638 / 0.776 -> 0.8625 / 0.806; held-out test 0.8638 / 0.727 -> 0.8575 / "
                    "0.721, ECE 0.025 -> 0.016; twice the stamps per second"),
        "task": "classification",
        "summary": "Galaxy Zoo 1 morphology (elliptical, spiral, edge-on, merger, artifact) "
                   "from SDSS-like gri colour cutouts",
        "description": " ".join([
            f"Small CNN ({n_params / 1e6:.2f} M parameters) trained on Galaxy Zoo 1 SDSS gri",
            "colour cutouts to give the probabilities of the five GZ1 leaf classes: elliptical,",
            "spiral (clockwise and anticlockwise merged), edge_on (edge-on disc), merger,",
            "artifact (GZ1 'star / don't know': stars, artefacts, unclassifiable). The graph",
            f"averages the logits over {calibration['tta']} orientations of the stamp (flips /",
            "90-degree rotations), adds a logit adjustment for the class-balanced training",
            "sampler and applies temperature scaling fitted on a validation split, so the",
            "probabilities are calibrated for the GZ1 class mix (70 per cent elliptical).",
            "Inputs are cutouts centred on the galaxy whose angular size scales with the",
            "galaxy's Petrosian radius (see input.angular_size). Colour (SDSS-style i/r/g ->",
            "R/G/B) input is best; single-band input is accepted (replicated grey) at lower",
            "accuracy; g, r, i flux images are turned into a colour composite with a fixed",
            "Lupton et al. (2004) asinh stretch, which was not part of training (no FITS",
            "training data). GZ1 labels are volunteer majority classes and are noisy between",
            "elliptical, spiral and edge_on (see metrics).",
        ]),
        "column_prefix": "morph",
        "input": {
            "name": "input",
            "shape": [3, STAMP_SIZE, STAMP_SIZE],
            "dtype": "float32",
            "channels": list(OPTICAL_CHANNELS),
            "single_band": "replicate",
            "preprocessing": "astromorph.preprocessing.preprocess_optical",
            "preprocessing_options": optical_preprocessing_options(),
            "angular_size": {
                "kind": "petrosian",
                "radius_column": "petroR90_r",
                "radius_unit": "arcsec",
                "cutout_size_per_petro_r90": round(GZ1_CUTOUT_PIXELS * GZ1_PIXEL_SCALE_PER_PETRO_R90, 4),
                "stamp_size_per_petro_r90": round(CROP_FRACTION * GZ1_CUTOUT_PIXELS
                                               * GZ1_PIXEL_SCALE_PER_PETRO_R90, 4),
                "functions": ["astromorph.preprocessing.cutout_size_from_petrosian",
                              "astromorph.preprocessing.stamp_size_from_petrosian"],
                "convention": (
                    "GZ1/SDSS ImgCutout cutouts are 423 pixels wide at 0.024 * petroR90_r arcsec per "
                    "pixel (Lintott et al. 2008), i.e. 10.152 petroR90_r across; the network sees the "
                    f"central {CROP_FRACTION:g} of that ({CROP_FRACTION * 10.152:.3f} petroR90_r). "
                    "Cut a square of cutout_size_per_petro_r90 * petroR90_r arcsec centred on the "
                    "galaxy (any pixel count) and use the default crop_fraction, or a square of "
                    "stamp_size_per_petro_r90 * petroR90_r with crop_fraction=1.0."),
            },
            "normalisation": ("8-bit display values / 255 after cropping the central crop_fraction "
                              f"and area-averaging to {STAMP_SIZE} x {STAMP_SIZE}; "
                              "colour axis first; no further scaling"),
        },
        "outputs": [{
            "name": "probabilities",
            "kind": "probabilities",
            "labels": list(CLASS_NAMES),
            "description": (f"calibrated class probabilities, softmax((mean over {calibration['tta']} "
                            "orientations of logits + prior adjustment) / T); rows sum to 1"),
        }],
        "training": {
            "data": ("Galaxy Zoo 1 subset of 5,338 SDSS DR7 galaxies: SDSS ImgCutout gri colour JPEGs "
                     "(423 x 423) with the GZ1 leaf class (Eggochi/Proyecto_Galaxias collection); "
                     "class counts elliptical 3731, spiral 683 (331 cw + 352 acw), edge_on 792, "
                     "merger 89, artifact 43"),
            "terms": ("Images: Sloan Digital Sky Survey public data (acknowledge SDSS, "
                      "https://www.sdss.org/collaboration/citing-sdss/). Labels: Galaxy Zoo 1, "
                      "Lintott et al. 2008, MNRAS 389, 1179 and Lintott et al. 2011, MNRAS 410, 166."),
            "split": (f"stratified {'/'.join(str(int(f * 100)) for f in SPLIT_FRACTIONS)} "
                      f"train/validation/test, seed {SPLIT_SEED}"),
            "command": _common.train_command(NAME, state.get("args", {}), TRAIN_COMMAND_KEYS),
            "epochs": state["epochs"],
            "network": (f"MorphologyNet, stem {network_of(state)[1]}, widths "
                        f"{'/'.join(str(w) for w in network_of(state)[0])}"),
            "method": ("AdamW, cosine learning rate, EMA weights, square-root class-balanced sampling, "
                       f"label smoothing {_state_option(state, 'label_smoothing', 0.0):g}; "
                       "augmentation: any rotation, flips, shifts, zooms, PSF blur, noise, stretch "
                       f"and colour jitter, greyscale (p={GREY_PROBABILITY})"),
            "time": f"{train_min:.0f} min",
            "machine": f"CPU only ({platform.processor() or platform.machine()}, shared 2 cores), "
                       f"torch {torch.__version__}, {threads} thread{'s' if threads > 1 else ''}",
        },
        "metrics": {
            **_card_test_metrics(metrics),
            "ece_before_temperature": round(metrics["ece_before_temperature"], 4),
            "ece_after_temperature": round(metrics["ece_after_temperature"], 4),
            **({"ece_noise_floor_mean": round(metrics["ece_noise_floor"]["mean"], 4),
                "ece_noise_floor_p95": round(metrics["ece_noise_floor"]["p95"], 4)}
               if "ece_noise_floor" in metrics else {}),
            "temperature": round(calibration["temperature"], 4),
            "greyscale_accuracy": round(metrics["greyscale_input"]["accuracy"], 4),
            "greyscale_macro_recall": round(metrics["greyscale_input"]["macro_recall"], 4),
            "report": "training/reports/morphology/metrics.json",
            "figures": [f"training/reports/morphology/{f}.png" for f in
                        ("confusion_matrix", "reliability", "reliability_before_temperature",
                         "errors")],
            **_label_noise_card(metrics.get("label_noise_context")),
        } if metrics else {"split": "test", "command": f"python -m astromorph_training {NAME} evaluate",
                           "note": "not evaluated"},
        "performance": {
            "onnxruntime_cpu_threads": 2, "batch": 256,
            "stamps_per_second": round(throughput),
            "stamps_per_cpu_second_one_thread": round(cpu_rate),
            "onnx_bytes": size_bytes,
            "note": _common.THROUGHPUT_NOTE,
        },
        "astromorph_version": astromorph_version,
        "licence": ("model: BSD-3-Clause (as astromorph); trained on SDSS public data and Galaxy Zoo 1 "
                    "classifications, to be acknowledged as in training.terms"),
    }


def export(args):
    """Export ``models/morphology/model.onnx`` (the evaluated graph) and write its card."""
    torch.set_num_threads(_get(args, "threads", 1))
    root = _root(args)
    net, state = load_trained(args)
    metrics_path = _common.report_dir(NAME, root) / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    if metrics is None:
        log.warning("%s missing: calibrating now; the card will carry no test metrics "
                    "(run `evaluate` and then `export` again)", metrics_path)
        data = load_dataset(args, size=state.get("stamp_size", STAMP_SIZE),
                            trained=state.get("split_source"))
        va = data["split"][1]
        calibration = calibrate(net, state, data["stamps"][va], data["labels"][va],
                                _get(args, "tta", DEFAULT_TTA))
    else:
        calibration = metrics["calibration"]
    deployed = build_deployed(net, calibration)
    path = export_model(deployed, root)
    sha = _common.sha256sum(path)
    if metrics is not None and metrics.get("onnx_sha256") != sha:
        log.warning("exported graph differs from the evaluated one (sha256 %s vs %s); "
                    "run evaluate again", sha, metrics.get("onnx_sha256"))
    throughput = _common.onnx_throughput(path, (3, STAMP_SIZE, STAMP_SIZE), batch=256, threads=2)
    cpu_rate = cpu_time_throughput(path)
    log.info("onnxruntime throughput: %.0f stamps/s (2 threads, batch 256, wall clock), "
             "%.0f stamps per CPU-second (1 thread); %.2f MB",
             throughput, cpu_rate, path.stat().st_size / 1e6)
    variants = {}
    if metrics is not None and "int8" in metrics:
        int8_path = export_int8(path, load_dataset(
            args, size=state.get("stamp_size", STAMP_SIZE), trained=state.get("split_source")))
        int8_sha = _common.sha256sum(int8_path)
        if metrics["int8"].get("onnx_sha256") != int8_sha:
            log.warning("int8 graph differs from the evaluated one (sha256 %s vs %s); "
                        "run evaluate again", int8_sha, metrics["int8"].get("onnx_sha256"))
        int8_rate = _common.onnx_throughput(int8_path, (3, STAMP_SIZE, STAMP_SIZE), batch=256,
                                            threads=2)
        int8_cpu_rate = cpu_time_throughput(int8_path)
        log.info("int8 variant: %.0f stamps/s (2 threads), %.0f stamps per CPU-second; %.2f MB",
                 int8_rate, int8_cpu_rate, int8_path.stat().st_size / 1e6)
        variants["int8"] = _int8_card(metrics["int8"], int8_path, int8_sha, int8_rate,
                                      int8_cpu_rate)
    grey = _common.single_band_graph(path, size=STAMP_SIZE,
                                     note=" (float32 only; the int8 variant replicates the band)")
    n_params = sum(p.numel() for p in net.parameters())
    card = _card(metrics, calibration, state, throughput, cpu_rate, path.stat().st_size, n_params)
    card["training"]["architecture"] = architecture(deployed)
    if variants:
        card["variants"] = variants
    card["single_band_graph"] = grey
    card_path = _common.write_card(NAME, card, root)
    # Parity through astromorph itself: real JPEGs -> preprocessing -> ONNX vs torch.
    ids, _ = read_labels(args.data_dir)
    files = [Path(args.data_dir) / "gz1" / "images" / f"{i}.jpeg" for i in ids[:16]]
    x = preprocess_colour_cutout(load_jpegs(files))
    try:
        diff = _common.check_parity(deployed, x, str(card_path.parent), atol=1e-5, rtol=1e-4)
        log.info("torch vs astromorph ONNX parity: max abs diff %.2e", diff)
        _common.write_parity_reference(
            NAME, deployed, preprocess_colour_cutout(_common.parity_raw_inputs("colour")), path,
            root=root)
    except (ImportError, AttributeError) as exc:  # astromorph core not ready yet
        log.warning("astromorph parity check skipped: %s", exc)
    log.info("wrote %s and %s", path, card_path)
    return card_path
