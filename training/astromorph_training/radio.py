"""Radio galaxy morphology model (``radio-morphology``): FRI / FRII / compact / bent.

Data: the FIRST radio galaxy data set of Griese et al. (2023, Data in Brief
47, 108974), shipped in the PyPI package ``firstgalaxydata`` (install it with
``pip install --no-deps firstgalaxydata``; its HDF5 archives are read
directly, the package itself is never imported). 2,158 images of 300 x 300
pixels at 1.8 arcsec, labels FRI (0), FRII (1), compact (2), bent (3). The
images are FIRST data: "scholarly, educational, and private non-commercial
use" only.

Protocol
--------
* main model: official split, train 1,758 / valid 200 / test 200; the epoch
  with the best validation accuracy (ties: lower validation loss) is kept,
  the softmax temperature is fitted on the validation set, test is reported.
* ``train --cv``: the package's 5-fold cross-validation variant (train 1,405 /
  valid 353 per fold, common test set of 400); each fold is trained, selected
  on its validation fold and reported on the common test set.

Network input: `astromorph.preprocessing.preprocess_dataset_image` (central
128 x 128 pixels at the native 1.8 arcsec, square-root stretch).
Training augments on the full 300 x 300 image (the same function
with ``crop_pixels=300, stretch="linear"``): random rotation and flip
resampled onto the 128 x 128 stamp and a brightness increase (v1.1; v1.0 also
shifted, zoomed, dimmed and added noise), then the square-root stretch; the
identity augmentation reproduces the preprocessing function exactly (checked
at start-up). The loss is class-balanced cross-entropy with label smoothing.
"""
import argparse
import copy
import importlib.util
import json
import logging
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from astromorph.preprocessing._radio import (
    BIN_FACTOR,
    CROP_PIXELS,
    DATASET_IMAGE_PIXELS,
    DATASET_THRESHOLD_SIGMA,
    FIRST_PIXEL_SCALE_ARCSEC,
    RADIO_LABELS,
    STAMP_ANGULAR_SIZE_ARCSEC,
    STAMP_PIXEL_SCALE_ARCSEC,
    STAMP_SIZE,
    STRETCH,
    preprocess_dataset_image,
)

from . import _common
from ._gconv import GroupNet

__all__ = ["add_arguments", "train", "evaluate", "export", "RadioNet", "Calibrated", "load_dataset",
           "architecture", "from_architecture"]

NAME = "radio-morphology"
LOG = logging.getLogger("astromorph_training.radio")
CLASS_NAMES = list(RADIO_LABELS)
#: The v1.1 recipe (shipped): a fourth CNN stage of 256 channels, rotation / flip /
#: brightness-increase augmentation, label smoothing 0.1 and 150 epochs; chosen on the
#: validation split (best 0.905, mean of the last 20 epochs 0.899, against 0.86 / 0.852 for
#: v1.0) and confirmed by 5-fold cross-validation (docs/training.md). The v1.0 recipe is
#: ``--stage4 0 --augment full --label-smoothing 0 --epochs 90``.
DEFAULT_EPOCHS = 150
#: Channels of the fourth (4 x 4 pixel) stage of `RadioNet`; 0 leaves it out (v1.0).
DEFAULT_STAGE4 = 256
#: Channels per orientation of the D4-equivariant network (``--arch d4``): lifting
#: layer, then the stages at 32, 16, 8 and 4 pixels (8 times as many plain channels each).
DEFAULT_D4_WIDTHS = (2, 4, 8, 16, 32)
#: Training augmentation recipe (see `_augment`): "rotflip" (v1.1) or "full" (v1.0).
DEFAULT_AUGMENT = "rotflip"
DEFAULT_LABEL_SMOOTHING = 0.1
#: Mixup strength (Beta(alpha, alpha) mixing weights; 0 = none, as in 1.1).
DEFAULT_MIXUP = 0.0
DEFAULT_CV_EPOCHS = DEFAULT_EPOCHS
#: Version written into the card by `export`.
VERSION = "1.1.0"
#: The augmentation recipes of `_augment`, in words (for the card).
AUGMENTATION_TEXT = {
    "rotflip": "random rotation (any angle) and flip, brightness x U(1, 1.5) clipped at the peak",
    "full": ("random rotation (any angle), flip, shift +-3 stamp pixels, zoom 0.89-1.12, noise "
             "threshold raised by up to one 8-bit level (30 per cent of stamps), gain x "
             "exp(N(0, 0.15)), 5 per cent multiplicative pixel noise"),
}
CV_FOLDS = 5
#: Side of the area-averaged full data-set image the augmentation works on.
FULL_SIZE = DATASET_IMAGE_PIXELS // BIN_FACTOR
CACHE_FILE = "first_galaxy_data.npz"
H5_MAIN = "galaxy_data_h5"
H5_CV = [f"galaxy_data_crossvalid_{k}_h5" for k in range(CV_FOLDS)]
H5_CV_TEST = "galaxy_data_crossvalid_test_h5"
ONNX_THREADS = 2

# one torch thread by default: training shares the 2-core machine (--threads to change)
torch.set_num_threads(1)


# --------------------------------------------------------------------------- paths
def _dirs(args):
    """Paths of a run: cache, checkpoints, model and report folders.

    ``--smoke`` runs write below a temporary root, their cache folder included (never into
    ``models/`` or the checkout's ``training/cache``, which they do not read either: see
    `load_dataset`). Other runs share the checkout's data cache, whatever ``--out-dir``.
    """
    if getattr(args, "smoke", False):
        root = _common.smoke_root(NAME)
        cache = root / "training" / "cache" / NAME
    else:
        root = Path(getattr(args, "out_dir", None) or _common.repo_root())
        cache = _common.repo_root() / "training" / "cache" / NAME
    return {"cache": cache, "root": root,
            "ckpt": root / "training" / "checkpoints" / NAME,
            "model": root / "models" / NAME,
            "report": root / "training" / "reports" / NAME}


#: Options only some steps read -> those steps (the command line refuses them elsewhere).
STEP_OPTIONS = {**dict.fromkeys(("cv", "folds", "batch_size", "lr", "weight_decay", "restart",
                                 "stage4", "stage0", "peak_norm", "arch", "d4_widths",
                                 "label_smoothing", "augment", "mixup"), ("train",)),
                "sources": ("average",), "throughput": ("evaluate",)}
#: Options read only with another's value (the command line refuses them otherwise): the
#: CV folds to train, the widths of the D4 network, the stages of the plain one.
OPTION_NEEDS = {"folds": ("cv",), "d4_widths": (("arch", "d4"),),
                **dict.fromkeys(("stage4", "stage0", "peak_norm"), (("arch", "plain"),))}


def _fold_list(text):
    """``argparse`` type of ``--folds``: comma separated fold numbers 0 to ``CV_FOLDS - 1``."""
    import argparse

    folds = []
    for word in text.split(","):
        try:
            fold = int(word)
        except ValueError:
            fold = None
        if fold is None or not 0 <= fold < CV_FOLDS:
            raise argparse.ArgumentTypeError(
                f"{word.strip()!r} is not a fold number (0 to {CV_FOLDS - 1})")
        folds.append(fold)
    return folds


