"""Self-supervised galaxy embedding (``embedding``): SDSS colour cutouts -> unit vectors.

Data: the Galaxy Zoo 1 (``<data-dir>/gz1/images``, 5,338) and Galaxy Zoo 2
Kaggle (``<data-dir>/gz2/images``, 7,704) SDSS colour cutouts, used WITHOUT
labels to train the encoder. The GZ1 labels are used only to evaluate.

Held-out galaxies
-----------------
The GZ1 set is split exactly as the ``morphology`` model splits it
(`astromorph_training.morphology.stratified_split`, stratified 70/15/15,
fixed seed). The encoder never sees the validation and test galaxies of that
split (30 per cent, 1,600 galaxies): the validation part is the pool from
which the few labels of the linear probe are drawn, the test part is where
every number is measured (the same galaxies the ``morphology`` model is
tested on). GZ2 cutouts that look like a held-out GZ1 galaxy (near-duplicate
pixels, `find_duplicates`) are dropped from training too.

Angular scale
-------------
Both sets are SDSS ImgCutout composites scaled to the galaxy's Petrosian
radius: GZ1 at 0.024 petroR90_r per pixel over 423 pixels, GZ2 (Kaggle) at
0.02 petroR90_r per pixel over 424 pixels (Willett et al. 2013). Every
cutout goes through `astromorph.preprocessing._optical.preprocess_colour_cutout`
with the crop fraction that gives the network's field of view
(`astromorph.preprocessing._optical.stamp_size_from_petrosian`:
``CROP_FRACTION * 10.152`` petroR90_r), so both sets feed the network on
the same angular grid.

Steps
-----
``train``
    ``--compare`` first runs every method of ``--methods`` for a short,
    equal budget on a subset and scores each with the same linear probe
    (200 labels, 10 draws) on GZ1 *training-split* galaxies (never the
    held-out ones); it writes ``training/reports/embedding/method_comparison.json``.
    Then the chosen ``--method`` (default: the comparison's winner, else
    SimCLR) trains on every training cutout, on random 48-pixel windows
    (`VIEW_SIZE`) of augmented stamps; the probe on training-split galaxies
    is logged every 5 epochs; checkpoints every epoch in
    ``training/checkpoints/embedding/`` (``last.pt``; rerun to resume).
``evaluate``
    Chooses the pooled features (last stage or all three stages, by the
    probe on training-split galaxies), fits the PCA on training cutouts,
    exports ``models/embedding/model.onnx`` and measures, with that file
    through onnxruntime, on the held-out GZ1 test galaxies: (a) a logistic
    regression probe fitted on 200 labelled held-out validation galaxies
    (10 random draws), next to a small CNN trained from scratch on the same
    200 and the full ``morphology`` model when it is shipped; (b) precision at
    25 of similarity search; (c) a Gaussian mixture in embedding space
    (BIC), its normalised mutual information with the GZ1 classes, a 2D map
    and member galleries. Writes ``training/reports/embedding/``.
``export``
    Re-exports the graph, checks torch/ONNX parity and throughput and writes
    ``models/embedding/card.json``.
"""
import argparse
import copy
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
    STAMP_SIZE,
    cutout_size_from_petrosian,
    preprocess_colour_cutout,
    stamp_size_from_petrosian,
)

from . import _common
from .morphology import (
    CLASS_NAMES,
    OPTICAL_CHANNELS,
    SPLIT_SOURCE_SHA256,
    _uniform,
    load_jpegs,
    optical_preprocessing_options,
    random_blur,
    random_views,
    read_labels,
    stratified_split,
)

log = logging.getLogger(__name__)

NAME = "embedding"
#: Width of the encoder's pooled features.
FEATURE_DIM = 256
#: Length of the shipped embedding (PCA of the pooled features, then L2 norm).
EMBED_DIM = 128
METHODS = ("simclr", "byol")
DEFAULT_EPOCHS = 40
#: Side of the cached training stamps: 1.5 x the network stamp, same pixel scale.
CACHE_SIZE = 96
#: Side of the training views: random 48-pixel windows of the (rotated, zoomed) field at the
#: network's pixel scale. Cheaper than 64 and a crop augmentation: two views of a galaxy share
#: the galaxy, not the whole field (field stars cannot identify the cutout).
VIEW_SIZE = 48
CACHE_VERSION = 1
#: Kaggle Galaxy Zoo 2 cutouts: 424 pixels at 0.02 petroR90_r per pixel (Willett et al. 2013).
GZ2_CUTOUT_PIXELS = 424
GZ2_PIXEL_SCALE_PER_PETRO_R90 = 0.02
#: Network field of view in units of petroR90_r (CROP_FRACTION x 10.152).
FIELD_PER_PETRO_R90 = float(stamp_size_from_petrosian(1.0))
#: Rotations by 90 degrees averaged inside the exported graph (1: none; 2: 0 and 180; 4: all).
#: One keeps the model above 1000 stamps/s on 2 CPU threads; training already makes the
#: embedding nearly rotation invariant (any-angle rotations are an augmentation).
DEFAULT_TTA = 1
GREY_PROBABILITY = 0.1
#: Number of labelled galaxies of the few-label probe, and of random draws.
PROBE_LABELS = 200
PROBE_DRAWS = 10
#: Neighbours of the precision-at-k search metric.
PRECISION_K = 25


def crop_fraction_for(cutout_per_petro_r90, size=STAMP_SIZE):
    """Crop fraction giving a ``size``-pixel stamp at the network's pixel scale.

    Parameters
    ----------
    cutout_per_petro_r90 : float
        Side of the whole cutout in units of petroR90_r (GZ1: 10.152, GZ2: 8.48).
    size : int
        Output side in pixels (`STAMP_SIZE` gives the network field of view).
    """
    return FIELD_PER_PETRO_R90 * size / STAMP_SIZE / cutout_per_petro_r90


GZ1_CUTOUT_PER_R90 = float(cutout_size_from_petrosian(1.0))
GZ2_CUTOUT_PER_R90 = GZ2_CUTOUT_PIXELS * GZ2_PIXEL_SCALE_PER_PETRO_R90
#: Crop fractions of the network stamp (64 px) and the training stamp (96 px).
CROP = {"gz1": CROP_FRACTION, "gz2": crop_fraction_for(GZ2_CUTOUT_PER_R90)}
CACHE_CROP = {k: crop_fraction_for(v, CACHE_SIZE)
              for k, v in (("gz1", GZ1_CUTOUT_PER_R90), ("gz2", GZ2_CUTOUT_PER_R90))}


# ------------------------------------------------------------------------ arguments
#: Options only some steps read -> those steps (the command line refuses them elsewhere).
STEP_OPTIONS = {**dict.fromkeys(("method", "compare", "compare_only", "methods", "compare_epochs",
                                 "compare_images", "batch_size", "lr", "temperature", "restart"),
                                ("train",)),
                "tta": ("evaluate", "export"), "probe_draws": ("evaluate",),
                "cnn_draws": ("evaluate",)}
#: Options read only with one of others (the command line refuses them alone).
OPTION_NEEDS = dict.fromkeys(("compare_epochs", "compare_images", "methods"),
                             ("compare", "compare_only"))


def add_arguments(parser):
    """Options of the embedding model."""
    g = parser.add_argument_group("embedding")
    g.add_argument("--method", choices=METHODS, default=None,
                   help="self-supervised method (default: winner of --compare, else simclr)")
    g.add_argument("--compare", action="store_true",
                   help="before training, compare --methods in short runs (linear probe)")
    g.add_argument("--compare-only", action="store_true", help="run the comparison and stop")
    g.add_argument("--methods", default=",".join(METHODS),
                   help="methods compared by --compare (default %(default)s)")
    g.add_argument("--compare-epochs", type=_common.positive_int, default=6,
                   help="epochs of each comparison run (default %(default)s)")
    g.add_argument("--compare-images", type=_common.positive_int, default=4000,
                   help="training cutouts used by each comparison run (default %(default)s)")
    g.add_argument("--batch-size", type=_common.positive_int, default=256,
                   help="training batch size, of the comparison runs too (default %(default)s)")
    g.add_argument("--lr", type=float, default=None,
                   help="peak AdamW learning rate (default: the method's, "
                        + ", ".join(f"{lr} for {m}" for m, lr in DEFAULT_LR.items()) + ")")
    g.add_argument("--temperature", type=float, default=0.2,
                   help="SimCLR NT-Xent temperature (default %(default)s)")
    g.add_argument("--threads", type=_common.positive_int, default=1,
                   help="torch CPU threads (default %(default)s)")
    g.add_argument("--restart", action="store_true",
                   help="train from scratch (an existing last.pt is kept as last.pt.<time>.bak)")
    g.add_argument("--tta", type=int, default=DEFAULT_TTA, choices=(1, 2, 4),
                   help="rotations averaged inside the exported graph (default %(default)s)")
    g.add_argument("--probe-draws", type=_common.positive_int, default=PROBE_DRAWS,
                   help="evaluate: draws of the labelled galaxies the few-label linear probe is "
                        "fitted on (default %(default)s)")
    g.add_argument("--cnn-draws", type=_common.positive_int, default=5,
                   help="evaluate: draws of the supervised small-CNN baseline (slower; "
                        "default %(default)s)")


def _get(args, name, default):
    value = getattr(args, name, None)
    return default if value is None else value


