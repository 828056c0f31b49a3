"""Galaxy Zoo 2 decision tree (``morphology-gz2``): the 37 Kaggle vote fractions.

Data: ``<data-dir>/gz2/images/<GalaxyID>.jpg`` (424 x 424 SDSS gri colour
JPEGs of the Kaggle "Galaxy Zoo - The Galaxy Challenge", 0.02 x petroR90_r
arcsec per pixel, Willett et al. 2013) and ``gz2/votes.csv``: for 3,234 of
them the 37 weighted vote fractions ``Class1.1`` ... ``Class11.6``. The other
images (Kaggle training images without votes here and Kaggle test images) are
unlabelled.

The decision tree
-----------------
The fractions are not probabilities: the answers to a question sum to the
fraction of volunteers that reached it (Willett et al. 2013, Table 2; the
Kaggle challenge's normalisation). `QUESTIONS` lists the 11 questions, their
answers and the answer that leads to each question; every sum holds exactly
(to 1e-6) in ``votes.csv``:

* Q1 (smooth / features or disk / star or artifact) and Q6 (anything odd?)
  sum to 1;
* Q2 (edge-on?) sums to Class1.2; Q3 (bar), Q4 (spiral), Q5 (bulge) to
  Class2.2; Q7 (roundness) to Class1.1; Q8 (odd feature) to Class6.1;
  Q9 (edge-on bulge shape) to Class2.1; Q10 (arm winding) and Q11 (number of
  arms) to Class4.1.

As in Dieleman, Willett & Dambre (2015), the network's output layer enforces
the tree (`DecisionTree`): a softmax over each question's answers,
multiplied by the parent answer's fraction. The layer is part of the ONNX
graph, so every output row is non-negative and satisfies all the sums.

Steps
-----
``train``
    Random 75/10/15 train/validation/test split of the labelled galaxies with
    a fixed seed (`SPLIT_SEED`, independent of ``--seed``). Images go once
    through `astromorph.preprocessing._optical.preprocess_colour_cutout`
    (module defaults: central 0.45 of the cutout, 64 x 64) and at 1.5 times
    that field (96 x 96) for augmentation; both are cached in
    ``training/cache/``. Training stamps are cut from the 96 px cache by the
    ``morphology`` model's augmentation (`astromorph_training.morphology.augment`:
    any rotation, flips, shifts, zooms, blur, stretch and colour jitter, noise,
    greyscale). MSE loss on the 37 tree-normalised outputs, AdamW with cosine
    learning rate, EMA weights, checkpoint every epoch (``last.pt``, rerun to
    resume; ``best.pt`` = lowest validation RMSE). ``--init morphology`` starts
    the convolutional layers from the ``morphology`` (Galaxy Zoo 1) model's
    checkpoint.
``evaluate``
    Exports the deployed graph (best EMA weights, the outputs averaged over
    ``--tta`` flips / 90 degree rotations, tree layer) to
    ``models/morphology-gz2/model.onnx`` and scores *that file* with
    onnxruntime on the held-out test split: RMSE over the 37 outputs, per
    question and per output, the training-mean predictor for context, scatter
    plots, and a comparison with the ``morphology`` model on the same
    galaxies (``training/reports/morphology-gz2/``).
``export``
    Re-exports the same graph, checks torch/ONNX parity and the tree property
    on the shipped file, measures throughput and writes
    ``models/morphology-gz2/card.json`` quoting ``metrics.json``.
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
    preprocess_colour_cutout,
    stamp_size_from_petrosian,
)

from . import _common
from . import morphology as _gz1

__all__ = [
    "NAME", "QUESTIONS", "LABELS", "NAMES", "PARENTS", "add_arguments", "train", "evaluate",
    "export", "read_votes", "split_indices", "load_dataset", "DecisionTree", "GZ2Net",
    "DeployedGZ2", "tree_violation", "rmse_report", "architecture", "from_architecture",
]

log = logging.getLogger(__name__)

NAME = "morphology-gz2"
#: The Galaxy Zoo 2 decision tree as in the Kaggle challenge (Willett et al. 2013,
#: Table 2): (question number, question, answer names, label of the answer
#: leading to the question or None when every volunteer answers it).
QUESTIONS = (
    (1, "Is the galaxy simply smooth and rounded, with no sign of a disk?",
     ("smooth", "features_or_disk", "star_or_artifact"), None),
    (2, "Could this be a disk viewed edge-on?", ("edge_on_yes", "edge_on_no"), "Class1.2"),
    (3, "Is there a sign of a bar feature through the centre of the galaxy?",
     ("bar_yes", "bar_no"), "Class2.2"),
    (4, "Is there any sign of a spiral arm pattern?", ("spiral_yes", "spiral_no"), "Class2.2"),
    (5, "How prominent is the central bulge, compared with the rest of the galaxy?",
     ("bulge_none", "bulge_just_noticeable", "bulge_obvious", "bulge_dominant"), "Class2.2"),
    (6, "Is there anything odd?", ("odd_yes", "odd_no"), None),
    (7, "How rounded is it?", ("round_completely", "round_in_between", "round_cigar_shaped"),
     "Class1.1"),
    (8, "Is the odd feature a ring, or is the galaxy disturbed or irregular?",
     ("odd_ring", "odd_lens_or_arc", "odd_disturbed", "odd_irregular", "odd_other",
      "odd_merger", "odd_dust_lane"), "Class6.1"),
    (9, "Does the galaxy have a bulge at its centre? If so, what shape?",
     ("edge_on_bulge_rounded", "edge_on_bulge_boxy", "edge_on_bulge_none"), "Class2.1"),
    (10, "How tightly wound do the spiral arms appear?",
     ("arms_tight", "arms_medium", "arms_loose"), "Class4.1"),
    (11, "How many spiral arms are there?",
     ("arms_1", "arms_2", "arms_3", "arms_4", "arms_more_than_4", "arms_cant_tell"), "Class4.1"),
)
#: Output labels (the Kaggle column names), in output order.
LABELS = tuple(f"Class{q}.{j + 1}" for q, _, answers, _ in QUESTIONS for j in range(len(answers)))
#: Human-readable answer names, in output order.
NAMES = tuple(a for _, _, answers, _ in QUESTIONS for a in answers)
#: Question number -> parent label (None: the question is asked of everyone).
PARENTS = {q: parent for q, _, _, parent in QUESTIONS}

#: Seed of the train/validation/test split (fixed, independent of ``--seed``).
SPLIT_SEED = 20240602
SPLIT_FRACTIONS = (0.75, 0.10, 0.15)
#: `_common.split_fingerprint` of the galaxy ids of ``gz2/votes.csv``, in order, that the
#: shipped model's split was drawn from: other rows are refused without ``--new-split``.
SPLIT_SOURCE_SHA256 = "c971806aae4ec49999e4a89963fe384b98a5ce601c88cd38e22387186ad46c57"
CACHE_VERSION = 1
#: Width of the Kaggle GZ2 cutouts and their pixel scale in units of petroR90_r
#: (Willett et al. 2013: 0.02 x petroR90_r arcsec per pixel; GZ1 used 0.024).
GZ2_CUTOUT_PIXELS = 424
GZ2_PIXEL_SCALE_PER_PETRO_R90 = 0.02
#: Crop fraction of a GZ2 cutout that covers the ``morphology`` (GZ1) model's field.
GZ1_EQUIVALENT_CROP = float(stamp_size_from_petrosian(1.0)
                            / (GZ2_CUTOUT_PIXELS * GZ2_PIXEL_SCALE_PER_PETRO_R90))
WIDTHS = (24, 48, 64, 128)
DEFAULT_EPOCHS = 80
GREY_PROBABILITY = 0.1
DEFAULT_TTA = 2
#: Outputs shown in the scatter plots (smooth, featured, edge-on, bar, spiral, odd).
MAIN_OUTPUTS = ("Class1.1", "Class1.2", "Class2.1", "Class3.1", "Class4.1", "Class6.1")


# ------------------------------------------------------------------------ arguments
#: Options only some steps read -> those steps (the command line refuses them elsewhere).
STEP_OPTIONS = {**dict.fromkeys(("batch_size", "lr", "weight_decay", "ema_decay", "dropout",
                                 "restart", "init", "student_epochs", "student_from_teacher",
                                 "student_lr", "pseudo_tta", "train_fraction"), ("train",)),
                "tta": ("evaluate", "export")}
#: Options read only with one of others (the command line refuses them alone).
OPTION_NEEDS = {"student_from_teacher": ("student_epochs",), "pseudo_tta": ("student_epochs",),
                "student_lr": ("student_from_teacher",)}


def add_arguments(parser):
    """Options of the morphology-gz2 model."""
    g = parser.add_argument_group("morphology-gz2")
    g.add_argument("--batch-size", type=_common.positive_int, default=64,
                   help="training batch size (default %(default)s)")
    g.add_argument("--lr", type=float, default=2e-3,
                   help="peak AdamW learning rate of the teacher, and of a student started "
                        "from --init (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=0.05,
                   help="AdamW weight decay (default %(default)s)")
    g.add_argument("--ema-decay", type=float, default=0.995,
                   help="decay of the moving average of the weights that is evaluated and "
                        "exported (default %(default)s)")
    g.add_argument("--dropout", type=float, default=0.2,
                   help="dropout before the output layer (default %(default)s)")
    g.add_argument("--threads", type=_common.positive_int, default=1,
                   help="torch CPU threads (default %(default)s)")
    g.add_argument("--restart", action="store_true",
                   help="train from scratch (an existing last.pt is kept as last.pt.<time>.bak)")
    g.add_argument("--init", default="morphology",
                   help="'morphology' (default: the GZ1 model's training checkpoint, so run "
                        "'morphology train' first), 'none' (random initialisation) or a "
                        "checkpoint path whose 'ema' or 'model' entry is a morphology-style network")
    g.add_argument("--student-epochs", type=_common.nonnegative_int, default=0,
                   help="epochs of the noisy-student stage on labelled + pseudo-labelled images "
                        "(default %(default)s: train only on the labelled images)")
    g.add_argument("--student-from-teacher", action="store_true",
                   help="start the student from the teacher's weights instead of --init")
    g.add_argument("--student-lr", type=float, default=5e-4,
                   help="peak learning rate of a student started from the teacher (default "
                        "%(default)s)")
    g.add_argument("--pseudo-tta", type=int, default=8, choices=(1, 2, 4, 8),
                   help="orientations averaged by the teacher for the pseudo-labels (default "
                        "%(default)s)")
    g.add_argument("--tta", type=int, default=DEFAULT_TTA, choices=(1, 2, 4, 8),
                   help="orientations averaged inside the exported graph (default %(default)s)")
    g.add_argument("--train-fraction", type=float, default=1.0,
                   help="use only this fraction of the training split (learning curves; "
                        "default %(default)s: all of it)")
    g.add_argument("--tag", default="",
                   help="checkpoint sub-directory for experiments (default: the main one)")


def _get(args, name, default):
    return getattr(args, name, default) if getattr(args, name, None) is not None else default


# ----------------------------------------------------------------------------- data
def read_votes(data_dir):
    """Galaxy ids (str) and the 37 vote fractions from ``gz2/votes.csv``.

    Returns
    -------
    ids : numpy.ndarray of str, (N,)
    fractions : numpy.ndarray, float32, (N, 37)
        Columns in `LABELS` order.
    """
    path = Path(data_dir) / "gz2" / "votes.csv"
    ids, rows = [], []
    for line, row in _common.read_csv(path, ("GalaxyID", *LABELS)):
        try:
            values = [float(row[c]) for c in LABELS]
        except ValueError:
            values = [math.nan]
        if not all(0.0 <= v <= 1.0 for v in values):  # NaN too: it would poison the loss
            bad = next(c for c in LABELS if not _fraction(row[c]))
            raise SystemExit(f"{path}, line {line}: galaxy {row['GalaxyID']!r} has {bad} = "
                             f"{row[bad]!r}, not a vote fraction between 0 and 1")
        ids.append(row["GalaxyID"])
        rows.append(values)
    return np.array(ids), np.array(rows, dtype=np.float32).reshape(-1, len(LABELS))


def _fraction(text):
    try:
        return 0.0 <= float(text) <= 1.0
    except ValueError:
        return False


def unlabelled_ids(data_dir, labelled):
    """Ids of the GZ2 images without votes, sorted."""
    have = {p.stem for p in (Path(data_dir) / "gz2" / "images").glob("*.jpg")}
    return np.array(sorted(have - set(labelled), key=int))


def split_indices(n, fractions=SPLIT_FRACTIONS, seed=SPLIT_SEED):
    """Sorted train/validation/test indices of a random split of ``n`` galaxies."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(fractions[2] * n))
    n_val = int(round(fractions[1] * n))
    return (np.sort(perm[n_test + n_val:]), np.sort(perm[n_test:n_test + n_val]),
            np.sort(perm[:n_test]))