def add_arguments(parser):
    """Model specific options of ``python -m astromorph_training radio-morphology``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The command line parser to extend.
    """
    group = parser.add_argument_group("radio-morphology")
    group.add_argument("--first-dir", default=None,
                       help="folder with the firstgalaxydata zip/h5 files (default: the installed "
                            "firstgalaxydata package, or DATA_DIR/firstgalaxydata)")
    group.add_argument("--cv", action="store_true",
                       help="train: run the 5-fold cross-validation variant instead of the main model")
    group.add_argument("--folds", type=_fold_list, default=None,
                       help=f"train --cv: comma separated fold numbers, 0 to {CV_FOLDS - 1} "
                            "(default all)")
    group.add_argument("--batch-size", type=_common.positive_int, default=64,
                       help="train: batch size (default %(default)s)")
    group.add_argument("--lr", type=float, default=2e-3,
                       help="train: peak learning rate of the one-cycle AdamW schedule "
                            "(default %(default)s)")
    group.add_argument("--weight-decay", type=float, default=5e-4,
                       help="train: AdamW weight decay (default %(default)s)")
    group.add_argument("--restart", action="store_true",
                       help="train afresh instead of resuming (the previous checkpoints are "
                            "kept as *.bak files)")
    group.add_argument("--throughput", action="store_true",
                       help="evaluate: also time onnxruntime (2 threads, batch 256)")
    group.add_argument("--threads", type=_common.positive_int, default=1,
                       help="torch CPU threads for training (default %(default)s)")
    group.add_argument("--stage4", type=_common.nonnegative_int, default=DEFAULT_STAGE4,
                       help="train, --arch plain: channels of the fourth stage (two 3x3 "
                            "convolutions at 4 x 4 pixels; default %(default)s); 0 = the "
                            "3-stage v1.0 network")
    group.add_argument("--stage0", type=_common.nonnegative_int, default=0,
                       help="train, --arch plain: channels of an extra pair of 3x3 "
                            "convolutions at the stem's 64 x 64 pixels, before the first "
                            "max-pool (default 0: none, v1.1)")
    group.add_argument("--peak-norm", action="store_true",
                       help="train, --arch plain: divide each stamp by its own maximum, as "
                            "the network's first operation (default: off, v1.1)")
    group.add_argument("--arch", choices=("plain", "d4"), default="plain",
                       help="train: network, plain = RadioNet (default), d4 = the rotation- and "
                            "flip-equivariant GroupNet (exported as a plain CNN)")
    group.add_argument("--d4-widths", type=_common.positive_int, nargs="+", default=list(DEFAULT_D4_WIDTHS),
                       help="train --arch d4: channels per orientation of the lifting layer and "
                            "the four stages (default %(default)s)")
    group.add_argument("--label-smoothing", type=float, default=DEFAULT_LABEL_SMOOTHING,
                       help="train: label smoothing of the cross-entropy (default %(default)s)")
    group.add_argument("--augment", choices=sorted(AUGMENTATION_TEXT), default=DEFAULT_AUGMENT,
                       help="train: augmentation recipe (default %(default)s; rotflip = rotation, "
                            "flip and brightness increase only; full = also shifts, zooms, "
                            "dimming and noise, v1.0)")
    group.add_argument("--mixup", type=float, default=DEFAULT_MIXUP, metavar="ALPHA",
                       help="train: mixup of pairs of stamps with Beta(ALPHA, ALPHA) weights "
                            "(default %(default)s: none)")
    group.add_argument("--sources", nargs="+", default=None, metavar="DIR",
                       help="average: --out-dir folders of runs trained with different seeds; "
                            "their networks (main split and every CV fold all of them have) "
                            "are combined into one whose logits are the members' mean")


# --------------------------------------------------------------------------- data
def _first_dir(args):
    if getattr(args, "first_dir", None):
        folder = Path(args.first_dir)
        if not any(folder.glob("galaxy_data*")):  # not a folder, or none of the archives
            raise SystemExit(f"--first-dir {str(folder)!r} holds no firstgalaxydata archive "
                             "(galaxy_data*.zip / .h5): pass the folder of the firstgalaxydata "
                             "package (pip install --no-deps firstgalaxydata), or leave "
                             "--first-dir out to use the installed package")
        return folder
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None and (Path(data_dir) / "firstgalaxydata").is_dir():
        return Path(data_dir) / "firstgalaxydata"
    spec = importlib.util.find_spec("firstgalaxydata")
    if spec is None or not spec.submodule_search_locations:
        where = f"no {Path(data_dir) / 'firstgalaxydata'} and " if data_dir is not None else ""
        raise SystemExit(f"the FIRST radio galaxy data set is missing ({where}the "
                         "firstgalaxydata package is not installed): pip install --no-deps "
                         "firstgalaxydata, or pass --first-dir DIR")
    return Path(list(spec.submodule_search_locations)[0])


def _open_h5(folder, stem, tmp):
    """Path of ``stem.h5`` in ``folder``, extracting ``stem.zip`` into ``tmp`` if needed."""
    h5 = folder / f"{stem}.h5"
    if h5.exists():
        return h5
    try:
        with zipfile.ZipFile(folder / f"{stem}.zip") as archive:
            archive.extract(f"{stem}.h5", tmp)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
        raise SystemExit(f"{folder / f'{stem}.zip'}: cannot extract {stem}.h5 "
                         f"({type(exc).__name__}: {exc}); reinstall firstgalaxydata "
                         "(pip install --force-reinstall --no-deps firstgalaxydata)") from exc
    return Path(tmp) / f"{stem}.h5"


def _read_h5(path):
    import h5py

    try:
        return _h5_rows(h5py, path)
    except (OSError, KeyError, ValueError) as exc:  # h5py: a corrupt file or another layout
        raise SystemExit(f"{path}: not a FIRST data set HDF5 file ({type(exc).__name__}: "
                         f"{exc}); reinstall firstgalaxydata") from exc


def _h5_rows(h5py, path):
    rows = []
    with h5py.File(path, "r") as f:
        for key in f.keys():
            img = f[key + "/Img"]
            rows.append({
                "img": img[()], "ra": float(img.attrs["RA"]), "dec": float(img.attrs["DEC"]),
                "source": str(img.attrs["Source"]),
                "label": int(f[key + "/Label_literature"][()]),
                "split": f[key + "/Split_literature"].asstr()[()],
            })
    return rows