def _root(args):
    """Repository root to write into: ``--out-dir``, or for ``--smoke`` a scratch one
    (`_common.smoke_root`, whatever ``--out-dir`` says, as for the other models)."""
    return _common.smoke_root(NAME) if args.smoke else Path(args.out_dir)


# ----------------------------------------------------------------------------- data
def _to_uint8(x):
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def preprocess_files(paths, survey, *, size=STAMP_SIZE, chunk=256):
    """Network-grid stamps of cutout files (float32 in [0, 1], colour axis first).

    Parameters
    ----------
    paths : list of Path
    survey : {"gz1", "gz2"}
        Fixes the crop fraction (both surveys end on the same angular grid).
    size : int
        `STAMP_SIZE` (the network input) or `CACHE_SIZE` (1.5 x the field).
    """
    crop = CROP[survey] if size == STAMP_SIZE else crop_fraction_for(
        GZ1_CUTOUT_PER_R90 if survey == "gz1" else GZ2_CUTOUT_PER_R90, size)
    out = []
    for start in range(0, len(paths), chunk):
        out.append(preprocess_colour_cutout(load_jpegs(paths[start:start + chunk]), size=size,
                                            crop_fraction=crop))
    return np.concatenate(out) if out else np.zeros((0, 3, size, size), np.float32)


def gz2_ids(data_dir):
    """Kaggle GalaxyIDs (str) of every GZ2 cutout, sorted."""
    return np.array(sorted(p.stem for p in (Path(data_dir) / "gz2" / "images").glob("*.jpg")))


def _cached(path, make, key=None):
    """Load ``path`` (``.npy``) or build it with ``make()`` and save it atomically.

    ``key`` (an array) is stored beside it and must match for the cache to be used.
    """
    key_path = path.with_name(path.stem + "_key.npy")
    if path.exists() and (key is None or (key_path.exists()
                                          and np.array_equal(np.load(key_path), key))):
        return np.load(path, mmap_mode=None)
    t0 = time.perf_counter()
    arr = make()
    for p, a in ((path, arr), (key_path, key)):
        if a is None:
            continue
        tmp = p.with_suffix(".tmp.npy")
        np.save(tmp, a)
        os.replace(tmp, p)
    log.info("cached %s %s in %.0f s", path.name, arr.shape, time.perf_counter() - t0)
    return arr


def load_data(args, *, trained=None):
    """Every array the steps need, from ``training/cache/`` (built on first use).

    ``trained`` is the fingerprint of ``labels.csv`` that the checkpoint about to be scored
    records (`_common.check_split_source`: other rows are refused).

    Returns
    -------
    dict
        ``gz1_ids``, ``labels`` (GZ1 class index per galaxy, `CLASS_NAMES`),
        ``split`` (train, pool, test: indices into GZ1), ``gz1_big`` (N, 3, 96,
        96) uint8 training stamps, ``gz1_stamps`` (N, 3, 64, 64) float32 network
        input (exactly as astromorph preprocesses the JPEGs), ``gz2_ids``,
        ``gz2_big`` uint8, ``heldout`` (indices of pool and test). In smoke
        mode a handful of images, nothing cached.
    """
    data_dir = Path(args.data_dir)
    ids, labels = read_labels(data_dir)
    g2 = gz2_ids(data_dir)
    gz1_path = lambda i: data_dir / "gz1" / "images" / f"{i}.jpeg"  # noqa: E731
    gz2_path = lambda i: data_dir / "gz2" / "images" / f"{i}.jpg"  # noqa: E731
    if args.smoke:
        rng = np.random.default_rng(0)
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:6]
                                       for c in range(len(CLASS_NAMES))]))
        ids, labels = ids[keep], labels[keep]
        g2 = g2[:24]
        n = len(ids)
        split = (np.arange(0, n, 3), np.arange(1, n, 3), np.arange(2, n, 3))
        source = None
        gz1_big = _to_uint8(preprocess_files([gz1_path(i) for i in ids], "gz1", size=CACHE_SIZE))
        gz2_big = _to_uint8(preprocess_files([gz2_path(i) for i in g2], "gz2", size=CACHE_SIZE))
    else:
        source = _common.check_split_source(data_dir / "gz1" / "labels.csv",
                                            SPLIT_SOURCE_SHA256, ids, labels, args=args,
                                            trained=trained)
        split = stratified_split(labels)
        cache = _common.cache_dir(args.out_dir)
        # The crop fraction names the angular field: a change in astromorph's optical
        # preprocessing gives new caches instead of silently reusing old ones.
        stem = f"embedding_v{CACHE_VERSION}_c{CROP_FRACTION:g}"
        gz1_big = _cached(cache / f"{stem}_gz1_big{CACHE_SIZE}_u8.npy",
                          lambda: _to_uint8(preprocess_files([gz1_path(i) for i in ids], "gz1",
                                                             size=CACHE_SIZE)),
                          key=ids.astype(np.int64))
        gz2_big = _cached(cache / f"{stem}_gz2_big{CACHE_SIZE}_u8.npy",
                          lambda: _to_uint8(preprocess_files([gz2_path(i) for i in g2], "gz2",
                                                             size=CACHE_SIZE)),
                          key=g2.astype(np.int64))
    if args.smoke:
        gz1_stamps = preprocess_files([gz1_path(i) for i in ids], "gz1")
    else:
        gz1_stamps = _cached(cache / f"{stem}_gz1_stamps{STAMP_SIZE}.npy",
                             lambda: preprocess_files([gz1_path(i) for i in ids], "gz1"),
                             key=ids.astype(np.int64))
    heldout = np.concatenate([split[1], split[2]])
    return dict(gz1_ids=ids, labels=labels, split=split, gz1_big=gz1_big, gz2_ids=g2,
                gz2_big=gz2_big, heldout=heldout, gz1_stamps=gz1_stamps, split_source=source,
                gz1_paths=[gz1_path(i) for i in ids])


def centre(big):
    """The network field of view (central 64 pixels) of cached 96-pixel stamps, float32.

    The cache holds 1.5 times the field at the network's pixel scale, so its
    central `STAMP_SIZE` pixels are the network stamp (to 8-bit rounding).
    """
    o = (CACHE_SIZE - STAMP_SIZE) // 2
    return big[:, :, o:o + STAMP_SIZE, o:o + STAMP_SIZE].astype(np.float32) / 255.0


def _field_vectors(big, chunk=1024):
    """Unit vectors of the high-passed grey field around the galaxy (48 x 48, centre masked).

    Field stars, neighbours and the outskirts identify a field; the central
    galaxy, which many fields share in shape, is masked.
    """
    from scipy.ndimage import uniform_filter

    yy, xx = np.mgrid[:48, :48] - 23.5
    outer = (np.hypot(yy, xx) > 8).ravel()
    out = []
    for s in range(0, len(big), chunk):
        x = big[s:s + chunk].astype(np.float32).mean(1) / 255.0
        x = x.reshape(len(x), 48, 2, 48, 2).mean((2, 4))
        v = (x - uniform_filter(x, size=(1, 5, 5))).reshape(len(x), -1) * outer
        v -= v.mean(1, keepdims=True)
        out.append(v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6))
    return np.concatenate(out)


def find_duplicates(gz2_big, gz1_big, *, field_threshold=0.45, pixel_threshold=0.94):
    """GZ2 cutouts showing the same field as one of ``gz1_big`` (same galaxy in both sets).

    Both sets are on the same angular grid, so a galaxy present in both gives
    nearly identical stamps. Two tests: the correlation of the high-passed
    surrounding field (`_field_vectors`) must reach ``field_threshold`` and
    the correlation of the whole colour stamps ``pixel_threshold``. (On the
    real data the true duplicates score above 0.94 in pixels; unrelated
    galaxies of similar shape below 0.94.)

    Returns
    -------
    duplicate : numpy.ndarray of bool, (N_gz2,)
    match : numpy.ndarray of int, (N_gz2,)
        Index into ``gz1_big`` of the most similar field.
    pixel_corr : numpy.ndarray, (N_gz2,)
        Whole-stamp correlation with that galaxy (NaN where not tested).
    """
    a, b = _field_vectors(gz2_big), _field_vectors(gz1_big)
    sim = a @ b.T
    match = sim.argmax(1)
    field = sim[np.arange(len(a)), match]
    pixel = np.full(len(a), np.nan)

    def unit(x):
        x = x.astype(np.float32).ravel()
        x = x - x.mean()
        return x / max(float(np.linalg.norm(x)), 1e-6)

    for i in np.flatnonzero(field >= field_threshold):
        pixel[i] = float(unit(gz2_big[i]) @ unit(gz1_big[match[i]]))
    return np.nan_to_num(pixel, nan=-1.0) >= pixel_threshold, match, pixel


def training_pool(data):
    """uint8 training stamps: GZ1 training split + GZ2 minus duplicates of held-out galaxies.

    Returns the stamps and a dict describing what went in.
    """
    if "pool" in data:
        return data["pool"], data["pool_info"]
    tr = data["split"][0]
    dup, match, pixel = find_duplicates(data["gz2_big"], data["gz1_big"][data["heldout"]])
    keep = ~dup
    pool = np.concatenate([data["gz1_big"][tr], data["gz2_big"][keep]])
    info = {"gz1_training_split": int(len(tr)), "gz2": int(keep.sum()),
            "gz2_dropped_as_heldout_duplicates": int(dup.sum()),
            "dropped_gz2_ids": data["gz2_ids"][dup].tolist(), "total": int(len(pool))}
    data["pool"], data["pool_info"] = pool, info
    return pool, info