def image_paths(data_dir, ids):
    """Paths of the GZ2 JPEGs of ``ids``."""
    return [Path(data_dir) / "gz2" / "images" / f"{i}.jpg" for i in ids]


def _cached(cache, stem, ids, paths):
    """Network (64 px) and augmentation (96 px) stamps of ``paths``, cached as ``stem_*.npy``."""
    f_ids, f_stamps, f_big = (cache / f"{stem}_{k}.npy"
                              for k in ("ids", "stamps", f"big{_gz1.CACHE_SIZE}"))
    if f_ids.exists() and f_stamps.exists() and f_big.exists() and \
            np.array_equal(np.load(f_ids), ids):
        return np.load(f_stamps), np.load(f_big)
    log.info("preprocessing %d GZ2 images into %s", len(ids), cache)
    t0 = time.perf_counter()
    stamps, big = _gz1._preprocess_files(paths)
    for path, arr in ((f_stamps, stamps), (f_big, big), (f_ids, ids)):
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, path)
    log.info("cached in %.0f s", time.perf_counter() - t0)
    return stamps, big


def load_dataset(args, *, trained=None):
    """The labelled GZ2 galaxies: stamps, fractions and the split.

    ``trained`` is the fingerprint of ``votes.csv`` that the checkpoint about to be scored
    records (`_common.check_split_source`: other rows are refused).

    Returns
    -------
    dict
        ``ids``, ``y`` (N, 37) float32, ``stamps`` (N, 3, 64, 64) float32
        network input, ``big`` (N, 3, 96, 96) float16 augmentation stamps,
        ``split`` (train, val, test index arrays). In smoke mode: 24
        galaxies, nothing cached, every split = all of them.
    """
    ids, y = read_votes(args.data_dir)
    if args.smoke:
        keep = np.arange(24)
        ids, y = ids[keep], y[keep]
        stamps, big = _gz1._preprocess_files(image_paths(args.data_dir, ids))
        everything = np.arange(len(ids))
        return dict(ids=ids, y=y, stamps=stamps, big=big,
                    split=(everything, everything, everything), split_source=None)
    source = _common.check_split_source(Path(args.data_dir) / "gz2" / "votes.csv",
                                        SPLIT_SOURCE_SHA256, ids, args=args, trained=trained)
    stem = f"gz2_v{CACHE_VERSION}_s{STAMP_SIZE}_c{CROP_FRACTION:g}"
    stamps, big = _cached(_common.cache_dir(args.out_dir), stem, ids,
                          image_paths(args.data_dir, ids))
    return dict(ids=ids, y=y, stamps=stamps, big=big, split=split_indices(len(ids)),
                split_source=source)


def load_unlabelled(args):
    """Stamps of the GZ2 images without votes (``stamps`` 64 px, ``big`` 96 px), cached.

    In smoke mode: 16 images, nothing cached.
    """
    ids, _ = read_votes(args.data_dir)
    u = unlabelled_ids(args.data_dir, ids)
    if args.smoke:
        u = u[:16]
        stamps, big = _gz1._preprocess_files(image_paths(args.data_dir, u))
    else:
        stem = f"gz2_unlabelled_v{CACHE_VERSION}_s{STAMP_SIZE}_c{CROP_FRACTION:g}"
        stamps, big = _cached(_common.cache_dir(args.out_dir), stem, u,
                              image_paths(args.data_dir, u))
    return dict(ids=u, stamps=stamps, big=big)


# ---------------------------------------------------------------------------- model
def _question_slices():
    """``[(question, start, stop, parent column or None)]`` in output order."""
    out, start = [], 0
    for q, _, answers, parent in QUESTIONS:
        out.append((q, start, start + len(answers),
                    None if parent is None else LABELS.index(parent)))
        start += len(answers)
    return out


class DecisionTree(nn.Module):
    """Output layer enforcing the GZ2 decision tree (Dieleman et al. 2015).

    ``(N, 37)`` unconstrained scores -> ``(N, 37)`` vote fractions: a softmax
    over the answers of each question, scaled by the fraction of the answer
    that leads to the question (`QUESTIONS`). Parents always come from
    earlier questions, so one pass in question order suffices.
    """

    def __init__(self):
        super().__init__()
        self.slices = _question_slices()

    def forward(self, z):
        parts = []
        for _, start, stop, parent in self.slices:
            p = torch.softmax(z[:, start:stop], dim=1)
            if parent is not None:
                p = p * torch.cat(parts, dim=1)[:, parent:parent + 1]
            parts.append(p)
        return torch.cat(parts, dim=1)