def _build_cache(folder, path):
    """Read the HDF5 files of the package into one compressed npz cache."""
    LOG.info("building the FIRST data cache from %s", folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        main = _read_h5(_open_h5(folder, H5_MAIN, tmp))
        key = {(round(r["ra"], 4), round(r["dec"], 4)): i for i, r in enumerate(main)}
        if len(key) != len(main):
            raise RuntimeError("duplicate coordinates in the FIRST data set")
        n = len(main)
        cv = np.full((CV_FOLDS, n), "", dtype="<U5")  # train / valid / test / ""
        for fold, stem in enumerate(H5_CV + [H5_CV_TEST]):
            h5 = _open_h5(folder, stem, tmp)
            for r in _read_h5(h5):
                i = key[(round(r["ra"], 4), round(r["dec"], 4))]
                if not np.array_equal(r["img"], main[i]["img"]) or r["label"] != main[i]["label"]:
                    raise RuntimeError(f"{stem}: image or label differs from the main file")
                if fold < CV_FOLDS:
                    cv[fold, i] = r["split"]
                else:
                    cv[:, i] = "test"
            if h5.parent == Path(tmp):
                h5.unlink()
    order = np.lexsort(([r["dec"] for r in main], [r["ra"] for r in main]))
    arrays = {
        "images": np.stack([main[i]["img"] for i in order]).astype(np.uint8),
        "labels": np.array([main[i]["label"] for i in order], dtype=np.int64),
        "split": np.array([main[i]["split"] for i in order]),
        "ra": np.array([main[i]["ra"] for i in order]),
        "dec": np.array([main[i]["dec"] for i in order]),
        "source": np.array([main[i]["source"] for i in order]),
        "cv_split": cv[:, order],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with _common.atomic_path(path) as tmp:  # whole or absent: never truncated
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return arrays


def _smoke_dataset(folder, per_split=8):
    """A handful of images from the PNG archive (fast, for --smoke: no cache is read or built)."""
    import io
    from PIL import Image

    names = {"FRI": 0, "FRII": 1, "Compact": 2, "Bent": 3}
    rows = []
    with zipfile.ZipFile(folder / "galaxy_data.zip") as archive:
        members = sorted(m for m in archive.namelist() if m.endswith(".png"))
        for split in ("train", "valid", "test"):
            chosen = [m for m in members if m.split("/")[1] == split]
            picks = []
            for cls in names:  # a couple per class
                picks += [m for m in chosen if m.split("/")[2] == cls][:max(per_split // 4, 1)]
            for m in picks:
                img = np.array(Image.open(io.BytesIO(archive.read(m))).convert("L"))
                rows.append((img, names[m.split("/")[2]], split))
    n = len(rows)
    cv = np.array([[s for _, _, s in rows]] * CV_FOLDS)
    return {"images": np.stack([r[0] for r in rows]), "labels": np.array([r[1] for r in rows]),
            "split": np.array([r[2] for r in rows]), "ra": np.zeros(n), "dec": np.zeros(n),
            "source": np.array([""] * n), "cv_split": cv}


def load_dataset(args):
    """Load the FIRST radio galaxy data set (cached in ``training/cache``).

    A ``--smoke`` run reads a few images of the data set's PNG archive instead: it
    neither builds nor reads a cache, so it is the same run whatever the checkout holds.

    Parameters
    ----------
    args : argparse.Namespace
        Command line arguments (``first_dir``, ``data_dir``, ``smoke``).

    Returns
    -------
    dict
        ``images`` uint8 (N, 300, 300), ``labels`` int (N,), ``split`` (N,)
        official split, ``cv_split`` (5, N) split of each cross-validation
        fold ("train", "valid", "test" or "" for unused), ``ra``, ``dec``,
        ``source``.
    """
    if getattr(args, "smoke", False):
        return _smoke_dataset(_first_dir(args))
    path = _dirs(args)["cache"] / CACHE_FILE
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    return _build_cache(_first_dir(args), path)


# --------------------------------------------------------------------------- model
def _cbr(cin, cout, k=3, stride=1):
    """Convolution (no bias), batch normalisation, ReLU."""
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class RadioNet(nn.Module):
    """Small CNN for ``1 x 128 x 128`` radio stamps, returning logits.

    A 5 x 5 stride-2 stem and a max-pool (128 -> 32 pixels), then pairs of
    3 x 3 convolutions with batch normalisation at 32, 16, 8 and (with
    ``stage4``) 4 pixels (32, 64, 128 and ``stage4`` channels), global average
    pooling, dropout and a linear layer: 1.18 M parameters with ``stage4=256``
    (the default, v1.1), 0.29 M without the fourth stage (v1.0).

    Parameters
    ----------
    n_classes : int, optional
        Number of output logits.
    stage4 : int, optional
        Channels of the fourth stage; 0 leaves it out.
    stage0 : int, optional
        Channels of an extra pair of 3 x 3 convolutions at the stem's 64 x 64
        pixels, before the first max-pool; 0 (the default, v1.1) leaves it out.
    peak_norm : bool, optional
        Divide each stamp by its own maximum first (an operation of the graph, so
        every input path gets it): the data-set images are scaled to the brightest
        pixel of the whole 300 x 300 cutout, which for 12 per cent of the train
        images lies outside the 128-pixel window. False (the default, v1.1) leaves
        it out.
    """

    def __init__(self, n_classes=len(RADIO_LABELS), *, stage4=DEFAULT_STAGE4, stage0=0,
                 peak_norm=False):
        super().__init__()
        self.peak_norm = bool(peak_norm)
        layers = [*_cbr(1, 16, 5, 2)]                           # 128 -> 64
        if stage0:  # optional stage at the stem's 64 x 64 pixels (2.6 arcsec)
            layers += [*_cbr(16, stage0), *_cbr(stage0, stage0)]
        layers += [
            nn.MaxPool2d(2),                                    # 32
            *_cbr(stage0 or 16, 32), *_cbr(32, 32), nn.MaxPool2d(2),  # 16
            *_cbr(32, 64), *_cbr(64, 64), nn.MaxPool2d(2),      # 8
            *_cbr(64, 128), *_cbr(128, 128),
        ]
        if stage4:  # optional fourth stage at 4 x 4 pixels
            layers += [nn.MaxPool2d(2), *_cbr(128, stage4), *_cbr(stage4, stage4)]
        self.arch = {"stage4": int(stage4)}
        if stage0:  # checkpoints without the key are stage0 = 0
            self.arch["stage0"] = int(stage0)
        if peak_norm:  # checkpoints without the key have none
            self.arch["peak_norm"] = True
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(stage4 or 128, n_classes)

    def forward(self, x):
        if self.peak_norm:  # each stamp over its own maximum (a blank one stays 0)
            x = x / x.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


class Calibrated(nn.Module):
    """``softmax(logits / temperature)`` of a logit network: the exported graph.

    Parameters
    ----------
    net : torch.nn.Module
        Network returning logits.
    temperature : float
        Temperature fitted on the validation split.
    """

    def __init__(self, net, temperature):
        super().__init__()
        self.net = net
        self.register_buffer("inv_t", torch.tensor(1.0 / float(temperature)))

    def forward(self, x):
        return torch.softmax(self.net(x) * self.inv_t, dim=1)


class LogitMean(nn.Module):
    """Mean of the logits of several networks: an ensemble exported as one graph.

    Parameters
    ----------
    nets : list of torch.nn.Module
        Member networks returning logits (e.g. the same recipe from different seeds).
    """

    def __init__(self, nets):
        super().__init__()
        self.members = nn.ModuleList(nets)

    def forward(self, x):
        return torch.stack([m(x) for m in self.members]).mean(0)


def architecture(deployed):
    """What `from_architecture` needs to rebuild ``deployed`` (recorded in the card).

    Parameters
    ----------
    deployed : Calibrated
        The exported module, around one network or a `LogitMean` of several.

    Returns
    -------
    dict
        ``network`` (``"RadioNet"``, or ``"GroupNet"``, the equivariant network,
        exported folded into plain layers), its ``options`` and ``members``.
    """
    members = deployed.net.members if isinstance(deployed.net, LogitMean) else [deployed.net]
    options = dict(members[0].arch)
    return {"network": "GroupNet" if options.get("kind") == "d4" else "RadioNet",
            "options": options, "members": len(members)}


def from_architecture(arch):
    """A `Calibrated` network of the recorded architecture, with untrained weights.

    Parameters
    ----------
    arch : dict
        As returned by `architecture` (``training.architecture`` in the card).
    """
    nets = [_plain(_make_net(arch["options"]).eval()) for _ in range(arch["members"])]
    return _calibrated(nets[0] if len(nets) == 1 else LogitMean(nets).eval(), 1.0)


def _calibrated(net, temperature):
    return Calibrated(net, temperature).eval()


def _make_net(arch=None):
    """`RadioNet` or, for ``arch["kind"] == "d4"``, the equivariant `GroupNet`."""
    arch = dict(arch or {"stage4": 0})  # v1.0 checkpoints carry no "arch"
    if arch.pop("kind", "plain") == "d4":
        return GroupNet(len(CLASS_NAMES), **arch)
    return RadioNet(len(CLASS_NAMES), **arch)


def _plain(net):
    """The network as exported: a `GroupNet` folded into plain layers."""
    if isinstance(net, LogitMean):
        return LogitMean([_plain(m) for m in net.members]).eval()
    return net.to_plain() if isinstance(net, GroupNet) else net


# --------------------------------------------------------------------------- augmentation
def _full_field(images):
    """Full data-set images, area-averaged like the stamps, (N, 1, F, F), linear [0, 1]."""
    return preprocess_dataset_image(images, crop_pixels=DATASET_IMAGE_PIXELS,
                                    bin_factor=BIN_FACTOR, stretch="linear")


def _stamp_from_full(full, theta):
    """Resample full fields onto the network grid with affine ``theta`` and stretch."""
    grid = torch.nn.functional.affine_grid(theta, (len(full), 1, STAMP_SIZE, STAMP_SIZE),
                                           align_corners=False)
    out = torch.nn.functional.grid_sample(full, grid, mode="bilinear", padding_mode="zeros",
                                          align_corners=False)
    return torch.sqrt(out.clamp(0.0, 1.0)) if STRETCH == "sqrt" else out.clamp(0.0, 1.0)


def _identity_theta(n):
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = STAMP_SIZE / FULL_SIZE
    return theta


def _rotation_theta(angle, flip, scale, shift=None):
    """Affine grids (N, 2, 3) for `_stamp_from_full`: rotate, mirror, scale, shift."""
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.zeros(len(angle), 2, 3)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    if shift is not None:
        theta[:, :, 2] = shift
    return theta


def _augment(full, gen, mode="full"):
    """Random augmentation of a batch of full fields, returned as network stamps.

    ``mode="full"`` (the v1.0 recipe): rotation, flip, shift (+-3 px),
    zoom (+-12 per cent), noise threshold, gain (both ways) and pixel noise.
    ``mode="rotflip"`` (v1.1): rotation, flip and a brightness *increase* only (gain
    1 to 1.5, clipped at the peak), the set Maslej-Kresnakova et al. (2021,
    MNRAS 505, 1464) found best on FIRST; shifts, zooms and dimming hurt them.
    """
    if mode not in AUGMENTATION_TEXT:
        raise ValueError(f"unknown augmentation mode {mode!r}")
    n = len(full)
    angle = torch.rand(n, generator=gen) * (2 * np.pi)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    if mode == "rotflip":
        gain = 1.0 + 0.5 * torch.rand(n, 1, 1, 1, generator=gen)
        theta = _rotation_theta(angle, flip, _identity_theta(n)[:, 0, 0])
        return _stamp_from_full((full * gain).clamp(0.0, 1.0), theta)
    zoom = torch.exp((torch.rand(n, generator=gen) * 2 - 1) * np.log(1.12))
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (3.0 * 2 / FULL_SIZE)  # +-3 px
    theta = _rotation_theta(angle, flip, STAMP_SIZE / FULL_SIZE / zoom, shift)
    x = full
    # a slightly higher noise threshold (up to one 8-bit level, as for a noisier
    # map; more would erase the faint lobes, which are a few levels above 0)
    # and a brighter/fainter peak
    floor = torch.where(torch.rand(n, 1, 1, 1, generator=gen) < 0.3,
                        torch.rand(n, 1, 1, 1, generator=gen) / 255.0, torch.zeros(n, 1, 1, 1))
    x = (x - floor).clamp_min(0.0) / (1.0 - floor)
    gain = torch.exp(torch.randn(n, 1, 1, 1, generator=gen) * 0.15)
    noise = 1.0 + 0.05 * torch.randn(x.shape, generator=gen)
    x = (x * gain * noise * (x > 0)).clamp(0.0, 1.0)
    return _stamp_from_full(x, theta)


# --------------------------------------------------------------------------- training loop
def _logits(net, x, batch=256):
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(net(torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(CLASS_NAMES)), np.float32)


def _recompute_bn(net, x, batch=128):
    """Set BatchNorm running statistics to exact averages over ``x`` ("precise BN").

    The exponential running averages kept during training lag behind the
    weights (and the EMA weights never had their own), which matters for these
    sparse, high dynamic range images; the statistics are therefore measured
    anew on fixed un-augmented training stamps before every validation.
    """
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            net(x[i:i + batch])
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    net.eval()


def _nll(logits, labels):
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def _beta(gen, alpha, n):
    """``n`` draws of Beta(alpha, alpha) (float32 tensor), reproducible from ``gen``."""
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=gen))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, n).astype(np.float32))