# ---------------------------------------------------------------------------- model
class Block(nn.Module):
    """Residual block: two 3x3 convolutions (BatchNorm, ReLU), 1x1 projection shortcut."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(c_out)
        self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(c_out)
        self.short = None if (c_in == c_out and stride == 1) else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(y + (x if self.short is None else self.short(x)))


class Encoder(nn.Module):
    """Small ResNet: (N, 3, 64, 64) display values in [0, 1] -> pooled features (N, 256).

    Stride-2 stem (32 px), three residual stages with stride 2 (16, 8, 4 px),
    global average pooling; about 1.2 M parameters.
    """

    def __init__(self, widths=(32, 64, 128, FEATURE_DIM)):
        super().__init__()
        a, b, c, d = widths
        self.stem = nn.Sequential(nn.Conv2d(3, a, 3, 2, 1, bias=False), nn.BatchNorm2d(a),
                                  nn.ReLU(inplace=True))
        self.stages = nn.Sequential(Block(a, b, 2), Block(b, c, 2), Block(c, d, 2))
        self.dim = d
        self.widths = [int(w) for w in widths]

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.stages(self.stem(x - 0.5)), 1).flatten(1)

    def pooled_stages(self, x):
        """Globally averaged outputs of the three residual stages, concatenated (N, 448)."""
        h = self.stem(x - 0.5)
        out = []
        for stage in self.stages:
            h = stage(h)
            out.append(F.adaptive_avg_pool2d(h, 1).flatten(1))
        return torch.cat(out, 1)


def mlp(d_in, d_hidden, d_out):
    """Projection / prediction head: Linear, BatchNorm, ReLU, Linear."""
    return nn.Sequential(nn.Linear(d_in, d_hidden, bias=False), nn.BatchNorm1d(d_hidden),
                         nn.ReLU(inplace=True), nn.Linear(d_hidden, d_out))


class SimCLR(nn.Module):
    """SimCLR (Chen et al. 2020): NT-Xent loss between two views of each galaxy."""

    name = "simclr"

    def __init__(self, temperature=0.2):
        super().__init__()
        self.encoder = Encoder()
        self.projector = mlp(self.encoder.dim, 512, 128)
        self.temperature = temperature

    def loss(self, x1, x2):
        z = F.normalize(self.projector(self.encoder(torch.cat([x1, x2]))), dim=1)
        n = x1.shape[0]
        sim = z @ z.T / self.temperature
        sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
        return F.cross_entropy(sim, target)

    def after_step(self, progress):
        pass


class BYOL(nn.Module):
    """BYOL (Grill et al. 2020): predict an EMA target network's projection of the other view."""

    name = "byol"

    def __init__(self, base_momentum=0.99):
        super().__init__()
        self.encoder = Encoder()
        self.projector = mlp(self.encoder.dim, 512, 128)
        self.predictor = mlp(128, 512, 128)
        self.target = nn.Sequential(copy.deepcopy(self.encoder), copy.deepcopy(self.projector))
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.base_momentum = base_momentum
        self.momentum = base_momentum

    def loss(self, x1, x2):
        x = torch.cat([x1, x2])
        p = F.normalize(self.predictor(self.projector(self.encoder(x))), dim=1)
        with torch.no_grad():
            self.target.train()
            t = F.normalize(self.target(x), dim=1)
        n = x1.shape[0]
        t = torch.cat([t[n:], t[:n]])  # each view predicts the other view's target
        return (2 - 2 * (p * t).sum(1)).mean()

    @torch.no_grad()
    def after_step(self, progress):
        """EMA update of the target; momentum rises to 1 on a cosine schedule."""
        self.momentum = 1 - (1 - self.base_momentum) * (math.cos(math.pi * progress) + 1) / 2
        online = list(self.encoder.parameters()) + list(self.projector.parameters())
        for pt, po in zip(self.target.parameters(), online):
            pt.mul_(self.momentum).add_(po.detach(), alpha=1 - self.momentum)


def build_method(name, args=None):
    if name == "simclr":
        return SimCLR(temperature=_get(args, "temperature", 0.2) if args else 0.2)
    if name == "byol":
        return BYOL()
    raise ValueError(f"unknown method {name!r}")


#: Peak learning rates (AdamW) per method.
DEFAULT_LR = {"simclr": 2e-3, "byol": 1e-3}


# --------------------------------------------------------------------- augmentation
def augment(big, gen, size=VIEW_SIZE):
    """One random view per cached stamp (astronomy-respecting, no colour change).

    Parameters
    ----------
    big : torch.Tensor, (B, 3, 96, 96) float32
        Cached training stamps (display values in [0, 1], 1.5 x the field).
    gen : torch.Generator
    size : int
        Side of the view in pixels, at the network's pixel scale (a window of
        the 64-pixel field when smaller).

    Returns
    -------
    torch.Tensor, (B, 3, size, size) float32
        Rotation by any angle, random flip, zoom by up to +-20 per cent, a
        window shifted by up to 4 + (64 - size) / 2 pixels (bilinear
        resampling); Gaussian PSF blur (p=0.5, sigma 0.3-1.5 px); brightness
        gain and gamma stretch (+-20 per cent, the same for the three channels,
        so colours are kept); Gaussian noise (sigma 0-0.03). No colour jitter:
        colour is part of a galaxy's morphology.
    """
    b = big.shape[0]
    u = _uniform(gen, b)
    x = random_views(big, gen, size=size, zoom=0.2, shift=4 + (STAMP_SIZE - size) / 2)
    x = random_blur(x, gen, p=0.5, sigma=(0.3, 1.5))

    gain = torch.exp(u(-0.2, 0.2))[:, None, None, None]
    gamma = torch.exp(u(-0.2, 0.2))[:, None, None, None]
    x = (x.clamp(0, 1) * gain).clamp(0, 1) ** gamma
    x = x + u(0, 0.03)[:, None, None, None] * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def two_views(big_u8, gen, grey_p=GREY_PROBABILITY):
    """Two augmented views of uint8 cached stamps; a fraction of pairs is grey in both views.

    Greying both views of a pair (never one) shows the network single-band
    (replicated grey) input without teaching it to ignore colour.
    """
    big = torch.from_numpy(big_u8).float().div_(255.0)
    v1, v2 = augment(big, gen), augment(big, gen)
    grey = (torch.rand(big.shape[0], generator=gen) < grey_p)[:, None, None, None]
    v1 = torch.where(grey, v1.mean(1, keepdim=True).expand_as(v1), v1)
    v2 = torch.where(grey, v2.mean(1, keepdim=True).expand_as(v2), v2)
    return v1, v2


# ----------------------------------------------------------------------- features
@torch.no_grad()
def features(encoder, x, batch=512):
    """Pooled encoder features (float32 numpy) of network-ready stamps."""
    encoder.eval()
    out = [encoder(torch.from_numpy(np.ascontiguousarray(x[i:i + batch], dtype=np.float32)))
           for i in range(0, len(x), batch)]
    return torch.cat(out).numpy() if out else np.zeros((0, encoder.dim), np.float32)