def conditional_means(y):
    """Mean answer shares given that the question was reached (for the head's bias).

    Returns
    -------
    numpy.ndarray, (37,)
        For each answer, sum of its fraction over sum of its parent's fraction.
    """
    y = np.asarray(y, dtype=np.float64)
    out = np.empty(y.shape[1])
    for _, start, stop, parent in _question_slices():
        total = y[:, start:stop].sum()
        out[start:stop] = (y[:, start:stop].sum(0) + 1e-3) / (total + 1e-3 * (stop - start))
    return out


class GZ2Net(nn.Module):
    """(N, 3, 64, 64) display values in [0, 1] -> (N, 37) tree-consistent vote fractions.

    The ``morphology`` model's small VGG-style CNN
    (`astromorph_training.morphology.MorphologyNet`; 0.6 M parameters with ``WIDTHS``;
    ``--init`` gives it the widths and stem of the checkpoint it starts from: 0.93 M for
    the morphology 1.x network that started the shipped 1.1.0)
    with 37 outputs, followed by `DecisionTree`.
    """

    def __init__(self, widths=WIDTHS, dropout=0.2, stem=_gz1.STEM_1X):
        super().__init__()
        self.backbone = _gz1.MorphologyNet(n_classes=len(LABELS), widths=widths, dropout=dropout,
                                           stem=stem)
        self.tree = DecisionTree()

    def scores(self, x):
        """Unconstrained per-answer scores (before the tree layer)."""
        return self.backbone(x)

    def forward(self, x):
        return self.tree(self.backbone(x))

    def set_prior(self, y):
        """Zero the last layer's weights' scale and set its bias so outputs start at the mean."""
        head = self.backbone.head[-1]
        with torch.no_grad():
            head.weight.mul_(0.1)
            head.bias.copy_(torch.as_tensor(np.log(conditional_means(y)), dtype=torch.float32))


class DeployedGZ2(nn.Module):
    """The shipped graph: vote fractions averaged over orientations of the stamp.

    Averaging tree-consistent outputs keeps them tree-consistent (every
    constraint is linear and non-negativity is preserved). ``tta`` selects the
    first 1, 4 or 8 of `astromorph_training.morphology.TTA_ORIENTATIONS`, or
    (2) the identity and the 180 degree rotation.
    """

    def __init__(self, net, tta=DEFAULT_TTA):
        super().__init__()
        self.net = net
        self.tta = int(tta)
        orient = _gz1.TTA_ORIENTATIONS
        self.orientations = orient[0:4:3] if tta == 2 else orient[:tta]

    def forward(self, x):
        views = []
        for transpose, flip_rows, flip_cols in self.orientations:
            v = x.transpose(2, 3) if transpose else x
            dims = (2,) * flip_rows + (3,) * flip_cols
            views.append(torch.flip(v, dims=dims) if dims else v)
        if len(views) == 1:
            return self.net(x)
        n = x.shape[0]
        out = self.net(torch.cat(views, 0))
        return out.reshape(len(views), n, -1).mean(0)


def tree_violation(fractions):
    """Largest violation of the tree constraints in an ``(N, 37)`` array.

    Returns
    -------
    dict
        ``min_value`` (smallest entry; should be >= 0) and
        ``max_sum_error`` (largest ``|sum of answers - parent fraction|``).
    """
    f = np.asarray(fractions, dtype=np.float64)
    err = 0.0
    for _, start, stop, parent in _question_slices():
        target = 1.0 if parent is None else f[:, parent]
        err = max(err, float(np.max(np.abs(f[:, start:stop].sum(1) - target))) if len(f) else 0.0)
    return {"min_value": float(f.min()) if f.size else 0.0, "max_sum_error": err}