def _mixup_loss(logits, y_a, y_b, lam, weights, label_smoothing):
    """Class-weighted, label-smoothed cross-entropy of stamps mixed ``lam * a + (1 - lam) * b``.

    The two per-stamp losses are combined with the mixing weights and normalised, as
    ``cross_entropy(weight=...)`` does, by the correspondingly mixed class weights; with
    ``lam = 1`` this is ``cross_entropy(logits, y_a, weight=weights)``.
    """
    ce_a, ce_b = (torch.nn.functional.cross_entropy(logits, t, weight=weights, reduction="none",
                                                    label_smoothing=label_smoothing)
                  for t in (y_a, y_b))
    norm = lam * weights[y_a] + (1 - lam) * weights[y_b]
    return (lam * ce_a + (1 - lam) * ce_b).sum() / norm.sum()


def _fit(train_x, train_y, valid_x, valid_y, ckpt_dir, *, epochs, seed, batch_size, lr,
         weight_decay, restart=False, keep=True, label="", arch=None, augment=DEFAULT_AUGMENT,
         label_smoothing=DEFAULT_LABEL_SMOOTHING, mixup=DEFAULT_MIXUP):
    """Train one network with per-epoch checkpoints and resume; return the best state.

    ``mixup`` > 0 trains on convex combinations of pairs of augmented stamps of a batch,
    ``lam * a + (1 - lam) * b`` with ``lam ~ Beta(mixup, mixup)`` per stamp, and the
    same combination of the two losses (Zhang et al. 2018). ``restart`` trains afresh
    over ``last.pt`` and ``best.pt``, renamed aside unless not ``keep``
    (`_common.resume_checkpoint`).
    """
    _common.set_seed(seed)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    full = torch.from_numpy(_full_field(train_x))
    valid_in = preprocess_dataset_image(valid_x)
    # the identity augmentation must reproduce the shipped preprocessing exactly
    # (on one thread: torch's multi-threaded grid_sample rounds differently, ~1e-4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    probe = _stamp_from_full(torch.from_numpy(_full_field(valid_x[:4])),
                             _identity_theta(min(4, len(valid_x))))
    torch.set_num_threads(threads)
    # compared before the square root, which magnifies float32 rounding of the
    # sampling grid next to empty (zero) pixels
    diff = float(np.abs(probe.numpy() ** 2 - valid_in[:4] ** 2).max()) if len(valid_x) else 0.0
    if diff > 1e-5:
        raise RuntimeError(f"augmentation identity differs from preprocess_dataset_image by {diff}")
    y = torch.from_numpy(np.asarray(train_y, dtype=np.int64))
    bn_rng = np.random.default_rng(seed)
    bn_stamps = torch.from_numpy(preprocess_dataset_image(
        train_x[np.sort(bn_rng.permutation(len(train_x))[:768])]))
    counts = np.bincount(train_y, minlength=len(CLASS_NAMES)).astype(float)
    weights = torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)

    net = _make_net(arch)
    ema = copy.deepcopy(net)
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(full) / batch_size)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    state = {"epoch": 0, "history": [], "best": None}
    recipe = {"seed": str(seed), "batch_size": str(batch_size), "lr": str(lr),
              "weight_decay": str(weight_decay), "arch": json.dumps(arch, sort_keys=True),
              "augment": str(augment), "label_smoothing": str(label_smoothing),
              "mixup": str(mixup)}
    ck = _common.resume_checkpoint(last, model=NAME, restart=restart, keep=keep, also=[best_path])
    if ck is not None:
        _common.check_resume(last, ck.get("recipe", {}), argparse.Namespace(**recipe),
                             tuple(recipe), trained=ck["state"]["epoch"], epochs=epochs)
        net.load_state_dict(ck["net"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        replan = ck.get("epochs") != epochs
        # another --epochs: the one-cycle schedule is re-planned for the new total from the
        # step reached (as morphology's cosine schedule is), instead of training afresh
        sched.load_state_dict({**ck["sched"], "total_steps": sched.total_steps,
                               "_schedule_phases": sched._schedule_phases} if replan
                              else ck["sched"])
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["torch_rng"])
        state = ck["state"]
        LOG.info("%sresuming from epoch %d", label, state["epoch"])
        if replan:
            sched.last_epoch -= 1
            sched.step()  # the next step's learning rate (and momentum) on the new schedule
            state.setdefault("replanned", []).append(
                {"at_epoch": state["epoch"], "epochs_before": ck.get("epochs"), "epochs": epochs})
            LOG.warning("%sthe checkpoint was planned for %s epochs, now %d: the learning-rate "
                        "schedule follows the new total from here (a run of %d epochs from the "
                        "start gives similar, not identical, weights)", label, ck.get("epochs"),
                        epochs, epochs)
    decay = 0.98
    while state["epoch"] < epochs:
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(len(full), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(full), batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) < 2:
                continue
            xb = _augment(full[idx], gen, augment)
            if mixup > 0:
                lam = _beta(gen, mixup, len(idx))
                pair = torch.randperm(len(idx), generator=gen)
                xb = lam[:, None, None, None] * xb + (1 - lam[:, None, None, None]) * xb[pair]
                loss = _mixup_loss(net(xb), y[idx], y[idx][pair], lam, weights, label_smoothing)
            else:
                loss = torch.nn.functional.cross_entropy(net(xb), y[idx], weight=weights,
                                                         label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                d = min(decay, (1 + sched.last_epoch) / (10 + sched.last_epoch))
                for pe, pn in zip(ema.parameters(), net.parameters()):
                    pe.mul_(d).add_(pn.detach(), alpha=1 - d)
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        state["epoch"] += 1
        _recompute_bn(ema, bn_stamps)
        logits = _logits(ema, valid_in)
        acc = float((logits.argmax(1) == valid_y).mean()) if len(valid_y) else 0.0
        vloss = _nll(logits, valid_y) if len(valid_y) else 0.0
        rec = {"epoch": state["epoch"], "train_loss": total / max(seen, 1), "valid_acc": acc,
               "valid_nll": vloss, "lr": sched.get_last_lr()[0], "seconds": time.perf_counter() - t0}
        state["history"].append(rec)
        best = state["best"]
        if best is None or (acc, -vloss) > (best["valid_acc"], -best["valid_nll"]):
            state["best"] = rec
            _common.save_checkpoint({"net": ema.state_dict(), "record": rec, "arch": net.arch},
                                    best_path)
        LOG.info("%sepoch %d/%d loss %.4f valid acc %.3f nll %.3f (best %d: %.3f) %.1fs", label,
                 rec["epoch"], epochs, rec["train_loss"], acc, vloss, state["best"]["epoch"],
                 state["best"]["valid_acc"], rec["seconds"])
        _common.save_checkpoint({"net": net.state_dict(), "ema": ema.state_dict(),
                                 "opt": opt.state_dict(), "sched": sched.state_dict(),
                                 "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                                 "state": state, "epochs": epochs, "recipe": recipe}, last,
                                model=NAME)
    _common.write_text(ckpt_dir / "history.json", json.dumps(state, indent=1))
    return state


def _network(ck):
    """The network of a checkpoint entry (``net`` state dict and ``arch``), in eval mode."""
    net = _make_net(ck.get("arch"))
    net.load_state_dict(ck["net"])
    return net.eval()


def _load_best(ckpt_dir):
    """The selected network of a run folder (a `LogitMean` for `average`'s ensembles)."""
    ck = _common.load_checkpoint(ckpt_dir / "best.pt")
    if "ensemble" in ck:
        return LogitMean([_network(member) for member in ck["ensemble"]]).eval(), ck["record"]
    return _network(ck), ck["record"]


def _arch_option(args):
    if getattr(args, "arch", "plain") == "d4":
        return {"kind": "d4", "widths": list(getattr(args, "d4_widths", DEFAULT_D4_WIDTHS))}
    arch = {"stage4": getattr(args, "stage4", DEFAULT_STAGE4)}
    if getattr(args, "stage0", 0):
        arch["stage0"] = args.stage0
    if getattr(args, "peak_norm", False):
        arch["peak_norm"] = True
    return arch


def train(args):
    """Train the main model (official split) or, with ``--cv``, the 5 folds.

    Parameters
    ----------
    args : argparse.Namespace
        Command line arguments (see `add_arguments`).

    Returns
    -------
    dict
        Training state (history and best epoch), per fold for ``--cv``.
    """
    if getattr(args, "folds", None) and not getattr(args, "cv", False):
        # the command line refuses this (OPTION_NEEDS, exit status 2); for callers of train
        raise SystemExit(f"radio-morphology train: --folds {','.join(map(str, args.folds))} "
                         "chooses cross-validation folds: add --cv (or drop --folds to train "
                         "the main model)")
    torch.set_num_threads(max(1, getattr(args, "threads", 1)))
    dirs = _dirs(args)
    LOG.info("checkpoints in %s", dirs["ckpt"])
    data = load_dataset(args)
    smoke = getattr(args, "smoke", False)
    cv = getattr(args, "cv", False)
    epochs = args.epochs or (1 if smoke else (DEFAULT_CV_EPOCHS if cv else DEFAULT_EPOCHS))
    kw = dict(epochs=epochs, seed=args.seed, batch_size=getattr(args, "batch_size", 64),
              lr=getattr(args, "lr", 2e-3), weight_decay=getattr(args, "weight_decay", 5e-4),
              restart=getattr(args, "restart", False) or smoke, keep=not smoke,
              arch=_arch_option(args),
              augment=getattr(args, "augment", DEFAULT_AUGMENT),
              label_smoothing=getattr(args, "label_smoothing", DEFAULT_LABEL_SMOOTHING),
              mixup=getattr(args, "mixup", DEFAULT_MIXUP))
    imgs, labels = data["images"], data["labels"]
    if not cv:
        tr, va = data["split"] == "train", data["split"] == "valid"
        t0 = time.perf_counter()
        state = _fit(imgs[tr], labels[tr], imgs[va], labels[va], dirs["ckpt"], **kw)
        state["wall_seconds_this_run"] = time.perf_counter() - t0
        _common.write_text(dirs["ckpt"] / "train_summary.json", json.dumps(
            {"epochs": epochs, "best": state["best"], "seed": args.seed, "arch": kw["arch"],
             "augment": kw["augment"], "label_smoothing": kw["label_smoothing"], "mixup": kw["mixup"],
             "threads": torch.get_num_threads(),
             "train_seconds": sum(r["seconds"] for r in state["history"]),
             **({"replanned": state["replanned"]} if "replanned" in state else {})}, indent=1))
        return state
    folds = getattr(args, "folds", None) or range(CV_FOLDS)
    states = {}
    for k in folds:
        split = data["cv_split"][k]
        tr, va = split == "train", split == "valid"
        states[k] = _fit(imgs[tr], labels[tr], imgs[va], labels[va], dirs["ckpt"] / f"cv{k}",
                         label=f"[fold {k}] ", **kw)
        _cv_fold_report(args, data, k, dirs)
    return states


#: train_summary.json entries that define a recipe: `average`'s members must share them.
RECIPE_KEYS = ("epochs", "arch", "augment", "label_smoothing", "mixup")


def _run_dirs(folder):
    return _dirs(argparse.Namespace(out_dir=folder, smoke=False))


def average(args):
    """Combine networks trained with different seeds into one logit-averaging ensemble.

    ``--sources DIR [DIR ...]`` are ``--out-dir`` folders of ``train`` runs of one recipe
    (e.g. ``--seed 0`` and ``--seed 1``). For the main split and for every
    cross-validation fold that all sources have, this run's ``best.pt`` becomes a
    `LogitMean` of their selected networks (its validation accuracy recorded); each fold
    is then exported and scored on the common CV test set as ``train --cv`` does, so
    `evaluate` and the card report the ensemble's cross-validation. ``export`` and
    ``evaluate`` treat the ensemble like one network (one graph, the members' summed
    cost).

    Parameters
    ----------
    args : argparse.Namespace
        Command line arguments.

    Returns
    -------
    dict or None
        Cross-validation summary of the ensemble (None without CV folds).
    """
    sources = [Path(s) for s in (getattr(args, "sources", None) or [])]
    if len(sources) < 2:
        raise SystemExit("average needs --sources DIR DIR [...]: run folders of trainings "
                         "with different seeds")
    dirs = _dirs(args)
    src_ckpts = [_run_dirs(folder)["ckpt"] for folder in sources]
    if any(c.resolve() == dirs["ckpt"].resolve() for c in src_ckpts):
        raise SystemExit("average: --out-dir must differ from every source folder")
    summaries = None
    if all((c / "train_summary.json").exists() for c in src_ckpts):  # main-split runs
        summaries = [json.loads((c / "train_summary.json").read_text()) for c in src_ckpts]
        recipes = [{key: m.get(key) for key in RECIPE_KEYS} for m in summaries]
        if any(r != recipes[0] for r in recipes[1:]):
            raise SystemExit(f"average: the sources were trained with different recipes: {recipes}")
    data = load_dataset(args)
    parts = [("", data["split"])] + [(f"cv{k}", data["cv_split"][k]) for k in range(CV_FOLDS)]
    done = []
    for sub, split in parts:
        paths = [c / sub / "best.pt" for c in src_ckpts]
        if not all(path.exists() for path in paths):
            continue
        cks = [_common.load_checkpoint(path) for path in paths]
        if any("ensemble" in ck for ck in cks):
            raise SystemExit("average: the sources must be single networks, not ensembles")
        if len({json.dumps(ck.get("arch"), sort_keys=True) for ck in cks}) > 1:
            raise SystemExit(f"average: the {sub or 'main split'} networks differ in architecture: "
                             + "; ".join(str(ck.get("arch")) for ck in cks))
        va = split == "valid"
        net = LogitMean([_network(ck) for ck in cks]).eval()
        logits = _logits(net, preprocess_dataset_image(data["images"][va]))
        labels = data["labels"][va]
        record = {"epoch": [ck["record"]["epoch"] for ck in cks],
                  "valid_acc": float((logits.argmax(1) == labels).mean()),
                  "valid_nll": _nll(logits, labels),
                  "member_valid_acc": [ck["record"]["valid_acc"] for ck in cks]}
        out = dirs["ckpt"] / sub
        out.mkdir(parents=True, exist_ok=True)
        _common.save_checkpoint({"ensemble": [{"net": ck["net"], "arch": ck.get("arch")}
                                              for ck in cks],
                                 "record": record, "sources": [str(folder) for folder in sources]},
                                out / "best.pt")
        LOG.info("%s: %d networks, validation accuracy %.4f (members %s)", sub or "main split",
                 len(cks), record["valid_acc"],
                 ", ".join(f"{a:.4f}" for a in record["member_valid_acc"]))
        if sub:
            _cv_fold_report(args, data, int(sub[2:]), dirs)
        elif summaries is not None:
            summary = {key: summaries[0][key] for key in RECIPE_KEYS if key in summaries[0]}
            summary["members"] = [{"seed": m.get("seed"), "threads": m.get("threads", 1),
                                   "best_epoch": m["best"]["epoch"],
                                   "train_seconds": m.get("train_seconds")} for m in summaries]
            summary["train_seconds"] = sum(m.get("train_seconds") or 0.0 for m in summaries)
            _common.write_text(out / "train_summary.json", json.dumps(summary, indent=1))
        done.append(sub or "main")
    if not done:
        raise SystemExit("average: no main-split or CV-fold checkpoint common to all sources")
    folds_done = [int(sub[2:]) for sub in done if sub.startswith("cv")]
    stale = [k for k in range(CV_FOLDS) if k not in folds_done
             and (dirs["ckpt"] / f"cv{k}" / "result.json").exists()]
    if stale:
        LOG.warning("ignoring folds %s of %s: not common to these sources", stale, dirs["ckpt"])
    cv = _cv_summary(dirs, folds_done) if folds_done else None
    if cv is not None:
        _common.write_text(dirs["ckpt"] / "cv_summary.json", json.dumps(cv, indent=1))
        LOG.info("CV test accuracy of the ensemble over %d folds: %.4f +- %.4f (%s)", cv["n_folds"],
                 cv["accuracy"]["mean"], cv["accuracy"]["std"],
                 ", ".join(f"{f['accuracy']:.4f}" for f in cv["folds"]))
    return cv


# --------------------------------------------------------------------------- calibration / metrics
def _report(probs, labels, temperature):
    """Classification report of calibrated ``probs`` plus the ECE before calibration."""
    rep = _common.classification_report(probs, labels, CLASS_NAMES)
    rep["ece_uncalibrated"] = _common.expected_calibration_error(
        _uncalibrated(probs, temperature), labels)
    return rep


def _onnx_session(path, threads=ONNX_THREADS):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _onnx_probs(path, x, batch=256):
    sess = _onnx_session(path)
    out = [sess.run(["probabilities"], {"input": x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(out)


def _uncalibrated(probs, temperature):
    """Recover softmax(logits) from softmax(logits / T): softmax(T * log p)."""
    z = temperature * np.log(np.clip(probs, 1e-30, 1.0))
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _export_onnx(module, path):
    example = torch.zeros(1, 1, STAMP_SIZE, STAMP_SIZE)
    return _common.export_onnx(module, example, path, input_name="input",
                               output_names=["probabilities"], opset=17)


def _calibrate_and_export(net, valid_x, valid_y, path):
    """Fit T on the validation logits, export softmax(logits / T) to ``path``."""
    logits = _logits(net, preprocess_dataset_image(valid_x))
    temperature = _common.fit_temperature(logits, valid_y) if len(valid_y) > 1 else 1.0
    _export_onnx(_calibrated(_plain(net), temperature), path)
    return temperature


def _cv_fold_report(args, data, k, dirs):
    """Export fold ``k`` to ONNX (T fitted on its validation fold) and score the CV test set."""
    fold_dir = dirs["ckpt"] / f"cv{k}"
    net, record = _load_best(fold_dir)
    split = data["cv_split"][k]
    va, te = split == "valid", split == "test"
    temperature = _calibrate_and_export(net, data["images"][va], data["labels"][va],
                                        fold_dir / "model.onnx")
    probs = _onnx_probs(fold_dir / "model.onnx", preprocess_dataset_image(data["images"][te]))
    rep = _report(probs, data["labels"][te], temperature)
    rep.update({"fold": k, "temperature": temperature, "best_epoch": record["epoch"],
                "valid_accuracy": record["valid_acc"]})
    _common.write_text(fold_dir / "result.json", json.dumps(rep, indent=1))
    LOG.info("[fold %d] CV test accuracy %.4f macro recall %.4f ECE %.4f", k, rep["accuracy"],
             rep["macro_recall"], rep["ece"])
    return rep


# --------------------------------------------------------------------------- export
def _stamp_text():
    """How the network stamp is cut from a data-set image, in words."""
    binning = ("" if BIN_FACTOR == 1 else
               f", {BIN_FACTOR} x {BIN_FACTOR} area-average to {STAMP_SIZE} x {STAMP_SIZE}")
    return (f"central {CROP_PIXELS} x {CROP_PIXELS} pixels ({STAMP_ANGULAR_SIZE_ARCSEC / 60:.2f} "
            f"arcmin at {STAMP_PIXEL_SCALE_ARCSEC:g} arcsec/pixel){binning}")


def _ensemble_command(n_members, *, cv=False, threads=None):
    """The commands that rebuild an `average` ensemble of ``n_members`` seeds."""
    base = "python -m astromorph_training radio-morphology"
    runs = []
    for seed in range(n_members):
        t = (threads or [1] * n_members)[seed]
        runs.append(f"{base} train{' --cv' if cv else ''} --seed {seed}"
                    f"{f' --threads {t}' if t != 1 else ''} --out-dir runs/seed{seed}")
    return "; ".join(runs + [f"{base} average --sources "
                             + " ".join(f"runs/seed{seed}" for seed in range(n_members))])


def _train_options(record):
    """The ``train`` options (those that differ from the defaults) that produced ``record``
    (the run's ``train_summary.json`` as `export` reads it), for the card's command."""
    opts = []
    if record.get("seed", 0) != 0:
        opts.append(f"--seed {record['seed']}")
    if record.get("epochs") not in (None, DEFAULT_EPOCHS):
        opts.append(f"--epochs {record['epochs']}")
    arch = record.get("arch") or {}
    if arch.get("kind") == "d4":
        opts.append("--arch d4")
        if list(arch.get("widths", DEFAULT_D4_WIDTHS)) != list(DEFAULT_D4_WIDTHS):
            opts.append("--d4-widths " + " ".join(map(str, arch["widths"])))
    else:
        if arch.get("stage4", DEFAULT_STAGE4) != DEFAULT_STAGE4:
            opts.append(f"--stage4 {arch['stage4']}")
        if arch.get("stage0"):
            opts.append(f"--stage0 {arch['stage0']}")
        if arch.get("peak_norm"):
            opts.append("--peak-norm")
    for key, default in (("augment", DEFAULT_AUGMENT), ("label_smoothing", DEFAULT_LABEL_SMOOTHING),
                         ("mixup", DEFAULT_MIXUP)):
        if record.get(key, default) != default:
            opts.append(f"--{key.replace('_', '-')} {record[key]}")
    if record.get("threads", 1) != 1:
        opts.append(f"--threads {record['threads']}")
    return "".join(" " + o for o in opts)


def _network_text(arch):
    if arch.get("kind") == "d4":
        return ("GroupNet: D4 (rotation and flip) equivariant CNN, channels per orientation "
                f"{'/'.join(map(str, arch['widths']))}, exported folded into plain convolutions")
    text = f"RadioNet, fourth stage {arch.get('stage4', 0)} channels"
    text += f", 64-pixel stage {arch['stage0']} channels" if arch.get("stage0") else ""
    return text + (", each stamp divided by its maximum" if arch.get("peak_norm") else "")


def _card(temperature, record, metrics, smoke, n_params):
    members = record.get("members")  # an `average` ensemble
    return {
        "name": NAME,
        "version": VERSION,
        "task": "classification",
        "summary": "Radio galaxy morphology (FRI / FRII / compact / bent) from FIRST 1.4 GHz images.",
        "description": (
            (f"Small CNN ({n_params / 1e6:.2f} M parameters)" if not members else
             f"Mean of the logits of {len(members)} small CNNs ({n_params / 1e6:.2f} M "
             "parameters in all), one recipe trained from seeds "
             + ", ".join(str(m["seed"]) for m in members))
            + " trained on the FIRST radio galaxy data set of Griese et al. "
            "(2023): 300 x 300 pixel VLA FIRST cutouts at 1.8 arcsec/pixel, noise-thresholded at 3 sigma "
            "and scaled to 8 bits, labelled FRI, FRII, compact or bent from six literature catalogues "
            "(MiraBest, CoNFIG, FRICAT, FRIICAT, FR0CAT, Proctor 2011 WAT/NAT). The network sees the "
            f"{_stamp_text()}. Inputs are FIRST-like images: "
            "centred on the radio source, 1.4 GHz, about 5 arcsec resolution, in Jy/beam (FITS path) or "
            f"already in the data-set 8-bit form. Sources larger than about "
            f"{STAMP_ANGULAR_SIZE_ARCSEC / 60:.1f} arcmin, images with very "
            "different resolution or sensitivity, and fields dominated by an unrelated bright source are "
            "outside the training distribution; astromorph flags OUT_OF_DISTRIBUTION an image "
            "with more than 15 per cent of the network input above zero (a source on a "
            "background offset from zero; at most 12.8 per cent in the training images). "
            "Probabilities are calibrated by a temperature fitted "
            "on the validation split; the training data have class frequencies 22/47/17/14 per cent "
            "but the loss was class-balanced, so the probabilities correspond to equal class priors. "
            "Bent sources are the hardest class (mostly confused with FRI): see the test-split "
            "error gallery in the report folder."),
        "column_prefix": "radio",
        "input": {
            "name": "input",
            "shape": [1, STAMP_SIZE, STAMP_SIZE],
            "dtype": "float32",
            "channels": ["FIRST 1.4 GHz surface brightness (data-set 8-bit scale, square-root stretch)"],
            "single_band": "replicate",
            "preprocessing": "astromorph.preprocessing.preprocess_dataset_image",
            "preprocessing_options": {"crop_pixels": CROP_PIXELS, "bin_factor": BIN_FACTOR,
                                      "stretch": STRETCH},
            "fits_preprocessing": "astromorph.preprocessing.preprocess_radio_image",
            "fits_preprocessing_options": {"threshold_sigma": DATASET_THRESHOLD_SIGMA,
                                           "rms": "sigma-clipped (3 sigma, about the median) on the "
                                                  "300 x 300 cutout unless given",
                                           "quantize": True},
            "angular_size": {"kind": "fixed", "pixel_scale_arcsec": FIRST_PIXEL_SCALE_ARCSEC,
                             "size_pix": DATASET_IMAGE_PIXELS,
                             "stamp_pixel_scale_arcsec": STAMP_PIXEL_SCALE_ARCSEC,
                             "stamp_size_pix": STAMP_SIZE,
                             "stamp_angular_size_arcsec": STAMP_ANGULAR_SIZE_ARCSEC},
            "normalisation": (
                "Data-set image: pixels below 3 x noise RMS set to the threshold, then linear "
                "(value - threshold) / (peak - threshold) * 255 truncated to uint8 on a 300 x 300 grid "
                f"of 1.8 arcsec pixels centred on the source. Network input: {_stamp_text()}, "
                "divided by 255, square root."),
        },
        "outputs": [{"name": "probabilities", "kind": "probabilities", "labels": CLASS_NAMES,
                     "description": "Calibrated class probabilities softmax(logits / T) "
                                    f"with T = {temperature:.4f} fitted on the validation split."}],
        "training": {
            "data": ("FIRST radio galaxy data set (Griese et al. 2023, Data in Brief 47, 108974; "
                     "doi:10.1016/j.dib.2023.108974; PyPI firstgalaxydata 0.2.1, Zenodo record 7689127): "
                     "2,158 VLA FIRST images (Becker, White & Helfand 1995) with labels from MiraBest "
                     "(Miraghaei & Best 2017), CoNFIG (Gendre & Wall 2008; Gendre et al. 2010), FRICAT "
                     "and FRIICAT (Capetti et al. 2017a,b), FR0CAT (Baldi et al. 2018) and Proctor (2011)."),
            "terms": ("FIRST images: Provenance: The FIRST project team: R.J. Becker, D.H. Helfand, "
                      "R.L. White, M.D. Gregg, S.A. Laurent-Muehleisen. Copyright 1994, University of "
                      "California. Permission is granted for publication and reproduction of this "
                      "material for scholarly, educational, and private non-commercial use. Inquiries "
                      "for potential commercial uses should be addressed to: Robert Becker, Physics "
                      "Dept, University of California, Davis, CA 95616. The data-set package is MIT "
                      "licensed. This model inherits the FIRST terms: scholarly, educational and "
                      "private non-commercial use only."),
            "split": ("official split of galaxy_data_h5: train 1,758 (FRI 395, FRII 824, compact 291, "
                      "bent 248), valid 200 (50 per class: epoch selection and temperature), test 200 "
                      "(50 per class: reported)"),
            "command": (_ensemble_command(len(members), threads=[m["threads"] for m in members])
                        if members else
                        "python -m astromorph_training radio-morphology train"
                        + _train_options(record)),
            "time": record.get("time", ""),
            "machine": ("CPU only, 2 cores, "
                        + ("/".join(str(m["threads"]) for m in members)
                           if members else str(record.get("threads", 1)))
                        + " torch thread(s)"),
            "epochs": record.get("epochs"),
            "best_epoch": record.get("epoch"),
            "network": (f"mean logits of {len(members)} x " if members else "")
                       + _network_text(record.get("arch", {})),
            "augmentation": AUGMENTATION_TEXT[record.get("augment", "full")],
            "loss": ("class-balanced cross-entropy, label smoothing "
                     f"{record.get('label_smoothing', 0.0):g}"
                     + (f", mixup Beta({record['mixup']:g}, {record['mixup']:g})" if record.get("mixup") else "")
                     + "; AdamW, one-cycle learning rate, "
                     "EMA weights with recomputed batch-norm statistics"),
            "selection": (("each member: " if members else "")
                          + "epoch with the best validation accuracy (ties: lower validation loss)"),
            "smoke": bool(smoke),
        },
        "metrics": metrics,
        "licence": ("Model weights: BSD-3-Clause like astromorph, restricted by the FIRST terms of use "
                    "(scholarly, educational, and private non-commercial use)."),
    }


def _write_card(card, model_dir):
    # model_dir is <root>/models/<name>; root is temporary for --smoke
    return _common.write_card(NAME, card, root=model_dir.parent.parent)


def export(args):
    """Export the best checkpoint as ONNX (temperature and softmax baked in) plus its card.

    Parameters
    ----------
    args : argparse.Namespace
        Command line arguments.

    Returns
    -------
    pathlib.Path
        Path of the written ``model.onnx``.
    """
    dirs = _dirs(args)
    smoke = getattr(args, "smoke", False)
    if not (dirs["ckpt"] / "best.pt").exists():  # before reading (or caching) the data
        if not smoke:
            raise SystemExit(f"no checkpoint in {dirs['ckpt']}: run `python -m "
                             f"astromorph_training {NAME} train` first")
        train(args)
    data = load_dataset(args)
    net, record = _load_best(dirs["ckpt"])
    va = data["split"] == "valid"
    path = dirs["model"] / "model.onnx"
    temperature = _calibrate_and_export(net, data["images"][va], data["labels"][va], path)
    summary = {}
    if (dirs["ckpt"] / "train_summary.json").exists():
        summary = json.loads((dirs["ckpt"] / "train_summary.json").read_text())
    info = dict(record)
    info["epochs"] = summary.get("epochs")
    for key in ("arch", "augment", "label_smoothing", "mixup", "threads", "members", "seed"):
        if key in summary:
            info[key] = summary[key]
    if "train_seconds" in summary:
        info["time"] = f"{summary['train_seconds'] / 60:.1f} min of training epochs"
    # which checkpoint and file this export made: `evaluate` re-exports when they changed
    _common.write_text(dirs["ckpt"] / "temperature.json", json.dumps({
        "temperature": temperature, "checkpoint_sha256": _common.sha256sum(dirs["ckpt"] / "best.pt"),
        "onnx_sha256": _common.sha256sum(path)}))
    metrics_path = dirs["report"] / "metrics.json"
    metrics = {"split": "test", "command": "python -m astromorph_training radio-morphology evaluate"}
    if metrics_path.exists():
        old = json.loads(metrics_path.read_text())
        # keep the evaluated numbers only if they were measured on this very file
        if old.get("sha256") == _common.sha256sum(path):
            metrics = _card_metrics(old)
    n_params = sum(p.numel() for p in net.parameters())
    card = _card(temperature, info, metrics, smoke, n_params)
    card["training"]["architecture"] = architecture(_calibrated(net, temperature))
    _write_card(card, dirs["model"])
    _common.write_parity_reference(
        NAME, _calibrated(net, temperature),
        preprocess_dataset_image(_common.parity_raw_inputs("radio")), path, root=dirs["root"])
    LOG.info("exported %s (T = %.4f, %.1f kB)", path, temperature, path.stat().st_size / 1e3)
    return path


# --------------------------------------------------------------------------- evaluate
def _card_metrics(m):
    keep = ("split", "command", "n", "accuracy", "macro_recall", "per_class", "ece",
            "ece_uncalibrated", "ece_noise_floor", "temperature", "cross_validation", "throughput_per_s",
            "onnx_size_bytes", "torch_onnx_max_abs_diff")
    out = {k: m[k] for k in keep if k in m}
    if "cross_validation" in out:
        out["cross_validation"] = {k: v for k, v in out["cross_validation"].items() if k != "folds"}
    out["figures"] = [f"training/reports/{NAME}/{f}.png"
                      for f in ("confusion_matrix", "reliability", "errors")]
    return out


def _cv_summary(dirs, folds_done=None):
    """Summary of the fold results in a run folder (only ``folds_done`` if given)."""
    folds = []
    for k in (range(CV_FOLDS) if folds_done is None else folds_done):
        p = dirs["ckpt"] / f"cv{k}" / "result.json"
        if p.exists():
            folds.append(json.loads(p.read_text()))
    if not folds:
        return None
    out = {"n_folds": len(folds), "test_set": "galaxy_data_crossvalid_test (400, 100 per class)",
           "command": "python -m astromorph_training radio-morphology train --cv"}
    for key in ("accuracy", "macro_recall", "ece", "ece_uncalibrated"):
        v = np.array([f[key] for f in folds], dtype=float)
        out[key] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    epochs = []
    for k in range(CV_FOLDS):
        h = dirs["ckpt"] / f"cv{k}" / "history.json"
        if h.exists():
            epochs.append(len(json.loads(h.read_text())["history"]))
    out["epochs"] = epochs
    if epochs and len(set(epochs)) == 1 and epochs[0] != DEFAULT_CV_EPOCHS:
        out["command"] += f" --epochs {epochs[0]}"
    n_members = {len(f["best_epoch"]) for f in folds if isinstance(f.get("best_epoch"), list)}
    if n_members:  # folds of an `average` ensemble
        out["command"] = _ensemble_command(max(n_members), cv=True)
    out["folds"] = [{k: f[k] for k in ("fold", "accuracy", "macro_recall", "ece", "ece_uncalibrated",
                                        "temperature", "best_epoch", "per_class")} for f in folds]
    return out


def _plots(rep, probs, labels, report_dir, images):
    report_dir.mkdir(parents=True, exist_ok=True)
    _common.plot_error_gallery(images, probs, labels, CLASS_NAMES, report_dir / "errors.png",
                               "radio-morphology: FIRST test split, network input (sqrt stretch)")
    _common.plot_confusion_matrix(rep["confusion_matrix"], CLASS_NAMES,
                                  report_dir / "confusion_matrix.png",
                                  "radio-morphology: FIRST test split (200)")
    _common.plot_reliability(probs, labels, report_dir / "reliability.png",
                             "radio-morphology: FIRST test split, calibrated")


def _stale_export(dirs, path):
    """Why ``path`` is not the export of the run's current checkpoint, or ``None`` if it is."""
    if not path.exists():
        return f"{path} missing"
    record = dirs["ckpt"] / "temperature.json"
    if not record.exists():
        return f"{record} missing"
    made = json.loads(record.read_text())
    if "checkpoint_sha256" not in made:  # written before exports recorded their inputs
        return None
    if made["checkpoint_sha256"] != _common.sha256sum(dirs["ckpt"] / "best.pt"):
        return f"{dirs['ckpt'] / 'best.pt'} changed since {path} was exported"
    if made["onnx_sha256"] != _common.sha256sum(path):
        return f"{path} is not the file exported from {dirs['ckpt'] / 'best.pt'}"
    return None


def evaluate(args):
    """Score the exported ONNX model on the test split; write metrics.json and figures.

    The numbers come from ``models/radio-morphology/model.onnx`` run through
    onnxruntime on the output of `preprocess_dataset_image`; the torch
    checkpoint is compared with it (maximum absolute probability difference).
    The 5-fold cross-validation numbers are gathered from ``train --cv``.

    Parameters
    ----------
    args : argparse.Namespace
        Command line arguments.

    Returns
    -------
    dict
        The metrics written to ``training/reports/radio-morphology/metrics.json``.
    """
    import astromorph

    dirs = _dirs(args)
    smoke = getattr(args, "smoke", False)
    path = dirs["model"] / "model.onnx"
    stale = _stale_export(dirs, path)
    if stale:  # e.g. `build` in a fresh folder, or a new training run beside the shipped file
        LOG.info("%s: exporting the checkpoint first (export again after evaluate for a card "
                 "with the test metrics)", stale)
        export(args)
    data = load_dataset(args)
    temperature = json.loads((dirs["ckpt"] / "temperature.json").read_text())["temperature"]
    model = astromorph.load_model(path, providers="cpu", threads=ONNX_THREADS)  # checks sha256
    te, va = data["split"] == "test", data["split"] == "valid"
    x, y = preprocess_dataset_image(data["images"][te]), data["labels"][te]
    probs = np.asarray(model.predict(x, progress=False)["probabilities"])
    rep = {"split": "test", "command": "python -m astromorph_training radio-morphology evaluate",
           "model": f"models/{NAME}/model.onnx", "sha256": _common.sha256sum(path),
           "temperature": temperature}
    rep.update(_report(probs, y, temperature))
    rep["ece_noise_floor"] = _common.ece_noise_floor(probs)
    vprobs = np.asarray(model.predict(preprocess_dataset_image(data["images"][va]),
                                      progress=False)["probabilities"])
    vrep = _report(vprobs, data["labels"][va], temperature)
    rep["valid"] = {k: vrep[k] for k in ("n", "accuracy", "macro_recall", "ece", "ece_uncalibrated")}
    net, record = _load_best(dirs["ckpt"])
    rep["best_epoch"] = record["epoch"]
    rep["torch_onnx_max_abs_diff"] = _common.check_parity(
        _calibrated(net, temperature), x, path, atol=1e-5, rtol=1e-4)
    rep["onnx_size_bytes"] = path.stat().st_size
    if getattr(args, "throughput", False) or not smoke:
        rep["throughput_per_s"] = _common.onnx_throughput(path, (1, STAMP_SIZE, STAMP_SIZE),
                                                          batch=256, threads=ONNX_THREADS)
        rep["throughput_setup"] = f"onnxruntime CPU, {ONNX_THREADS} threads, batch 256, best of 5"
    cv = _cv_summary(dirs)
    if cv is not None:
        rep["cross_validation"] = cv
    _plots(rep, probs, y, dirs["report"], x)
    _common.write_metrics(NAME, rep, root=dirs["root"])
    # refresh the card's metrics section (model.onnx, hence sha256, unchanged)
    card_path = dirs["model"] / "card.json"
    if card_path.exists():
        card = json.loads(card_path.read_text())
        card["metrics"] = _card_metrics(rep)
        _write_card(card, dirs["model"])
    LOG.info("test accuracy %.4f macro recall %.4f ECE %.4f (uncalibrated %.4f), torch/ONNX diff %.2e",
             rep["accuracy"], rep["macro_recall"], rep["ece"], rep["ece_uncalibrated"],
             rep["torch_onnx_max_abs_diff"])
    return rep