def l2n(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def probe_draws(emb, labels, pool, test, *, n_labels=PROBE_LABELS, draws=PROBE_DRAWS, seed=0,
                class_weight=None):
    """Few-label logistic-regression probe repeated over random draws of labelled galaxies.

    Uses `astromorph.LabelHead` (the same head users fit). ``pool`` and
    ``test`` index ``emb`` and ``labels``; each draw takes ``n_labels``
    galaxies of ``pool`` at random (the natural class mix) and scores the
    galaxies of ``test``.

    Returns
    -------
    dict
        Mean and standard deviation of accuracy and macro recall, the
        per-draw values and the mean confusion matrix.
    """
    from astromorph import LabelHead
    from astromorph.embeddings._head import DEFAULT_CS

    k = len(CLASS_NAMES)
    accs, recs, cms = [], [], []
    for d in range(draws):
        rng = np.random.default_rng([seed, d])
        lab = rng.choice(pool, size=min(n_labels, len(pool)), replace=False)
        # a draw without a class of two rows leaves the cross-validation nothing to choose C
        # with (LabelHead refuses it): such tiny draws (--smoke's) take the smallest C, the
        # one that cross-validation picked for them before LabelHead refused them
        one_each = np.unique(labels[lab], return_counts=True)[1].max() < 2
        head = LabelHead(C=min(DEFAULT_CS) if one_each else None,
                         class_weight=class_weight).fit(emb[lab], labels[lab])
        pred = head.predict(emb[test])
        rep = _common.classification_report(np.eye(k)[pred], labels[test], CLASS_NAMES)
        accs.append(rep["accuracy"])
        recs.append(rep["macro_recall"])
        cms.append(rep["confusion_matrix"])
    return {"accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
            "macro_recall_mean": float(np.mean(recs)), "macro_recall_std": float(np.std(recs)),
            "accuracy_per_draw": [round(a, 4) for a in accs],
            "macro_recall_per_draw": [round(r, 4) for r in recs],
            "confusion_matrix_sum": np.sum(cms, axis=0).tolist(),
            "n_labels": int(min(n_labels, len(pool))), "draws": int(draws), "n_test": int(len(test))}


def precision_at_k(emb, labels, queries, k=PRECISION_K):
    """Mean fraction of the ``k`` nearest neighbours (cosine, among ``emb``) sharing each
    query's class; the query itself is excluded."""
    e = l2n(emb)
    sim = e[queries] @ e.T
    sim[np.arange(len(queries)), queries] = -np.inf
    nn_idx = np.argpartition(-sim, k, axis=1)[:, :k]
    return float(np.mean(labels[nn_idx] == labels[queries][:, None]))


def monitor_split(data, n=2000, seed=1):
    """GZ1 *training-split* galaxies used to monitor and compare methods.

    The encoder trains on these images but never sees their labels; the
    held-out galaxies stay untouched until ``evaluate``. Returns (indices into
    GZ1, pool positions, test positions) with half the galaxies as the probe's
    label pool and half as its test set.
    """
    tr = data["split"][0]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(tr, size=min(n, len(tr)), replace=False))
    pos = rng.permutation(len(idx))
    return idx, np.sort(pos[: len(idx) // 2]), np.sort(pos[len(idx) // 2:])


def monitor_scores(encoder, data, mon, *, draws=PROBE_DRAWS, n_labels=PROBE_LABELS):
    """Probe and precision@25 on the monitoring galaxies (pooled features, centred, PCA-free)."""
    idx, pool, test = mon
    x = centre(data["gz1_big"][idx])
    f = features(encoder, x)
    emb = l2n(f - f.mean(0))
    y = data["labels"][idx]
    probe = probe_draws(emb, y, pool, test, n_labels=min(n_labels, len(pool)), draws=draws)
    q = np.flatnonzero(np.isin(y, [CLASS_NAMES.index("edge_on"), CLASS_NAMES.index("spiral")]))
    p25 = precision_at_k(emb, y, q, k=min(PRECISION_K, len(y) - 1)) if len(q) else float("nan")
    return {"probe_accuracy": probe["accuracy_mean"], "probe_macro_recall": probe["macro_recall_mean"],
            "precision_at_25_spiral_edge_on": p25}


# ---------------------------------------------------------------------------- train
def _lr_at(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


#: What a resumed run must share with its checkpoint (`_common.check_resume`; ``--epochs``
#: and ``--threads`` may change). ``n_train`` is the number of training cutouts.
RECIPE_KEYS = ("method", "seed", "lr", "batch_size", "temperature", "n_train")
_RECIPE_LABELS = {"n_train": "training cutouts"}


def _stored_recipe(state):
    """The `RECIPE_KEYS` a checkpoint was trained with, as strings (older checkpoints:
    their records, which lack the temperature)."""
    if "recipe" in state:
        return state["recipe"]
    return {k: str(state[k]) for k in RECIPE_KEYS if k in state}


def run_ssl(method, pool, *, epochs, batch_size, lr, seed, ckpt=None, restart=False, keep=True,
            monitor=None, monitor_every=5, log_prefix="", split_source=None):
    """Train a self-supervised method on uint8 stamps; checkpoint every epoch.

    Parameters
    ----------
    method : SimCLR or BYOL
    pool : numpy.ndarray, (N, 3, 96, 96) uint8
    ckpt : Path, optional
        ``last.pt`` to write every epoch and to resume from.
    restart, keep : bool
        Train afresh over ``ckpt``; ``keep`` it (renamed aside) or not
        (`_common.resume_checkpoint`).
    monitor : callable, optional
        ``monitor(encoder) -> dict`` logged every ``monitor_every`` epochs and
        after the last.
    split_source : str, optional
        Fingerprint of the ``labels.csv`` the held-out split was drawn from (`load_data`),
        recorded in ``ckpt``; a ``ckpt`` of another is not resumed.

    Returns
    -------
    list of dict
        One row per epoch (loss, monitor scores, seconds).
    """
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4 if method.name == "simclr" else 1e-5)
    start, history = 0, []
    batch_size = min(batch_size, len(pool))
    recipe = {"method": method.name, "seed": str(seed), "lr": str(lr),
              "batch_size": str(batch_size), "temperature": str(getattr(method, "temperature", None)),
              "n_train": str(len(pool))}
    state = None if ckpt is None else _common.resume_checkpoint(ckpt, model=NAME, restart=restart,
                                                                 keep=keep)
    if state is not None:
        _common.check_resume(ckpt, _stored_recipe(state), argparse.Namespace(**recipe),
                             RECIPE_KEYS, labels=_RECIPE_LABELS, trained=state["epoch"] + 1,
                             epochs=epochs)
        _common.check_resumed_split(ckpt, state, split_source)
        method.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = state["epoch"] + 1, state["history"]
        if start == epochs:  # a finished run is kept, as the other models keep theirs
            log.info("%s%s has finished its %d epochs: kept (--restart trains afresh)",
                     log_prefix, ckpt, epochs)
            if state["epochs"] != epochs:  # an interrupted run that --epochs now ends
                _common.save_checkpoint({**state, "epochs": epochs}, ckpt, model=NAME)
            return history
        log.info("%sresumed from %s at epoch %d", log_prefix, ckpt, start)
        if state["epochs"] != epochs:
            log.warning("%sthe checkpoint was planned for %d epochs, now %d: the learning "
                        "rate schedule follows the new total from here", log_prefix,
                        state["epochs"], epochs)
    steps = max(1, len(pool) // batch_size)
    total = epochs * steps
    warmup = min(2 * steps, total // 10 + 1)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, epoch])
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        order = rng.permutation(len(pool))
        method.train()
        running = 0.0
        for s in range(steps):
            step = epoch * steps + s
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, lr, warmup)
            idx = np.sort(order[s * batch_size:(s + 1) * batch_size])
            v1, v2 = two_views(pool[idx], gen)
            loss = method.loss(v1, v2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.after_step((step + 1) / total)
            running += loss.item()
        row = {"epoch": epoch, "loss": running / steps, "lr": opt.param_groups[0]["lr"]}
        if monitor is not None and ((epoch + 1) % monitor_every == 0 or epoch + 1 == epochs):
            row.update(monitor(method.encoder))
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        log.info("%sepoch %d/%d %s", log_prefix, epoch + 1, epochs,
                 " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in row.items() if k != "epoch"))
        if ckpt is not None:
            state = dict(epoch=epoch, epochs=epochs, method=method.name,
                         model=method.state_dict(), optimizer=opt.state_dict(), history=history,
                         batch_size=batch_size, lr=lr, seed=seed, n_train=int(len(pool)),
                         recipe=recipe, split_source=split_source)
            _common.save_checkpoint(state, ckpt, model=NAME)
    return history


def compare_methods(args, data, pool):
    """Short equal-budget runs of each method, scored by the monitoring probe."""
    methods = [m.strip() for m in _get(args, "methods", ",".join(METHODS)).split(",") if m.strip()]
    epochs = 1 if args.smoke else _get(args, "compare_epochs", 6)
    n_img = len(pool) if args.smoke else min(_get(args, "compare_images", 4000), len(pool))
    subset = pool[np.sort(np.random.default_rng(7).choice(len(pool), n_img, replace=False))]
    mon = monitor_split(data, n=len(data["split"][0]) if args.smoke else 2000)
    draws = 2 if args.smoke else PROBE_DRAWS
    n_labels = 4 if args.smoke else PROBE_LABELS
    ckdir = _common.checkpoint_dir(NAME, _root(args))
    results = {}
    torch.manual_seed(args.seed)
    baseline = Encoder()
    results["random_init_encoder"] = monitor_scores(baseline, data, mon, draws=draws,
                                                    n_labels=n_labels)
    for name in methods:
        torch.manual_seed(args.seed)
        method = build_method(name, args)
        lr = _get(args, "lr", DEFAULT_LR[name])
        t0 = time.perf_counter()
        hist = run_ssl(method, subset, epochs=epochs, batch_size=_get(args, "batch_size", 256)
                       if not args.smoke else 16, lr=lr, seed=args.seed,
                       ckpt=ckdir / f"compare_{name}.pt",
                       restart=_get(args, "restart", False) or args.smoke, keep=not args.smoke,
                       log_prefix=f"[compare {name}] ")
        score = monitor_scores(method.encoder, data, mon, draws=draws, n_labels=n_labels)
        score.update(train_seconds=round(time.perf_counter() - t0, 1),
                     final_loss=hist[-1]["loss"] if hist else None, lr=lr)
        results[name] = score
        log.info("[compare %s] %s", name, score)
    winner = max(methods, key=lambda m: (results[m]["probe_accuracy"]
                                         + results[m]["probe_macro_recall"]))
    report = {
        "protocol": (f"each method trained {epochs} epochs on the same {n_img} random training "
                     f"cutouts (batch {_get(args, 'batch_size', 256)}, same augmentations, "
                     "AdamW + cosine), then a logistic-regression probe on pooled features "
                     f"(centred, L2-normalised) with {n_labels} labels, {draws} random draws, on "
                     f"{len(mon[0])} GZ1 training-split galaxies (never the held-out ones; their "
                     "labels never train the encoder); precision@25 for spiral and edge-on queries"),
        "results": results,
        "winner": winner,
        "selection": "highest probe accuracy + macro recall",
        "smoke": bool(args.smoke),
    }
    path = _common.report_dir(NAME, _root(args)) / "method_comparison.json"
    _common.write_text(path, json.dumps(report, indent=2) + "\n")
    log.info("method comparison -> %s (winner %s)", path, winner)
    return report


def train(args):
    """Train the encoder (resumes from ``last.pt`` unless ``--restart``)."""
    torch.set_num_threads(_get(args, "threads", 1))
    _common.set_seed(args.seed)
    data = load_data(args)
    pool, info = training_pool(data)
    log.info("training cutouts: %s", info)
    method_name = _get(args, "method", None)
    if _get(args, "compare", False) or _get(args, "compare_only", False):
        report = compare_methods(args, data, pool)
        method_name = method_name or report["winner"]
        if _get(args, "compare_only", False):
            return report
    if method_name is None:
        cmp_path = _common.report_dir(NAME, _root(args)) / "method_comparison.json"
        method_name = json.loads(cmp_path.read_text())["winner"] if cmp_path.exists() else "simclr"
    epochs = args.epochs or (1 if args.smoke else DEFAULT_EPOCHS)
    torch.manual_seed(args.seed)
    method = build_method(method_name, args)
    lr = _get(args, "lr", DEFAULT_LR[method_name])
    mon = monitor_split(data, n=len(data["split"][0]) if args.smoke else 2000)
    draws, n_labels = (2, 4) if args.smoke else (3, PROBE_LABELS)

    def monitor(encoder):
        return monitor_scores(encoder, data, mon, draws=draws, n_labels=n_labels)

    ckdir = _common.checkpoint_dir(NAME, _root(args))
    log.info("checkpoints in %s", ckdir)
    history = run_ssl(method, pool, epochs=epochs,
                      batch_size=16 if args.smoke else _get(args, "batch_size", 256), lr=lr,
                      seed=args.seed, ckpt=ckdir / "last.pt",
                      restart=_get(args, "restart", False) or args.smoke, keep=not args.smoke,
                      monitor=monitor, split_source=data["split_source"])
    state = _common.load_checkpoint(ckdir / "last.pt")
    state["data"] = info
    state["threads"] = _get(args, "threads", 1)
    state["field_per_petro_r90"] = FIELD_PER_PETRO_R90
    _common.save_checkpoint(state, ckdir / "last.pt", model=NAME)
    _common.write_text(ckdir / "history.json", json.dumps(history, indent=1) + "\n")
    return ckdir


# ------------------------------------------------------------------------- deploy
#: Rotations averaged inside the graph: ``tta=2`` identity + 180 degrees, ``tta=4`` all four.
def _rotations(x, tta):
    r180 = torch.flip(x, dims=(2, 3))
    if tta == 1:
        return [x]
    if tta == 2:
        return [x, r180]
    r90 = torch.flip(x.transpose(2, 3), dims=(3,))
    return [x, r90, r180, torch.flip(r90, dims=(2, 3))]


class DeployedEmbedding(nn.Module):
    """The shipped graph: rotation-averaged pooled features -> PCA -> L2 normalisation.

    ``embedding = normalise(P^T (mean_r f(r(x)) - mu))`` where ``r`` runs
    over ``tta`` rotations by multiples of 90 degrees, ``f`` is the encoder's
    globally pooled output (``stages=False``, 256 values) or the pooled
    outputs of its three stages concatenated (``stages=True``, 448 values),
    ``mu`` and ``P`` the mean and the leading principal axes (with a
    per-stage scaling folded in) of the training cutouts' features.
    """

    def __init__(self, encoder, mean, components, tta=DEFAULT_TTA, stages=False):
        super().__init__()
        self.encoder = encoder
        self.tta = int(tta)
        self.stages = bool(stages)
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.register_buffer("components", torch.as_tensor(np.asarray(components),
                                                           dtype=torch.float32))

    def pooled(self, x):
        views = _rotations(x, self.tta)
        n = x.shape[0]
        f = (self.encoder.pooled_stages if self.stages else self.encoder)(torch.cat(views, 0))
        return f.reshape(len(views), n, -1).mean(0)

    def forward(self, x):
        e = (self.pooled(x) - self.mean) @ self.components
        return e / torch.clamp(torch.linalg.vector_norm(e, dim=1, keepdim=True), min=1e-12)


def architecture(deployed):
    """What `from_architecture` needs to rebuild ``deployed`` (recorded in the card).

    Returns
    -------
    dict
        ``network``, ``widths`` (of the `Encoder`), ``tta``, ``stages``, and
        ``features`` and ``dim``, the shape of the projection.
    """
    features, dim = deployed.components.shape
    return {"network": "Encoder", "widths": deployed.encoder.widths, "tta": deployed.tta,
            "stages": deployed.stages, "features": int(features), "dim": int(dim)}


def from_architecture(arch):
    """A `DeployedEmbedding` of the recorded architecture, with untrained weights.

    Parameters
    ----------
    arch : dict
        As returned by `architecture` (``training.architecture`` in the card).
    """
    encoder = Encoder(widths=tuple(arch["widths"]))
    return DeployedEmbedding(encoder, np.zeros(arch["features"]),
                             np.zeros((arch["features"], arch["dim"])), arch["tta"],
                             arch["stages"]).eval()


def load_encoder(args):
    """The trained encoder and the checkpoint dict (trains first in smoke mode)."""
    last = _common.checkpoint_dir(NAME, _root(args)) / "last.pt"
    if args.smoke and not last.exists():
        train(args)
    if not last.exists():
        raise SystemExit(f"no checkpoint {last}; run `python -m astromorph_training {NAME} train`")
    state = _common.load_checkpoint(last, hint=f"rerun `python -m astromorph_training {NAME} "
                                                "train`")
    method = build_method(state["method"])
    method.load_state_dict(state["model"])
    return method.encoder.eval(), state


def fit_pca(encoder, data, tta, *, stages=False, n=4000, seed=3, reduce=True):
    """Mean and the `EMBED_DIM` leading principal axes of training-cutout features.

    With ``reduce=False`` the axes are the identity (all features kept, only
    the training mean is subtracted before the L2 normalisation).

    Uses up to ``n`` random cutouts of the training pool (GZ1 training split
    and GZ2; never held-out galaxies), at the network field of view. With
    ``stages`` each stage's block of features is first divided by its RMS
    (so the wide last stage does not dominate); that scaling is folded into
    the returned ``components`` (features minus ``mean``, times
    ``components``, gives the embedding before normalisation).
    """
    pool, _ = training_pool(data)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(pool), size=min(n, len(pool)), replace=False))
    x = centre(pool[idx])
    dim_in = 448 if stages else encoder.dim
    deployed = DeployedEmbedding(encoder, np.zeros(dim_in), np.eye(dim_in), tta, stages).eval()
    with torch.no_grad():
        f = np.concatenate([deployed.pooled(torch.from_numpy(x[i:i + 256])).numpy()
                            for i in range(0, len(x), 256)]).astype(np.float64)
    mean = f.mean(0)
    z = f - mean
    scale = np.ones(dim_in)
    if stages:
        widths = [blk.c2.out_channels for blk in encoder.stages]
        edges = np.cumsum([0] + widths)
        for lo, hi in zip(edges[:-1], edges[1:]):
            scale[lo:hi] = np.sqrt(np.mean(z[:, lo:hi] ** 2) * (hi - lo))
    if not reduce:
        return {"mean": mean.astype(np.float32), "components": np.eye(dim_in, dtype=np.float32),
                "explained_variance": 1.0, "n": int(len(idx)), "tta": int(tta),
                "stages": bool(stages), "pca": False}
    _, s, vt = np.linalg.svd(z / scale, full_matrices=False)
    dim = min(EMBED_DIM, vt.shape[0])
    components = vt[:dim].T / scale[:, None]
    return {"mean": mean.astype(np.float32), "components": components.astype(np.float32),
            "explained_variance": float(np.sum(s[:dim] ** 2) / np.sum(s ** 2)),
            "n": int(len(idx)), "tta": int(tta), "stages": bool(stages), "pca": True}


def select_features(encoder, data, tta, *, smoke=False):
    """Choose the pooled features on the monitoring galaxies.

    Variants: the last stage's pooled features projected on their `EMBED_DIM`
    leading principal axes, the three stages' pooled features (per-stage
    scaled) likewise, and the last stage's `FEATURE_DIM` features without a
    projection. Means and axes come from training cutouts; each variant is
    scored by the 200-label probe (10 draws) on GZ1 *training-split*
    galaxies (`monitor_split`), never on held-out ones.

    Returns
    -------
    dict
        ``last_stage`` and ``all_stages`` scores, ``choice`` and ``chosen``
        (the `fit_pca` result to ship).
    """
    idx, pool, test = mon = monitor_split(data, n=len(data["split"][0]) if smoke else 2000)
    y = data["labels"][idx]
    x = data["gz1_stamps"][idx]
    out, fits = {}, {}
    for name, stages, reduce in (("last_stage", False, True), ("all_stages", True, True),
                                 ("last_stage_no_pca", False, False)):
        pca = fit_pca(encoder, data, tta, stages=stages, n=64 if smoke else 4000, reduce=reduce)
        deployed = DeployedEmbedding(encoder, pca["mean"], pca["components"], tta, stages).eval()
        with torch.no_grad():
            emb = np.concatenate([deployed(torch.from_numpy(x[i:i + 256])).numpy()
                                  for i in range(0, len(x), 256)])
        probe = probe_draws(emb, y, pool, test, n_labels=4 if smoke else PROBE_LABELS,
                            draws=2 if smoke else PROBE_DRAWS)
        out[name] = {"probe_accuracy": probe["accuracy_mean"],
                     "probe_macro_recall": probe["macro_recall_mean"],
                     "explained_variance": pca["explained_variance"],
                     "dimensions": int(pca["components"].shape[1])}
        fits[name] = pca
        log.info("features %s: monitoring probe accuracy %.4f macro recall %.4f", name,
                 probe["accuracy_mean"], probe["macro_recall_mean"])
    choice = max(out, key=lambda k: out[k]["probe_accuracy"] + out[k]["probe_macro_recall"])
    out["choice"] = choice
    out["protocol"] = (f"probe with 200 labels, 10 draws, on {len(mon[0])} GZ1 training-split "
                       "galaxies (not held out; their labels never train the encoder)")
    out["chosen"] = fits[choice]
    return out


def export_model(deployed, root):
    """Export the deployed graph to ``<root>/models/embedding/model.onnx``."""
    path = _common.model_dir(NAME, root) / "model.onnx"
    example = np.zeros((2, 3, STAMP_SIZE, STAMP_SIZE), dtype=np.float32)
    _common.export_onnx(deployed, example, path, input_name="input",
                        output_names=("embedding",), opset=18)
    return path


# ---------------------------------------------------------------------- baselines
def supervised_cnn_draws(data, pool, test, *, n_labels=PROBE_LABELS, draws=PROBE_DRAWS,
                         seed=0, epochs=60, smoke=False):
    """A small CNN trained from scratch on the same few labelled galaxies as the probe.

    The ``morphology`` network architecture (`MorphologyNet`) and its
    training augmentation (`astromorph_training.morphology.augment`), AdamW
    with a cosine learning rate, ``epochs`` passes over the labelled
    galaxies, no validation set (there is none with 200 labels), last weights.
    ``pool`` and ``test`` index GZ1.
    """
    from .morphology import STEM_1X, WIDTHS_1X, MorphologyNet
    from .morphology import augment as morph_augment

    labels, big, stamps = data["labels"], data["gz1_big"], data["gz1_stamps"]
    accs, recs = [], []
    t0 = time.perf_counter()
    for d in range(draws):
        rng = np.random.default_rng([seed, d])
        lab = rng.choice(pool, size=min(n_labels, len(pool)), replace=False)  # = probe draw
        torch.manual_seed(1000 + d)
        net = MorphologyNet(widths=WIDTHS_1X, stem=STEM_1X)  # the 1.x network
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.05)
        bs = 32
        steps = max(1, len(lab) // bs)
        total = (2 if smoke else epochs) * steps
        gen = torch.Generator().manual_seed(d)
        step = 0
        for epoch in range(2 if smoke else epochs):
            order = rng.permutation(lab)
            net.train()
            for s in range(steps):
                for group in opt.param_groups:
                    group["lr"] = _lr_at(step, total, 2e-3, max(1, total // 10))
                idx = np.sort(order[s * bs:(s + 1) * bs])
                x = morph_augment(torch.from_numpy(big[idx].astype(np.float32) / 255.0), gen)
                loss = F.cross_entropy(net(x), torch.from_numpy(labels[idx]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
        net.eval()
        with torch.no_grad():
            logits = torch.cat([net(torch.from_numpy(stamps[test[i:i + 512]]))
                                for i in range(0, len(test), 512)]).numpy()
        rep = _common.classification_report(_common.softmax(logits), labels[test], CLASS_NAMES)
        accs.append(rep["accuracy"])
        recs.append(rep["macro_recall"])
        log.info("small CNN draw %d: accuracy %.4f macro recall %.4f", d, accs[-1], recs[-1])
    return {"accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
            "macro_recall_mean": float(np.mean(recs)), "macro_recall_std": float(np.std(recs)),
            "accuracy_per_draw": [round(a, 4) for a in accs],
            "macro_recall_per_draw": [round(r, 4) for r in recs],
            "draws": int(draws), "epochs": 2 if smoke else epochs,
            "seconds": round(time.perf_counter() - t0, 1),
            "model": "MorphologyNet (morphology 1.x network, 0.92 M parameters) from scratch, "
                     "morphology augmentation"}


def normalized_mutual_information(a, b):
    """NMI of two labelings (arithmetic-mean normalisation, as scikit-learn's default)."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = np.sum(p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz]))
    ha = -np.sum(pa[pa > 0] * np.log(pa[pa > 0]))
    hb = -np.sum(pb[pb > 0] * np.log(pb[pb > 0]))
    return float(mi / max((ha + hb) / 2, 1e-12))


def cluster_gallery(stamps, clusters, path, *, per_cluster=10, seed=0, names=None):
    """PNG with one row of random member stamps per cluster."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(set(clusters.tolist()))
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(ks), per_cluster, figsize=(1.1 * per_cluster, 1.2 * len(ks)),
                             squeeze=False)
    for r, c in enumerate(ks):
        members = np.flatnonzero(clusters == c)
        pick = rng.choice(members, size=min(per_cluster, len(members)), replace=False)
        for j, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(pick):
                ax.imshow(np.moveaxis(stamps[pick[j]], 0, -1), interpolation="nearest")
            else:
                ax.axis("off")
        label = f"cluster {c}\n(n={len(members)})" + (f"\n{names[c]}" if names else "")
        axes[r][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    _common.save_figure(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)


def _plot_probe(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key in zip(axes, ("accuracy", "macro_recall")):
        means = [results[n][f"{key}_mean"] for n in names]
        stds = [results[n].get(f"{key}_std", 0.0) for n in names]
        ax.bar(range(len(names)), means, yerr=stds, color=[f"C{i}" for i in range(len(names))],
               capsize=4)
        for i, m in enumerate(means):
            ax.text(i, m + 0.01, f"{m:.3f}", ha="center", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=15, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(key.replace("_", " "))
    fig.suptitle("GZ1 held-out test galaxies: classifiers from 200 labelled galaxies", fontsize=9)
    fig.tight_layout()
    _common.save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------- evaluate
def evaluate(args):
    """Export the graph and measure it (through onnxruntime) on held-out GZ1 galaxies."""
    torch.set_num_threads(_get(args, "threads", 1))
    _common.set_seed(args.seed)
    import astromorph
    from astromorph import GaussianMixture, SimilarityIndex

    root = _root(args)
    rdir = _common.report_dir(NAME, root)
    encoder, state = load_encoder(args)
    data = load_data(args, trained=state.get("split_source"))
    tta = _get(args, "tta", DEFAULT_TTA)
    variants = select_features(encoder, data, tta, smoke=args.smoke)
    pca = variants["chosen"]
    deployed = DeployedEmbedding(encoder, pca["mean"], pca["components"], tta,
                                 pca["stages"]).eval()
    onnx_path = export_model(deployed, root)

    labels = data["labels"]
    _, pool, test = data["split"]
    draws = 2 if args.smoke else _get(args, "probe_draws", PROBE_DRAWS)
    n_labels = 4 if args.smoke else PROBE_LABELS
    t0 = time.perf_counter()
    emb_all = _common.run_onnx(onnx_path, data["gz1_stamps"])  # every GZ1 galaxy, network input
    onnx_seconds = time.perf_counter() - t0
    with torch.no_grad():
        ref = deployed(torch.from_numpy(data["gz1_stamps"][test[:128]])).numpy()
    parity = float(np.max(np.abs(ref - emb_all[test[:128]])))

    # (a) few-label probe, next to a small CNN and the full morphology model
    probe = probe_draws(emb_all, labels, pool, test, n_labels=n_labels, draws=draws)
    probe_bal = probe_draws(emb_all, labels, pool, test, n_labels=n_labels, draws=draws,
                            class_weight="balanced")
    feats = features(encoder, data["gz1_stamps"])  # single view, no PCA (ablation)
    probe_raw = probe_draws(l2n(feats - feats[data["split"][0]].mean(0)), labels, pool, test,
                            n_labels=n_labels, draws=draws)
    probe_full = probe_draws(emb_all, labels, pool, test, n_labels=len(pool), draws=1)
    log.info("probe (%d labels): accuracy %.4f +- %.4f, macro recall %.4f +- %.4f", n_labels,
             probe["accuracy_mean"], probe["accuracy_std"], probe["macro_recall_mean"],
             probe["macro_recall_std"])
    cnn_draws = 1 if args.smoke else _get(args, "cnn_draws", PROBE_DRAWS)
    cnn = supervised_cnn_draws(data, pool, test, n_labels=n_labels, draws=cnn_draws,
                               smoke=args.smoke)
    comparison = {"embedding + logistic probe (200 labels)": probe,
                  "small CNN from scratch (same 200 labels)": cnn}
    morph = None
    if not args.smoke and (Path(args.out_dir) / "models" / "morphology" / "model.onnx").exists():
        try:
            model = astromorph.load_model(str(Path(args.out_dir) / "models" / "morphology"),
                                          providers="cpu")
            p = model.predict(data["gz1_stamps"][test], progress=False)["probabilities"]
            rep = _common.classification_report(p, labels[test], CLASS_NAMES)
            morph = {"accuracy": rep["accuracy"], "macro_recall": rep["macro_recall"],
                     "per_class": rep["per_class"], "n": rep["n"],
                     "labels": "about 3,700 (the morphology training split)",
                     "sha256": model.sha256}
            comparison["morphology model (full supervised)"] = {
                "accuracy_mean": rep["accuracy"], "macro_recall_mean": rep["macro_recall"]}
        except Exception as exc:  # noqa: BLE001 - a comparison, not a requirement
            log.warning("morphology model comparison skipped: %s", exc)
    _plot_probe(comparison, rdir / "probe_comparison.png")
    cm = np.array(probe["confusion_matrix_sum"])
    _common.plot_confusion_matrix(cm, CLASS_NAMES, rdir / "probe_confusion_matrix.png",
                                  f"linear probe, 200 labels, summed over {draws} draws")

    # (b) similarity search
    held = np.concatenate([pool, test])
    e_held, y_held = emb_all[held], labels[held]
    search = {}
    for cls in ("edge_on", "spiral", "elliptical"):
        c = CLASS_NAMES.index(cls)
        q_held = np.flatnonzero(y_held == c)
        kk = min(PRECISION_K, len(held) - 1)
        search[cls] = {
            "queries": int(len(q_held)),
            "precision_at_25_within_heldout": precision_at_k(e_held, y_held, q_held, k=kk),
            "precision_at_25_all_gz1": precision_at_k(emb_all, labels, held[q_held],
                                                      k=min(PRECISION_K, len(labels) - 1)),
            "class_fraction_heldout": float(np.mean(y_held == c)),
        }
    log.info("precision@25: %s", {k: round(v["precision_at_25_within_heldout"], 4)
                                  for k, v in search.items()})
    index = SimilarityIndex(e_held)
    rng = np.random.default_rng(5)
    gallery_rows = []
    for cls in ("edge_on", "spiral", "elliptical", "merger"):
        c = CLASS_NAMES.index(cls)
        cand = np.flatnonzero(y_held == c)
        if not len(cand):
            continue
        qrow = int(rng.choice(cand))
        res = index.query(row=qrow, k=11)
        path = rdir / f"gallery_{cls}.png"
        index.gallery(res, path, images=data["gz1_stamps"][held], ncols=6,
                      title=f"query: GZ1 {cls} (held-out row {qrow}); neighbours' GZ1 classes: "
                      + ", ".join(CLASS_NAMES[y_held[r]] for r in res["row"][:6]) + ", ...")
        gallery_rows.append({"class": cls, "row": qrow, "png": path.name,
                             "neighbour_classes": [CLASS_NAMES[y_held[r]] for r in res["row"]]})

    # (c) clustering
    gmm = GaussianMixture(k_range=range(2, 13) if not args.smoke else range(2, 4),
                          n_init=3 if not args.smoke else 1).fit(e_held)
    clusters = gmm.predict(e_held)
    nmi = normalized_mutual_information(clusters, y_held)
    gmm5 = GaussianMixture(n_components=5, n_init=3 if not args.smoke else 1).fit(e_held)
    nmi5 = normalized_mutual_information(gmm5.predict(e_held), y_held)
    crosstab = {int(c): {CLASS_NAMES[j]: int(np.sum((clusters == c) & (y_held == j)))
                         for j in range(len(CLASS_NAMES))} for c in sorted(set(clusters.tolist()))}
    from astromorph.embeddings import plot_map

    coords, map_rows = plot_map(e_held, rdir / "map_clusters.png", labels=clusters,
                                title=f"held-out GZ1 embeddings, t-SNE, coloured by GMM cluster "
                                      f"(k={gmm.n_components_} by BIC)")
    plot_map(e_held, rdir / "map_classes.png", labels=np.array(CLASS_NAMES)[y_held],
             title="held-out GZ1 embeddings, t-SNE, coloured by GZ1 class")
    cluster_gallery(data["gz1_stamps"][held], clusters, rdir / "cluster_members.png")
    log.info("GMM: k=%d by BIC, NMI %.3f (k=5: %.3f); crosstab %s", gmm.n_components_, nmi,
             nmi5, crosstab)

    from .morphology import SPLIT_FRACTIONS, SPLIT_SEED
    metrics = {
        "model": NAME,
        "split": "held-out GZ1 galaxies (morphology validation + test split; never seen by the encoder)",
        "command": f"python -m astromorph_training {NAME} evaluate",
        "source": "models/embedding/model.onnx run with onnxruntime (CPU)",
        "class_names": list(CLASS_NAMES),
        "heldout": {"n": int(len(held)), "label_pool": int(len(pool)), "test": int(len(test)),
                    "split_seed": SPLIT_SEED, "split_fractions": list(SPLIT_FRACTIONS),
                    "test_class_counts": np.bincount(labels[test], minlength=len(CLASS_NAMES)).tolist()},
        "linear_probe": {
            "protocol": (f"{n_labels} galaxies drawn at random from the held-out label pool "
                         f"(validation split), {draws} draws (seeds 0..{draws - 1}); "
                         "astromorph.LabelHead (multinomial logistic regression, standardised "
                         "features, L2 strength by 5-fold cross-validation); scored on the "
                         f"{len(test)} held-out test galaxies"),
            "embedding": probe,
            "embedding_balanced_class_weight": probe_bal,
            "pooled_features_single_view_no_pca": probe_raw,
            "embedding_all_pool_labels": {k: probe_full[k] for k in
                                          ("accuracy_mean", "macro_recall_mean", "n_labels")},
            "small_cnn_same_labels": cnn,
            "morphology_model_full_supervision": morph,
        },
        "similarity_search": {
            "metric": "precision@25: fraction of the 25 nearest neighbours (cosine) sharing the "
                      "query's GZ1 class, query excluded, mean over every held-out query of the class",
            "databases": {"within_heldout": f"the {len(held)} held-out galaxies",
                          "all_gz1": f"all {len(labels)} GZ1 galaxies (queries held-out)"},
            "per_class": search,
            "galleries": gallery_rows,
        },
        "clustering": {
            "method": "astromorph.GaussianMixture (PCA to 16 dims, full covariances, k by BIC over 2-12)",
            "k_bic": int(gmm.n_components_),
            "bic": {str(k): round(v, 1) for k, v in gmm.bic_.items()},
            "nmi_with_gz1_classes": nmi,
            "nmi_k5": nmi5,
            "crosstab_cluster_by_class": crosstab,
        },
        "pca": {k: v for k, v in pca.items() if k not in ("mean", "components")},
        "feature_choice": {k: v for k, v in variants.items() if k != "chosen"},
        "torch_onnx_max_abs_diff": parity,
        "onnx_seconds_for_gz1": round(onnx_seconds, 2),
        "onnx_sha256": _common.sha256sum(onnx_path),
        "training": {"method": state["method"], "epochs": state["epochs"],
                     "seconds": round(sum(h["seconds"] for h in state["history"]), 1),
                     "threads": state.get("threads"), "data": state.get("data"),
                     "last_epoch": state["history"][-1] if state["history"] else None},
        "smoke": bool(args.smoke),
    }
    _common.save_npz(_common.checkpoint_dir(NAME, root) / "pca.npz", mean=pca["mean"],
                     components=pca["components"], tta=tta, stages=pca["stages"],
                     pca=pca.get("pca", True))
    path = _common.write_metrics(NAME, metrics, root)
    log.info("wrote %s", path)
    return metrics


# --------------------------------------------------------------------------- export
def _schedule_note(history):
    """Say how the learning-rate schedule went when a run was extended by resuming."""
    lrs = [h["lr"] for h in history]
    legs = [i for i in range(2, len(lrs))
            if lrs[i] > lrs[i - 1] * 1.05 or 0 < lrs[i] < lrs[i - 1] * 0.6 and lrs[i - 1] > 1e-3]
    if not legs:
        return None
    bounds = [0] + legs + [len(lrs)]
    parts = ", ".join(f"{a + 1}-{b}" for a, b in zip(bounds[:-1], bounds[1:]))
    return (f"trained in {len(bounds) - 1} legs (epochs {parts}): each resume with a different "
            "--epochs re-planned the cosine schedule for the new total, so the learning rate "
            "jumped at epochs " + ", ".join(str(i + 1) for i in legs) + " (lr per epoch in "
            "training/checkpoints/embedding/history.json). A single run with the final --epochs "
            "follows one schedule and gives similar, not identical, numbers.")


def _card(metrics, state, throughput, size_bytes, tta, stages, root, *, dim=EMBED_DIM, pca=True):
    from astromorph import __version__ as astromorph_version

    comparison_path = None
    lp = metrics["linear_probe"] if metrics else None
    ss = metrics["similarity_search"]["per_class"] if metrics else None
    cl = metrics["clustering"] if metrics else None
    train_min = sum(h["seconds"] for h in state["history"]) / 60
    # the held-out GZ1 galaxies (morphology validation + test splits), as evaluate counted them
    held = (metrics or {}).get("heldout") or {"n": 1600, "test": 800}
    cmp = None
    path = _common.report_dir(NAME, root) / "method_comparison.json"
    if path.exists():
        cmp = json.loads(path.read_text())
        comparison_path = "training/reports/embedding/method_comparison.json"

    def r4(v):
        return None if v is None else round(float(v), 4)

    method_text = {
        "simclr": "SimCLR (Chen et al. 2020): NT-Xent contrastive loss, temperature 0.2, "
                  "projection head 256-512-128",
        "byol": "BYOL (Grill et al. 2020): online/EMA-target networks, predictor head",
    }[state["method"]]
    return {
        "name": NAME,
        "version": "1.0.0",
        "task": "embedding",
        "summary": f"Self-supervised {dim}-d galaxy embedding of SDSS-like gri colour cutouts "
                   "(similarity search, few-label classification, clustering)",
        "description": (
            "Small ResNet encoder (about 1.2 M parameters) trained without labels on about 11,400 "
            f"SDSS colour cutouts (Galaxy Zoo 1 training split and Galaxy Zoo 2) with {method_text}. "
            "Augmentations respect astronomy: any rotation, flips, zooms, random "
            f"{VIEW_SIZE}-pixel windows of the field at the network's pixel scale, PSF blur, "
            "noise and a brightness/gamma stretch common to the three channels; no colour "
            "jitter (colour is kept as information); 10 per cent of pairs grey in both views so "
            "single-band input is in distribution. The graph averages the "
            + ("globally pooled outputs of the three residual stages" if stages else
               "globally pooled encoder features")
            + f" over {tta} rotation(s) by multiples of 90 degrees, "
            + (f"projects them on the {dim} leading principal axes of the training features "
               if pca else f"subtracts the mean of the training features ({dim} values) ")
            + "and L2-normalises, so "
            "cosine similarity is a dot product. Use it with astromorph.SimilarityIndex, "
            "astromorph.LabelHead and astromorph.GaussianMixture (docs/embedding.md)."),
        "column_prefix": "emb",
        "input": {
            "name": "input",
            "shape": [3, STAMP_SIZE, STAMP_SIZE],
            "dtype": "float32",
            "family": "optical",
            "channels": list(OPTICAL_CHANNELS),
            "single_band": "replicate",
            "preprocessing": "astromorph.preprocessing.preprocess_optical",
            "preprocessing_options": optical_preprocessing_options(
                note="identical to the morphology model's input"),
            "angular_size": {
                "kind": "petrosian",
                "radius_column": "petroR90_r",
                "radius_unit": "arcsec",
                "cutout_size_per_petro_r90": round(GZ1_CUTOUT_PIXELS * GZ1_PIXEL_SCALE_PER_PETRO_R90, 4),
                "stamp_size_per_petro_r90": round(float(stamp_size_from_petrosian(1.0)), 4),
                "functions": ["astromorph.preprocessing.cutout_size_from_petrosian",
                              "astromorph.preprocessing.stamp_size_from_petrosian"],
            },
            "normalisation": ("8-bit display values / 255 after cropping the central crop_fraction "
                              f"and area-averaging to {STAMP_SIZE} x {STAMP_SIZE}; colour axis "
                              "first; no further scaling"),
        },
        "outputs": [{
            "name": "embedding",
            "kind": "embedding",
            "size": dim,
            "description": (f"L2-normalised {dim}-d embedding (rotation-averaged encoder "
                            f"features{', PCA' if pca else ', training mean subtracted'}); "
                            "cosine similarity = dot product"),
            "features": "pooled outputs of all three stages" if stages else "pooled last stage",
            "rotations_averaged": int(tta),
        }],
        "training": {
            "data": ("Galaxy Zoo 1 SDSS ImgCutout gri JPEGs (423 x 423, 0.024 petroR90_r/pixel), "
                     "training split only, and the Kaggle Galaxy Zoo 2 SDSS JPEGs (424 x 424, "
                     "0.02 petroR90_r/pixel), both cropped to the same angular field; no labels"),
            "counts": state.get("data"),
            "terms": ("Images: Sloan Digital Sky Survey public data (acknowledge SDSS, "
                      "https://www.sdss.org/collaboration/citing-sdss/); Galaxy Zoo images and "
                      "classifications: Lintott et al. 2008, MNRAS 389, 1179; Lintott et al. 2011, "
                      "MNRAS 410, 166; Willett et al. 2013, MNRAS 435, 2835 (Kaggle Galaxy Zoo "
                      "challenge). GZ1 labels used for evaluation only."),
            "split": ("held out (never seen by the encoder): the GZ1 validation + test split of the "
                      f"morphology model (stratified 70/15/15, seed 20240601), {held['n']:,} "
                      "galaxies, and GZ2 cutouts that duplicate them"),
            "method": method_text,
            "method_comparison": ({"report": comparison_path, "winner": cmp["winner"],
                                   "protocol": cmp["protocol"],
                                   "note": ("comparison runs used 64-pixel views; the full run "
                                            f"uses {VIEW_SIZE}-pixel windows (cheaper; a crop "
                                            "augmentation)"),
                                   "results": {k: {kk: r4(vv) for kk, vv in v.items()
                                                   if isinstance(vv, (int, float))}
                                               for k, v in cmp["results"].items()}}
                                  if cmp else None),
            "command": (f"python -m astromorph_training {NAME} train --compare-only "
                        f"--compare-epochs 8; python -m astromorph_training {NAME} train "
                        f"--method {state['method']} --epochs {state['epochs']} "
                        f"--threads {state.get('threads', 1)}"),
            "epochs": state["epochs"],
            "schedule_note": state.get("schedule_note") or _schedule_note(state["history"]),
            "view_size_pixels": VIEW_SIZE,
            "batch_size": state.get("batch_size"),
            "time": f"{train_min:.0f} min",
            "machine": f"CPU only ({platform.processor() or platform.machine()}, shared 2 cores), "
                       f"torch {torch.__version__}, {state.get('threads', 1)} thread(s)",
        },
        "metrics": {
            "split": (f"held-out GZ1 test galaxies ({held['test']}); labels from the held-out "
                      "validation pool"),
            "command": f"python -m astromorph_training {NAME} evaluate",
            "linear_probe_200_labels": {
                "accuracy_mean": r4(lp["embedding"]["accuracy_mean"]),
                "accuracy_std": r4(lp["embedding"]["accuracy_std"]),
                "macro_recall_mean": r4(lp["embedding"]["macro_recall_mean"]),
                "macro_recall_std": r4(lp["embedding"]["macro_recall_std"]),
                "draws": lp["embedding"]["draws"],
                "small_cnn_same_labels_accuracy": r4(lp["small_cnn_same_labels"]["accuracy_mean"]),
                "small_cnn_same_labels_macro_recall": r4(lp["small_cnn_same_labels"]["macro_recall_mean"]),
                "morphology_model_accuracy": r4((lp["morphology_model_full_supervision"] or {}).get("accuracy")),
                "morphology_model_macro_recall": r4((lp["morphology_model_full_supervision"] or {}).get("macro_recall")),
            },
            "precision_at_25": {c: {"within_heldout": r4(v["precision_at_25_within_heldout"]),
                                    "all_gz1": r4(v["precision_at_25_all_gz1"])}
                                for c, v in ss.items()},
            "clustering": {"k_bic": cl["k_bic"], "nmi_with_gz1_classes": r4(cl["nmi_with_gz1_classes"]),
                           "nmi_k5": r4(cl["nmi_k5"])},
            "report": "training/reports/embedding/metrics.json",
        } if metrics else {"split": "held-out GZ1", "command": f"python -m astromorph_training {NAME} evaluate",
                           "note": "not evaluated"},
        "performance": {"onnxruntime_cpu_threads": 2, "batch": 256,
                        "stamps_per_second": round(throughput), "onnx_bytes": size_bytes},
        "astromorph_version": astromorph_version,
        "licence": ("model: BSD-3-Clause (as astromorph); trained on SDSS public data and Galaxy Zoo "
                    "images, to be acknowledged as in training.terms"),
    }


def export(args):
    """Export ``models/embedding/model.onnx`` (the evaluated graph) and write its card."""
    torch.set_num_threads(_get(args, "threads", 1))
    root = _root(args)
    encoder, state = load_encoder(args)
    pca_path = _common.checkpoint_dir(NAME, root) / "pca.npz"
    metrics_path = _common.report_dir(NAME, root) / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    if pca_path.exists():
        saved = np.load(pca_path)
        pca = {"mean": saved["mean"], "components": saved["components"],
               "stages": bool(saved["stages"]),
               "pca": bool(saved["pca"]) if "pca" in saved else True}
        tta = int(saved["tta"])
    else:
        log.warning("%s missing: fitting the PCA now; run `evaluate` for metrics", pca_path)
        tta = _get(args, "tta", DEFAULT_TTA)
        pca = fit_pca(encoder, load_data(args, trained=state.get("split_source")), tta,
                      n=64 if args.smoke else 4000)
        metrics = None
    deployed = DeployedEmbedding(encoder, pca["mean"], pca["components"], tta,
                                 pca["stages"]).eval()
    path = export_model(deployed, root)
    sha = _common.sha256sum(path)
    if metrics is not None and metrics.get("onnx_sha256") != sha:
        log.warning("exported graph differs from the evaluated one (sha256 %s vs %s); "
                    "run evaluate again", sha, metrics.get("onnx_sha256"))
    throughput = _common.onnx_throughput(path, (3, STAMP_SIZE, STAMP_SIZE), batch=256, threads=2)
    log.info("onnxruntime throughput: %.0f stamps/s (2 threads, batch 256); %.2f MB",
             throughput, path.stat().st_size / 1e6)
    card = _card(metrics, state, throughput, path.stat().st_size, tta, pca["stages"], root,
                 dim=int(pca["components"].shape[1]), pca=pca.get("pca", True))
    card["training"]["architecture"] = architecture(deployed)
    card["single_band_graph"] = _common.single_band_graph(path, size=STAMP_SIZE)
    card_path = _common.write_card(NAME, card, root)
    ids, _ = read_labels(args.data_dir)
    files = [Path(args.data_dir) / "gz1" / "images" / f"{i}.jpeg" for i in ids[:16]]
    x = preprocess_colour_cutout(load_jpegs(files))
    diff = _common.check_parity(deployed, x, str(card_path.parent), atol=1e-5, rtol=1e-4)
    _common.write_parity_reference(
        NAME, deployed, preprocess_colour_cutout(_common.parity_raw_inputs("colour")), path,
        root=root)
    log.info("torch vs astromorph ONNX parity: max abs diff %.2e", diff)
    log.info("wrote %s and %s", path, card_path)
    return card_path