# ---------------------------------------------------------------------------- metrics
def rmse_report(pred, true):
    """RMSE over all outputs (the Kaggle metric), per question and per output."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    sq = (pred - true) ** 2
    per_q = {f"Q{q}": float(np.sqrt(sq[:, a:b].mean())) for q, a, b, _ in _question_slices()}
    per_out = {lab: float(np.sqrt(sq[:, j].mean())) for j, lab in enumerate(LABELS)}
    return {"rmse": float(np.sqrt(sq.mean())), "per_question": per_q, "per_output": per_out}


@torch.no_grad()
def predict(net, x, batch=256):
    """Outputs of ``net`` (module or callable) for numpy stamps, as numpy."""
    if isinstance(net, nn.Module):
        net.eval()
    out = [net(torch.from_numpy(np.ascontiguousarray(x[i:i + batch], dtype=np.float32)))
           for i in range(0, len(x), batch)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(LABELS)), np.float32)


# ---------------------------------------------------------------------------- train
def _root(args):
    return _common.smoke_root(NAME) if args.smoke else Path(args.out_dir)


def _ckdir(args):
    tag = _get(args, "tag", "")
    d = _common.checkpoint_dir(NAME, _root(args))
    if tag:
        d = d / tag
        d.mkdir(parents=True, exist_ok=True)
    return d


def _init_checkpoint(init, root, *, smoke=False):
    """Path and contents of the ``--init`` checkpoint (None, None for ``none``)."""
    if init in (None, "", "none"):
        return None, None
    if init == "morphology":
        # the morphology checkpoint of this run's root (a smoke run's own, never the
        # repository's: smoke runs stay sealed off from it)
        path = root / "training" / "checkpoints" / _gz1.NAME / "last.pt"
        if smoke and not path.exists():
            log.info("--init morphology: no checkpoint %s in smoke mode; random initialisation",
                     path)
            return None, None
    else:
        path = Path(init)
    hint = "run 'python -m astromorph_training morphology train' first, or pass --init none"
    if not path.is_file():
        raise SystemExit(f"--init {init}: no checkpoint {path} ({hint})")
    state = _common.load_checkpoint(path, hint=f"check --init {init} ({hint})")
    if not isinstance(state, dict) or not (state.get("ema") or state.get("model")):
        raise SystemExit(f"--init {init}: {path} holds no network weights ('ema' or 'model'): "
                         f"not a morphology training checkpoint ({hint})")
    return path, state


def _init_weights(net, path, state, root):
    """Load a morphology-style backbone (all but the last linear layer) into ``net``."""
    if path is None:
        return None, None
    weights = state.get("ema") or state.get("model")
    own = net.backbone.state_dict()
    take = {k: v for k, v in weights.items()
            if k in own and not k.startswith("head.") and own[k].shape == v.shape}
    skipped = [k for k in own if k not in take and not k.startswith("head.")]
    if skipped:
        raise SystemExit(f"--init {path}: checkpoint does not fit the network ({skipped[:4]} ...)")
    net.backbone.load_state_dict(take, strict=False)
    log.info("initialised %d backbone tensors from %s", len(take), path)
    return str(path.relative_to(root) if path.is_relative_to(root) else path), \
        _common.sha256sum(path)


#: What a resumed run must share with its checkpoint (`_common.check_resume`): options
#: (``epochs`` and ``threads`` may change) and the training set and starting weights they
#: give; ``lr`` is the stage's peak learning rate (``--student-lr`` for a student started
#: from the teacher).
RECIPE_KEYS = ("seed", "lr", "weight_decay", "batch_size", "ema_decay", "dropout", "n_train",
               "n_pseudo", "init_sha256")
_RECIPE_LABELS = {"lr": "peak learning rate (--lr, or --student-lr)",
                  "n_train": "labelled training galaxies (--train-fraction)",
                  "n_pseudo": "pseudo-labelled images (--student-epochs)",
                  "init_sha256": "initial weights (--init) of sha256"}


def _stored_recipe(state):
    """The `RECIPE_KEYS` a checkpoint was trained with, as strings (older checkpoints:
    what their options and records say)."""
    if "recipe" in state:
        return state["recipe"]
    a = state.get("args", {})
    stored = {k: a[k] for k in ("seed", "weight_decay", "batch_size", "ema_decay") if k in a}
    stored.update({k: str(state[k]) for k in ("dropout", "n_train", "n_pseudo", "init_sha256")
                   if k in state})
    return stored


def _check_resume(last, state, recipe, epochs):
    """Refuse to continue ``last.pt`` (contents ``state``) under another ``recipe`` (the
    `RECIPE_KEYS` of this run, as strings) or past ``epochs``."""
    _common.check_resume(last, _stored_recipe(state), argparse.Namespace(**recipe), RECIPE_KEYS,
                         labels=_RECIPE_LABELS, trained=int(state["epoch"]) + 1, epochs=epochs)


def _fit(args, ckdir, data, tr, *, epochs, pseudo=None, start=None, lr=None):
    """Train one network into ``ckdir`` (resumable); returns the best validation RMSE.

    Parameters
    ----------
    data : dict
        `load_dataset` output (validation on ``data["split"][1]``).
    tr : numpy.ndarray
        Training indices into ``data``.
    pseudo : dict, optional
        ``big`` (M, 3, 96, 96) stamps and ``y`` (M, 37) soft targets added to
        the training pool (pseudo-labelled unlabelled images).
    start : str or Path, optional
        Checkpoint whose EMA weights initialise the network (instead of ``--init``).
    lr : float, optional
        Peak learning rate (default ``--lr``).
    """
    batch_size = _get(args, "batch_size", 64) if not args.smoke else 8
    lr = lr or _get(args, "lr", 2e-3)
    y, va = data["y"], data["split"][1]
    pool_big, pool_y = data["big"][tr], y[tr]
    if pseudo is not None:
        pool_big = np.concatenate([pool_big, pseudo["big"]])
        pool_y = np.concatenate([pool_y, pseudo["y"]]).astype(np.float32)
    if start is None:
        init_path, init_state = _init_checkpoint(_get(args, "init", "morphology"), _root(args),
                                                 smoke=args.smoke)
    else:
        init_path, init_state = None, _common.load_checkpoint(
            start, hint=f"rerun `python -m astromorph_training {NAME} train --restart`")
    # The backbone takes the widths and stem of the network it starts from
    # (the GZ1 model's checkpoint records them; older checkpoints used WIDTHS
    # and the conv-pool stem).
    widths = tuple((init_state or {}).get("widths") or WIDTHS)
    stem = (init_state or {}).get("stem", _gz1.STEM_1X)
    net = GZ2Net(widths=widths, dropout=_get(args, "dropout", 0.2), stem=stem)
    net.set_prior(y[tr])
    if start is None:
        init, init_sha = _init_weights(net, init_path, init_state, _root(args))
    else:
        net.load_state_dict(init_state["ema"])
        init, init_sha = f"{start} (teacher)", _common.sha256sum(start)
    ema = copy.deepcopy(net)
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=_get(args, "weight_decay", 0.05))
    start_epoch, history, best = 0, [], np.inf
    recipe = {"seed": str(args.seed), "lr": str(lr), "weight_decay": str(_get(args, "weight_decay", 0.05)),
              "batch_size": str(batch_size), "ema_decay": str(_get(args, "ema_decay", 0.995)),
              "dropout": str(_get(args, "dropout", 0.2)), "n_train": str(len(tr)),
              "n_pseudo": str(0 if pseudo is None else len(pseudo["y"])), "init_sha256": str(init_sha)}
    last = ckdir / "last.pt"
    state = _common.resume_checkpoint(last, model=NAME, restart=_get(args, "restart", False)
                                      or args.smoke, keep=not args.smoke,
                                      also=[ckdir / "best.pt"])
    if state is not None:
        _check_resume(last, state, recipe, epochs)
        _common.check_resumed_split(last, state, data["split_source"])
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        best = min((h["val_rmse"] for h in history), default=np.inf)
        log.info("resumed from %s at epoch %d", last, start_epoch)

    steps_per_epoch = max(1, len(pool_y) // batch_size)
    total = epochs * steps_per_epoch
    warmup = min(2 * steps_per_epoch, total // 10 + 1)
    decay = _get(args, "ema_decay", 0.995)
    log.info("%s: %d training stamps (%d pseudo-labelled), %d epochs of %d steps", ckdir.name,
             len(pool_y), 0 if pseudo is None else len(pseudo["y"]), epochs, steps_per_epoch)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([args.seed, epoch])
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        order = np.resize(rng.permutation(len(pool_y)), steps_per_epoch * batch_size)
        net.train()
        running = 0.0
        for s in range(steps_per_epoch):
            step = epoch * steps_per_epoch + s
            for group in opt.param_groups:
                group["lr"] = _gz1._lr_at(step, total, lr, warmup)
            idx = np.sort(order[s * batch_size:(s + 1) * batch_size])
            x = _gz1.augment(torch.from_numpy(pool_big[idx].astype(np.float32)), gen,
                             grey_p=GREY_PROBABILITY)
            loss = F.mse_loss(net(x), torch.from_numpy(pool_y[idx]))
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
        val_rmse = float(np.sqrt(((predict(ema, data["stamps"][va]) - y[va]) ** 2).mean()))
        row = dict(epoch=epoch, train_rmse=math.sqrt(running / steps_per_epoch), val_rmse=val_rmse,
                   lr=opt.param_groups[0]["lr"], seconds=time.perf_counter() - t0)
        history.append(row)
        log.info("%s epoch %d/%d train RMSE %.4f | val RMSE (EMA, no TTA) %.4f | %.0f s",
                 ckdir.name, epoch + 1, epochs, row["train_rmse"], val_rmse, row["seconds"])
        state = dict(epoch=epoch, model=net.state_dict(), ema=ema.state_dict(),
                     optimizer=opt.state_dict(), history=history, epochs=epochs, init=init,
                     init_sha256=init_sha, n_train=int(len(tr)),
                     n_pseudo=0 if pseudo is None else int(len(pseudo["y"])),
                     dropout=_get(args, "dropout", 0.2), widths=list(widths), stem=stem,
                     args={k: str(v) for k, v in vars(args).items()}, recipe=recipe,
                     split_source=data["split_source"])
        _common.save_checkpoint(state, last, model=NAME)
        if val_rmse < best:
            best = val_rmse
            _common.save_checkpoint(state, ckdir / "best.pt")
    _common.write_text(ckdir / "history.json", json.dumps(history, indent=1) + "\n")
    return best


def pseudo_labels(teacher, stamps, tta=8):
    """Soft targets for unlabelled stamps: the teacher's orientation-averaged fractions."""
    return predict(DeployedGZ2(teacher, tta).eval(), stamps, batch=128).astype(np.float32)


def train(args):
    """Train the GZ2 network (each stage resumes from its ``last.pt`` unless ``--restart``).

    Without ``--student-epochs`` (or with 0): one network on the labelled
    training split. With it (noisy student, Xie et al. 2020): a teacher is
    trained first (``teacher/``), its 8-orientation predictions on the
    unlabelled GZ2 images become soft targets, and the shipped network (the
    student, same size, same initialisation) is trained on the labelled and
    pseudo-labelled images together with the same augmentation, starting
    from the ``--init`` weights or, with ``--student-from-teacher``, from the
    teacher (then at peak learning rate ``--student-lr``).
    """
    torch.set_num_threads(_get(args, "threads", 1))
    _common.set_seed(args.seed)
    epochs = args.epochs or (2 if args.smoke else DEFAULT_EPOCHS)
    student_epochs = _get(args, "student_epochs", 0) if not args.smoke else \
        min(1, _get(args, "student_epochs", 0))
    data = load_dataset(args)
    tr, va, te = data["split"]
    frac = _get(args, "train_fraction", 1.0)
    if frac < 1.0:
        tr = np.sort(np.random.default_rng(1).permutation(tr)[:int(round(frac * len(tr)))])
    y = data["y"]
    log.info("split train/val/test = %d/%d/%d; validation RMSE of the training mean %.4f",
             len(tr), len(va), len(te), float(np.sqrt(((y[va] - y[tr].mean(0)) ** 2).mean())))
    ckdir = _ckdir(args)
    if not student_epochs:
        _fit(args, ckdir, data, tr, epochs=epochs)
        return ckdir
    tdir = ckdir / "teacher"
    tdir.mkdir(exist_ok=True)
    _fit(args, tdir, data, tr, epochs=epochs)
    teacher = _load_net(tdir / "best.pt")[0]
    unl = load_unlabelled(args)
    t0 = time.perf_counter()
    targets = pseudo_labels(teacher, unl["stamps"], tta=_get(args, "pseudo_tta", 8))
    log.info("pseudo-labelled %d unlabelled images in %.0f s", len(targets),
             time.perf_counter() - t0)
    from_teacher = _get(args, "student_from_teacher", False)
    _fit(args, ckdir, data, tr, epochs=student_epochs, pseudo={"big": unl["big"], "y": targets},
         start=tdir / "best.pt" if from_teacher else None,
         lr=_get(args, "student_lr", None) if from_teacher else None)
    return ckdir


# ------------------------------------------------------------------------- deploy
def _load_net(path):
    """EMA network of a checkpoint file and the checkpoint dict."""
    state = _common.load_checkpoint(path)
    net = GZ2Net(widths=tuple(state.get("widths") or WIDTHS), dropout=state.get("dropout", 0.2),
                 stem=state.get("stem", _gz1.STEM_1X))
    net.load_state_dict(state["ema"])
    return net.eval(), state


def load_trained(args):
    """The shipped network: the EMA weights with the lowest validation RMSE.

    Candidates are ``best.pt`` (the student, or the only network) and, after a
    noisy-student run, ``teacher/best.pt``; the lower best validation RMSE
    (single orientation, as logged during training) wins.

    Returns
    -------
    net : GZ2Net
    state : dict
        The checkpoint, with ``stage`` ("student", "teacher" or "single") and
        ``candidates`` (validation RMSE of each) added.
    """
    ckdir = _ckdir(args)
    if args.smoke and not (ckdir / "best.pt").exists():
        train(args)
    candidates = {}
    for stage, path in (("student", ckdir / "best.pt"), ("teacher", ckdir / "teacher" / "best.pt")):
        if path.exists():
            state = _common.load_checkpoint(path)
            candidates[stage] = (min(h["val_rmse"] for h in state["history"]), path)
    if not candidates:
        raise SystemExit(f"no checkpoint in {ckdir}; run `python -m astromorph_training {NAME} train`")
    if "teacher" not in candidates and "student" in candidates:
        candidates = {"single": candidates["student"]}
    stage = min(candidates, key=lambda k: candidates[k][0])
    net, state = _load_net(candidates[stage][1])
    state["stage"] = stage
    state["seconds_total"] = sum(h["seconds"] for h in state["history"])
    if stage == "student":
        teacher = json.loads((ckdir / "teacher" / "history.json").read_text())
        state["seconds_total"] += sum(h["seconds"] for h in teacher)
    state["candidates"] = {k: round(v[0], 5) for k, v in candidates.items()}
    log.info("validation RMSE of the candidates %s: using the %s", state["candidates"], stage)
    return net, state


def architecture(deployed):
    """What `from_architecture` needs to rebuild ``deployed`` (recorded in the card).

    Returns
    -------
    dict
        ``network``, ``widths``, ``stem`` (of the `GZ2Net` backbone) and ``tta``.
    """
    return {"network": "GZ2Net", **deployed.net.backbone.arch, "tta": deployed.tta}


def from_architecture(arch):
    """A `DeployedGZ2` of the recorded architecture, with untrained weights.

    Parameters
    ----------
    arch : dict
        As returned by `architecture` (``training.architecture`` in the card).
    """
    return DeployedGZ2(GZ2Net(widths=tuple(arch["widths"]), stem=arch["stem"]), arch["tta"]).eval()


def export_model(deployed, root):
    """Export the deployed graph to ``<root>/models/morphology-gz2/model.onnx``."""
    path = _common.model_dir(NAME, root) / "model.onnx"
    example = np.zeros((2, 3, STAMP_SIZE, STAMP_SIZE), dtype=np.float32)
    _common.export_onnx(deployed, example, path, input_name="input",
                        output_names=("fractions",), opset=18)
    return path


# ------------------------------------------------------------------------- evaluate
def _plot_scatter(pred, true, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(11, 7.5))
    for ax, lab in zip(axes.ravel(), MAIN_OUTPUTS):
        j = LABELS.index(lab)
        p, t = pred[:, j], true[:, j]
        ax.scatter(t, p, s=6, alpha=0.5, lw=0)
        hi = max(0.05, float(max(t.max(), p.max())) * 1.05)
        ax.plot([0, hi], [0, hi], "k--", lw=0.8)
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        r = np.corrcoef(t, p)[0, 1] if t.std() > 0 and p.std() > 0 else float("nan")
        rmse = np.sqrt(np.mean((p - t) ** 2))
        ax.set_title(f"{lab} ({NAMES[j]})\nRMSE {rmse:.3f}, r {r:.3f}", fontsize=9)
        ax.set_xlabel("true vote fraction")
        ax.set_ylabel("predicted")
    fig.suptitle(title)
    fig.tight_layout()
    _common.save_figure(fig, path, dpi=110)
    plt.close(fig)


def _plot_per_question(model_q, trivial_q, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qs = list(model_q)
    x = np.arange(len(qs))
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.bar(x - 0.2, [trivial_q[q] for q in qs], 0.4, label="training-set mean", color="0.7")
    ax.bar(x + 0.2, [model_q[q] for q in qs], 0.4, label="model", color="C0")
    ax.set_xticks(x, qs)
    ax.set_ylabel("RMSE (answers of the question)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    _common.save_figure(fig, path, dpi=110)
    plt.close(fig)


def _plot_comparison(morph_probs, morph_labels, pred, true, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(morph_labels)
    best = np.argmax(morph_probs, axis=1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    j_s, j_e = LABELS.index("Class1.1"), LABELS.index("Class2.1")
    for k, (j, name) in enumerate(((j_s, "smooth (Class1.1)"), (j_e, "edge-on (Class2.1)"))):
        ax = axes[k]
        data_t = [true[best == c, j] for c in range(len(classes))]
        data_p = [pred[best == c, j] for c in range(len(classes))]
        pos = np.arange(len(classes))
        ax.boxplot([d if len(d) else [np.nan] for d in data_t], positions=pos - 0.18, widths=0.3,
                   patch_artist=True, boxprops=dict(facecolor="0.8"), showfliers=False)
        ax.boxplot([d if len(d) else [np.nan] for d in data_p], positions=pos + 0.18, widths=0.3,
                   patch_artist=True, boxprops=dict(facecolor="C0"), showfliers=False)
        ax.set_xticks(pos, [f"{c}\n(n={int((best == i).sum())})" for i, c in enumerate(classes)],
                      fontsize=8)
        ax.set_ylabel(f"{name} vote fraction")
        ax.set_title(f"{name} by morphology class\n(grey: volunteers, blue: morphology-gz2)",
                     fontsize=9)
    ax = axes[2]
    e = classes.index("edge_on")
    ax.scatter(true[:, j_e], morph_probs[:, e], s=6, alpha=0.5, lw=0, label="volunteers")
    ax.scatter(pred[:, j_e], morph_probs[:, e], s=6, alpha=0.5, lw=0, label="morphology-gz2")
    ax.set_xlabel("Class2.1 (edge-on) fraction")
    ax.set_ylabel("morphology p(edge_on)")
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _common.save_figure(fig, path, dpi=110)
    plt.close(fig)


def _morphology_comparison(args, ids, pred, true, root, report_dir):
    """Scores of the ``morphology`` (GZ1) model on the same GZ2 galaxies, if it is shipped.

    Returns
    -------
    summary : dict
    stamps : numpy.ndarray or None
        The GZ2 stamps at the GZ1 field of view (None when skipped).
    """
    from scipy.stats import pearsonr, spearmanr

    import astromorph

    mdir = Path(args.out_dir) / "models" / _gz1.NAME
    if not (mdir / "model.onnx").is_file() or not (mdir / "card.json").is_file():
        return {"note": f"{mdir} not found; comparison skipped"}, None
    try:
        model = astromorph.load_model(str(mdir), providers="cpu")
    except astromorph.AstromorphError as exc:  # e.g. being re-exported right now
        log.warning("morphology comparison skipped: %s", exc)
        return {"note": f"{mdir} could not be loaded ({type(exc).__name__}); comparison skipped"}, None
    labels = list(model.labels)
    x = np.concatenate([preprocess_colour_cutout(_gz1.load_jpegs(image_paths(args.data_dir,
                                                                            ids[i:i + 128])),
                                                 crop_fraction=GZ1_EQUIVALENT_CROP)
                        for i in range(0, len(ids), 128)])
    probs = model.predict(x, progress=False)["probabilities"]
    best = np.argmax(probs, axis=1)
    j_s, j_f, j_e, j_sp = (LABELS.index(c) for c in ("Class1.1", "Class1.2", "Class2.1", "Class4.1"))
    per_class = {}
    for c, name in enumerate(labels):
        sel = best == c
        per_class[name] = {
            "n": int(sel.sum()),
            "mean_true_smooth_Class1.1": _r(true[sel, j_s].mean()) if sel.any() else None,
            "mean_pred_smooth_Class1.1": _r(pred[sel, j_s].mean()) if sel.any() else None,
            "mean_true_edge_on_Class2.1": _r(true[sel, j_e].mean()) if sel.any() else None,
            "mean_pred_edge_on_Class2.1": _r(pred[sel, j_e].mean()) if sel.any() else None,
            "mean_true_spiral_Class4.1": _r(true[sel, j_sp].mean()) if sel.any() else None,
            "mean_pred_spiral_Class4.1": _r(pred[sel, j_sp].mean()) if sel.any() else None,
        }

    def corr(a, b):
        ok = np.std(a) > 0 and np.std(b) > 0
        return {"pearson": _r(pearsonr(a, b)[0]) if ok else None,
                "spearman": _r(spearmanr(a, b)[0]) if ok else None}

    e, el, sp = labels.index("edge_on"), labels.index("elliptical"), labels.index("spiral")
    out = {
        "n": int(len(ids)),
        "input": (f"the same GZ2 JPEGs cropped to crop_fraction={GZ1_EQUIVALENT_CROP:.4f} so that "
                  "the morphology model sees its own field (4.568 petroR90_r; GZ2 cutouts are "
                  "8.48 petroR90_r wide, GZ1 cutouts 10.152)"),
        "morphology_class_counts": {n: int((best == c).sum()) for c, n in enumerate(labels)},
        "per_morphology_class": per_class,
        "correlations": {
            "p_edge_on_vs_true_Class2.1": corr(probs[:, e], true[:, j_e]),
            "p_edge_on_vs_pred_Class2.1": corr(probs[:, e], pred[:, j_e]),
            "p_elliptical_vs_true_Class1.1": corr(probs[:, el], true[:, j_s]),
            "p_elliptical_vs_pred_Class1.1": corr(probs[:, el], pred[:, j_s]),
            "p_spiral_vs_true_Class4.1": corr(probs[:, sp], true[:, j_sp]),
            "p_spiral+edge_on_vs_true_Class1.2": corr(probs[:, sp] + probs[:, e], true[:, j_f]),
        },
        "morphology_sha256": model.sha256,
    }
    _plot_comparison(probs, labels, pred, true, report_dir / "morphology_comparison.png",
                     f"morphology (GZ1) vs GZ2 vote fractions, GZ2 test split (n={len(ids)})")
    return out, x


def _structure(x, sigma=2.0):
    """Unit-norm high-pass grey images (stamp minus its Gaussian blur), central 48 x 48."""
    g = torch.from_numpy(np.asarray(x, np.float32)).mean(1, keepdim=True)
    r = int(3 * sigma)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    blur = F.conv2d(F.pad(g, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    blur = F.conv2d(F.pad(blur, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    h = (g - blur)[:, 0, 8:56, 8:56].reshape(len(x), -1).numpy().astype(np.float64)
    h -= h.mean(1, keepdims=True)
    return h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-9)


def _gz1_overlap(args, ids, gz1_field_stamps, threshold=0.7):
    """GZ2 test galaxies whose image is also in the GZ1 set (and in which GZ1 split).

    Both sets are SDSS gri composites; at the same field (the morphology
    model's stamp) a galaxy present in both gives the same small-scale
    structure. The match statistic is the correlation of high-pass filtered
    grey stamps (`_structure`): 0.97-0.99 for the same image at the same
    scale, about 0.7 with a 5 per cent scale mismatch, below 0.65 for 99 per
    cent of the best matches between different galaxies.

    For each match, the GZ2 crop that best reproduces the GZ1 stamp measures
    the ratio of the two pixel scales (nominally 0.024 / 0.02 = 1.2 in units
    of petroR90_r).
    """
    try:
        gz1 = _gz1.load_dataset(argparse.Namespace(
            data_dir=args.data_dir, smoke=False, out_dir=args.out_dir,
            new_split=getattr(args, "new_split", False)))
    except _common.SplitChanged as exc:  # the data are there; their split is not the shipped one
        return {"note": f"GZ1 cross-match skipped: {exc}"}
    except (OSError, SystemExit) as exc:  # no GZ1 data
        return {"note": f"GZ1 data unavailable: {exc}"}
    sim = _structure(gz1_field_stamps) @ _structure(gz1["stamps"]).T
    best, where = sim.max(1), sim.argmax(1)
    match = best >= threshold
    split_of = np.full(len(gz1["ids"]), "", dtype=object)
    for name, idx in zip(("train", "validation", "test"), gz1["split"]):
        split_of[idx] = name
    pairs = []
    if match.any():
        images = _gz1.load_jpegs(image_paths(args.data_dir, ids[match]))
        ref = _structure(gz1["stamps"][where[match]])
        crops = np.round(GZ1_EQUIVALENT_CROP * np.arange(0.80, 1.25, 0.005), 4)
        corr = np.stack([np.sum(_structure(preprocess_colour_cutout(images, crop_fraction=c)) * ref,
                                axis=1) for c in crops], axis=1)
        for k, (gid, j) in enumerate(zip(ids[match], where[match])):
            c = crops[corr[k].argmax()]
            pairs.append({"gz2_id": str(gid), "gz1_objid": str(gz1["ids"][j]),
                          "best_gz2_crop": float(c), "correlation": _r(corr[k].max()),
                          "pixel_scale_ratio_gz1_over_gz2": _r(GZ2_CUTOUT_PIXELS * c / (
                              GZ1_CUTOUT_PIXELS * CROP_FRACTION))})
    return {
        "method": "correlation of high-pass filtered grey stamps at the morphology model's field",
        "pairs": pairs,
        "threshold": threshold,
        "n_matched": int(match.sum()),
        "matched_in_morphology_split": {s: int(np.sum(split_of[where[match]] == s))
                                        for s in ("train", "validation", "test")},
        "best_correlation_quantiles": {str(q): _r(np.quantile(best, q))
                                       for q in (0.5, 0.9, 0.99, 1.0)},
        "matched": match,
    }


def _r(v, nd=4):
    return None if v is None or not np.isfinite(v) else round(float(v), nd)


def angular_scale_check(data_dir, n=200, seed=0):
    """Median galaxy size in GZ1 and GZ2 cutouts, as a fraction of the cutout width.

    For each of ``n`` random images per set: the radius where the azimuthal
    median of the grey display image falls to 3 sigma above the sky (from the
    cutout border). If GZ2 cutouts are 0.02 and GZ1 cutouts 0.024
    petroR90_r per pixel, GZ2 galaxies should look about 1.2 times larger.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = {}
    for key, pattern in (("gz1", "*.jpeg"), ("gz2", "*.jpg")):
        files = sorted((Path(data_dir) / key / "images").glob(pattern))
        if not files:
            return {"note": f"no {key} images"}
        radii = []
        for f in (files[i] for i in rng.choice(len(files), min(n, len(files)), replace=False)):
            a = np.asarray(Image.open(f).convert("L"), dtype=np.float32)
            h, w = a.shape
            border = np.concatenate([a[:8].ravel(), a[-8:].ravel(), a[:, :8].ravel(),
                                     a[:, -8:].ravel()])
            sky, noise = np.median(border), np.std(a[:8]) + 1.0
            yy, xx = np.indices(a.shape)
            r = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2).astype(int).ravel()
            order = np.argsort(r, kind="stable")
            counts = np.bincount(r)[: w // 2]
            bounds = np.concatenate([[0], np.cumsum(counts)])
            vals = a.ravel()[order]
            prof = np.array([np.median(vals[bounds[k]:bounds[k + 1]]) for k in range(w // 2)])
            radii.append(np.argmax(prof < sky + 3 * noise) / w)
        out[key] = float(np.median(radii))
    out["ratio_gz2_over_gz1"] = out["gz2"] / out["gz1"]
    out["expected_ratio"] = GZ1_PIXEL_SCALE_PER_PETRO_R90 / GZ2_PIXEL_SCALE_PER_PETRO_R90
    return {k: _r(v) for k, v in out.items()}


def _grey(x):
    return np.repeat(x.mean(axis=1, keepdims=True), 3, axis=1)


def evaluate(args):
    """Export the deployed graph and score the shipped ONNX file on the test split."""
    torch.set_num_threads(_get(args, "threads", 1))
    _common.set_seed(args.seed)
    root = _root(args)
    net, state = load_trained(args)
    data = load_dataset(args, trained=state.get("split_source"))
    tr, va, te = data["split"]
    stamps, y, ids = data["stamps"], data["y"], data["ids"]
    tta = _get(args, "tta", DEFAULT_TTA)
    deployed = DeployedGZ2(net, tta).eval()
    onnx_path = export_model(deployed, root)

    mean = y[tr].mean(0)
    report = {}
    for split, idx in (("validation", va), ("test", te)):
        pred = _common.run_onnx(onnx_path, stamps[idx])
        rep = rmse_report(pred, y[idx])
        rep["trivial"] = rmse_report(np.broadcast_to(mean, y[idx].shape), y[idx])
        rep["n"] = int(len(idx))
        rep["tree"] = tree_violation(pred)
        report[split] = rep
        if split == "test":
            test_pred = pred
    test = report["test"]
    no_tta = rmse_report(predict(net, stamps[te]), y[te])["rmse"]
    grey = rmse_report(_common.run_onnx(onnx_path, _grey(stamps[te])), y[te])["rmse"]
    with torch.no_grad():
        ref = deployed(torch.from_numpy(stamps[te][:128])).numpy()
    parity = float(np.max(np.abs(ref - test_pred[:128])))

    rdir = _common.report_dir(NAME, root)
    comparison, overlap, scale = {"note": "skipped in smoke mode"}, {}, {}
    if not args.smoke:
        comparison, gz1_field = _morphology_comparison(args, ids[te], test_pred, y[te], root, rdir)
        if gz1_field is not None:
            overlap = _gz1_overlap(args, ids[te], gz1_field)
            matched = overlap.pop("matched", None)
            if matched is not None and matched.any() and (~matched).any():
                overlap["test_rmse_without_matched"] = _r(
                    rmse_report(test_pred[~matched], y[te][~matched])["rmse"])
        scale = angular_scale_check(args.data_dir)

    metrics = {
        "model": NAME,
        "split": "test",
        "command": f"python -m astromorph_training {NAME} evaluate",
        "source": f"models/{NAME}/model.onnx run with onnxruntime (CPU) on the held-out test split",
        "labels": list(LABELS),
        "names": list(NAMES),
        "n_test": test["n"],
        "rmse": test["rmse"],
        "rmse_trivial": test["trivial"]["rmse"],
        "rmse_without_tta": no_tta,
        "rmse_greyscale_input": grey,
        "per_question": {q: {"rmse": _r(v), "rmse_trivial": _r(test["trivial"]["per_question"][q])}
                         for q, v in test["per_question"].items()},
        "per_output": {lab: {"name": NAMES[j], "rmse": _r(test["per_output"][lab]),
                             "rmse_trivial": _r(test["trivial"]["per_output"][lab])}
                       for j, lab in enumerate(LABELS)},
        "tree_property_test_outputs": test["tree"],
        "validation": {"n": report["validation"]["n"], "rmse": report["validation"]["rmse"],
                       "rmse_trivial": report["validation"]["trivial"]["rmse"]},
        "morphology_comparison": comparison,
        "gz1_overlap": overlap,
        "angular_scale_check": scale,
        "tta": tta,
        "torch_onnx_max_abs_diff": parity,
        "onnx_sha256": _common.sha256sum(onnx_path),
        "split_definition": {"seed": SPLIT_SEED, "fractions": list(SPLIT_FRACTIONS),
                             "counts": [int(len(i)) for i in data["split"]]},
        "training": {"epochs": state["epochs"], "best_epoch": state["epoch"] + 1,
                     "seed": _common.recorded_seed(_stored_recipe(state)),
                     "init": state.get("init"),
                     "init_sha256": state.get("init_sha256"), "stage": state["stage"],
                     "validation_rmse_of_candidates_no_tta": state["candidates"],
                     "n_train": state.get("n_train"), "n_pseudo_labelled": state.get("n_pseudo", 0),
                     "command": train_command(state),
                     "train_seconds": round(state["seconds_total"], 1),
                     "best_val_rmse_no_tta": state["history"][-1]["val_rmse"]},
        "reference": {"kaggle_winner_rmse": 0.07492,
                      "note": "Dieleman et al. 2015, trained on 55,000+ galaxies (about 23x the 2,426 used here)"},
        "smoke": bool(args.smoke),
    }
    path = _common.write_metrics(NAME, metrics, root)
    title = f"morphology-gz2, GZ2 test split (n={test['n']})"
    _plot_scatter(test_pred, y[te], rdir / "scatter_main_questions.png", title)
    _plot_per_question(test["per_question"], test["trivial"]["per_question"],
                       rdir / "rmse_per_question.png",
                       f"{title}: RMSE {test['rmse']:.4f} (mean predictor "
                       f"{test['trivial']['rmse']:.4f})")
    log.info("test RMSE %.4f (trivial %.4f, no TTA %.4f, grey %.4f) per question %s | wrote %s",
             test["rmse"], test["trivial"]["rmse"], no_tta, grey,
             {k: round(v, 4) for k, v in test["per_question"].items()}, path)
    return metrics


# --------------------------------------------------------------------------- export
def questions_for_card():
    """The decision tree as written in the card."""
    out = []
    for q, text, answers, parent in QUESTIONS:
        out.append({"question": f"Q{q}", "text": text,
                    "answers": {f"Class{q}.{j + 1}": a for j, a in enumerate(answers)},
                    "sum_equals": parent or 1.0})
    return out


def train_command(state):
    """The ``train`` command line that produced a checkpoint (from its stored arguments)."""
    a = state.get("args", {})
    cmd = f"python -m astromorph_training {NAME} train"
    if a.get("init", "morphology") != "morphology":  # the default
        cmd += f" --init {a.get('init') or 'none'}"
    if a.get("epochs") not in (None, "None"):
        cmd += f" --epochs {a['epochs']}"
    if state.get("stage") == "student" or a.get("student_epochs", "0") not in ("0", "None"):
        cmd += f" --student-epochs {a.get('student_epochs')}"
        if a.get("student_from_teacher") == "True":
            cmd += " --student-from-teacher"
    return cmd


def _initialisation_text(state):
    """The card's account of where the backbone started, with the commands that rebuild it."""
    if not state.get("init"):
        return "random"
    widths = list(state.get("widths") or WIDTHS)
    stem = state.get("stem", _gz1.STEM_1X)
    options = (f" {_gz1.RECIPE_1X}" if (stem, widths) == (_gz1.STEM_1X, list(_gz1.WIDTHS_1X))
               else f" --stem {stem} --widths {' '.join(map(str, widths))}")
    return (f"convolutional layers from the morphology (GZ1) model's training checkpoint "
            f"{state.get('init')} (sha256 {state.get('init_sha256')}), written by "
            f"'python -m astromorph_training morphology train{options} --out-dir DIR'; that, then "
            f"'morphology-gz2 build --epochs {state['epochs']} --init "
            "DIR/training/checkpoints/morphology/last.pt', rebuild this model")


def _n_params(state):
    """Parameters (millions) of the network stored in a checkpoint."""
    net = GZ2Net(widths=tuple(state.get("widths") or WIDTHS), stem=state.get("stem", _gz1.STEM_1X))
    return sum(p.numel() for p in net.parameters()) / 1e6


def _card(metrics, state, tta, throughput, size_bytes):
    from astromorph import __version__ as astromorph_version

    train_min = state["seconds_total"] / 60
    student = state["stage"] == "student"
    cutout = GZ2_CUTOUT_PIXELS * GZ2_PIXEL_SCALE_PER_PETRO_R90
    if metrics:
        per_q = {q: v["rmse"] for q, v in metrics["per_question"].items()}
        comp = metrics.get("morphology_comparison") or {}
        met = {
            "split": "test",
            "command": f"python -m astromorph_training {NAME} evaluate",
            "n": metrics["n_test"],
            "rmse": round(metrics["rmse"], 4),
            "rmse_training_mean_predictor": round(metrics["rmse_trivial"], 4),
            "rmse_per_question": per_q,
            "rmse_greyscale_input": round(metrics["rmse_greyscale_input"], 4),
            "kaggle_winner_rmse_for_context": 0.07492,
            "morphology_model_agreement": (comp.get("correlations") if comp else None),
            "report": f"training/reports/{NAME}/metrics.json",
        }
    else:
        met = {"split": "test", "command": f"python -m astromorph_training {NAME} evaluate",
               "note": "not evaluated"}
    return {
        "name": NAME,
        "version": "1.1.0",
        "changes": ("1.1.0: retrained from the shipped morphology model's checkpoint with its "
                    "widths (0.93 M parameters; 1.0.0 started from a copied earlier GZ1 "
                    "checkpoint with 0.6 M): held-out RMSE 0.0975 -> 0.0971"),
        "task": "regression",
        "summary": "Galaxy Zoo 2 decision-tree vote fractions (37 answers to 11 questions) from "
                   "SDSS-like gri colour cutouts",
        "description": (
            f"Small CNN (about {_n_params(state):.1f} M parameters, the morphology model's "
            "architecture, started from "
            "its Galaxy Zoo 1 weights) trained on "
            "Galaxy Zoo 2 (Kaggle 'Galaxy Challenge') SDSS gri colour cutouts to predict the 37 "
            "weighted vote fractions of the GZ2 decision tree (Willett et al. 2013): smooth / "
            "featured, edge-on, bar, spiral, bulge prominence, roundness, odd features, bulge "
            "shape, arm winding and number. These are fractions of volunteers, not probabilities: "
            "the answers to a question sum to the fraction of volunteers who reached it. The "
            "output layer enforces this tree (per-question softmax scaled by the parent answer's "
            "fraction, as Dieleman, Willett & Dambre 2015), inside the graph, so every output row "
            "is non-negative and consistent. The graph averages the fractions over "
            f"{tta} orientations of the stamp (flips / 90-degree rotations). Trained on 2,400 "
            "galaxies only (the Kaggle winner used about 23 times more): see metrics for the "
            "per-question accuracy; rare answers (odd features, arm counts) are barely better "
            "than the population mean."),
        "column_prefix": "gz2",
        "input": {
            "name": "input",
            "shape": [3, STAMP_SIZE, STAMP_SIZE],
            "dtype": "float32",
            "family": "optical",
            "channels": list(_gz1.OPTICAL_CHANNELS),
            "single_band": "replicate",
            "preprocessing": "astromorph.preprocessing.preprocess_optical",
            "preprocessing_options": _gz1.optical_preprocessing_options(),
            "angular_size": {
                "kind": "petrosian",
                "radius_column": "petroR90_r",
                "radius_unit": "arcsec",
                "cutout_size_per_petro_r90": round(cutout, 4),
                "stamp_size_per_petro_r90": round(CROP_FRACTION * cutout, 4),
                "convention": (
                    f"Kaggle GZ2 cutouts are {GZ2_CUTOUT_PIXELS} pixels wide at "
                    f"{GZ2_PIXEL_SCALE_PER_PETRO_R90} * petroR90_r arcsec per pixel (Willett et "
                    f"al. 2013), i.e. {cutout:.2f} petroR90_r across -- not the GZ1 scale of the "
                    "morphology model (0.024 * petroR90_r per pixel, 10.152 petroR90_r across; "
                    "astromorph.preprocessing.cutout_size_from_petrosian is that GZ1 convention). "
                    f"The network sees the central {CROP_FRACTION:g} of a GZ2 cutout "
                    f"({CROP_FRACTION * cutout:.3f} petroR90_r). Cut a square of "
                    "cutout_size_per_petro_r90 * petroR90_r arcsec centred on the galaxy and use "
                    "the default crop_fraction, or a square of stamp_size_per_petro_r90 * "
                    "petroR90_r with crop_fraction=1.0. A GZ1-scaled cutout with the default crop "
                    "shows the galaxy 1.2 times smaller than in training (within the +-12 per "
                    "cent zoom augmentation only in part)."),
                "checked_on_the_data": {
                    "median_isophotal_radius_over_width": (metrics or {}).get("angular_scale_check"),
                    "same_galaxy_in_gz1_and_gz2": ((metrics or {}).get("gz1_overlap") or {}).get("pairs"),
                    "note": ("ratio_gz2_over_gz1: median 3-sigma isophotal radius of GZ2 galaxies "
                             "over that of GZ1 galaxies, each relative to its cutout (1.2 expected "
                             "from the pixel scales; the two samples differ). "
                             "same_galaxy_in_gz1_and_gz2: galaxies found in both sets, with the "
                             "GZ2 crop that best reproduces the GZ1 stamp and the implied "
                             "GZ1/GZ2 pixel-scale ratio (1.2 expected)."),
                },
            },
            "normalisation": ("8-bit display values / 255 after cropping the central crop_fraction "
                              f"and area-averaging to {STAMP_SIZE} x {STAMP_SIZE}; "
                              "colour axis first; no further scaling"),
        },
        "outputs": [{
            "name": "fractions",
            "kind": "values",
            "labels": list(LABELS),
            "names": list(NAMES),
            "description": ("Galaxy Zoo 2 weighted vote fractions (Kaggle Class1.1 ... Class11.6), "
                            f"averaged over {tta} orientations; non-negative; the answers to each "
                            "question sum to 1 (Q1, Q6) or to the fraction of the answer leading "
                            "to the question (see 'questions')"),
            "orientations_averaged": tta,
            "questions": questions_for_card(),
        }],
        "training": {
            "data": ("3,234 galaxies of the Kaggle Galaxy Zoo 2 'Galaxy Challenge' training set: "
                     "SDSS gri colour JPEGs (424 x 424) with the 37 weighted vote fractions "
                     f"(training solutions), {state['n_train']} of them for training"
                     + (f"; plus {state['n_pseudo']} Kaggle images without votes, pseudo-labelled by "
                        "a teacher network (noisy student)" if student else "")),
            "terms": ("Images: Sloan Digital Sky Survey public data (acknowledge SDSS, "
                      "https://www.sdss.org/collaboration/citing-sdss/), as distributed for the "
                      "Galaxy Zoo Kaggle challenge. Vote fractions: Galaxy Zoo 2, Willett et al. "
                      "2013, MNRAS 435, 2835. Architecture of the output layer: Dieleman, Willett "
                      "& Dambre 2015, MNRAS 450, 1441."),
            "split": (f"random {'/'.join(str(int(f * 100)) for f in SPLIT_FRACTIONS)} "
                      f"train/validation/test, seed {SPLIT_SEED}"),
            "command": train_command(state),
            "initialisation": _initialisation_text(state),
            "epochs": state["epochs"],
            "selected_epoch": state["epoch"] + 1,
            "stage": state["stage"],
            "method": ("MSE on the 37 tree-normalised outputs, AdamW, cosine learning rate, EMA "
                       "weights, epoch with the lowest validation RMSE; augmentation: any "
                       "rotation, flips, shifts, zooms, PSF blur, noise, stretch and colour "
                       f"jitter, greyscale (p={GREY_PROBABILITY})"
                       + ("; noisy student: a teacher trained on the labelled images gives "
                          "8-orientation soft targets for the unlabelled images, the shipped "
                          "student continues from the teacher on both" if student else "")),
            "time": f"{train_min:.0f} min",
            "machine": f"CPU only ({platform.processor() or platform.machine()}, shared 2 cores), "
                       f"torch {torch.__version__}, 1 thread",
        },
        "metrics": met,
        "performance": {
            "onnxruntime_cpu_threads": 2, "batch": 256,
            "stamps_per_second": round(throughput["wall"]),
            "stamps_per_cpu_second_one_thread": round(throughput["cpu"]),
            "onnx_bytes": size_bytes,
            "note": _common.THROUGHPUT_NOTE,
        },
        "astromorph_version": astromorph_version,
        "licence": ("model: BSD-3-Clause (as astromorph); trained on SDSS public data and Galaxy Zoo 2 "
                    "vote fractions, to be acknowledged as in training.terms"),
    }


def export(args):
    """Export ``models/morphology-gz2/model.onnx`` (the evaluated graph) and write its card."""
    torch.set_num_threads(_get(args, "threads", 1))
    root = _root(args)
    net, state = load_trained(args)
    metrics_path = _common.report_dir(NAME, root) / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    tta = metrics["tta"] if metrics else _get(args, "tta", DEFAULT_TTA)
    if metrics is None:
        log.warning("%s missing: the card will carry no test metrics "
                    "(run `evaluate` and then `export` again)", metrics_path)
    deployed = DeployedGZ2(net, tta).eval()
    path = export_model(deployed, root)
    sha = _common.sha256sum(path)
    if metrics is not None and metrics.get("onnx_sha256") != sha:
        log.warning("exported graph differs from the evaluated one (sha256 %s vs %s); "
                    "run evaluate again", sha, metrics.get("onnx_sha256"))
    batch = 16 if args.smoke else 256  # smoke: exercise the code path only
    throughput = {
        "wall": _common.onnx_throughput(path, (3, STAMP_SIZE, STAMP_SIZE), batch=batch, threads=2,
                                        repeats=1 if args.smoke else 7),
        "cpu": _gz1.cpu_time_throughput(path, batch=batch, repeats=1 if args.smoke else 4),
    }
    log.info("onnxruntime throughput: %.0f stamps/s wall (2 threads, batch 256, shared machine), "
             "%.0f stamps per CPU-second of one thread; %.2f MB", throughput["wall"],
             throughput["cpu"], path.stat().st_size / 1e6)
    # The tree property on the shipped file, for arbitrary inputs.
    rnd = np.random.default_rng(0).uniform(-0.5, 1.5, (64, 3, STAMP_SIZE, STAMP_SIZE))
    viol = tree_violation(_common.run_onnx(path, rnd.astype(np.float32)))
    if viol["min_value"] < 0 or viol["max_sum_error"] > 1e-5:
        raise SystemExit(f"exported graph violates the decision tree: {viol}")
    card = _card(metrics, state, tta, throughput, path.stat().st_size)
    card["training"]["architecture"] = architecture(deployed)
    card["single_band_graph"] = _common.single_band_graph(path, size=STAMP_SIZE)
    card_path = _common.write_card(NAME, card, root)
    ids, _ = read_votes(args.data_dir)
    x = preprocess_colour_cutout(_gz1.load_jpegs(image_paths(args.data_dir, ids[:16])))
    diff = _common.check_parity(deployed, x, str(card_path.parent), atol=1e-5, rtol=1e-4)
    _common.write_parity_reference(
        NAME, deployed, preprocess_colour_cutout(_common.parity_raw_inputs("colour")), path,
        root=root)
    log.info("torch vs astromorph ONNX parity: max abs diff %.2e; tree check %s", diff, viol)
    log.info("wrote %s and %s", path, card_path)
    return card_path
