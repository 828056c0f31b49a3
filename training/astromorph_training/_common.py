"""Pieces every model's training module shares.

Paths, seeds, calibration (temperature scaling), classification metrics and
figures, ONNX export, model cards, and the torch-versus-ONNX parity check.
"""
import contextlib
import csv
import functools
import hashlib
import json
import logging
import os
import random
import tempfile
from glob import escape as glob_escape
from pathlib import Path

import numpy as np
# the classification measures and figures of the model cards and reports are astromorph's own
# (`astromorph.evaluate_labels` gives users the same numbers on their labels): one
# implementation of each
from astromorph._evaluate import (classification_report, confusion_matrix_figure,
                                  expected_calibration_error, reliability_figure)

__all__ = [
    "repo_root", "resolve_data_dir", "set_seed", "check_resume", "train_command", "checkpoint_dir", "cache_dir",
    "report_dir", "model_dir", "fit_temperature", "softmax",
    "expected_calibration_error", "ece_noise_floor", "classification_report", "plot_confusion_matrix",
    "plot_reliability", "export_onnx", "write_card", "write_metrics", "check_parity",
    "sha256sum", "SplitChanged", "onnx_throughput", "save_checkpoint", "load_checkpoint",
    "resume_checkpoint", "set_aside", "MODEL_KEY", "write_text", "save_npz", "atomic_path", "positive_int",
    "nonnegative_int", "seed_int", "recorded_seed", "save_figure", "synthetic_scenes",
    "parity_raw_inputs", "write_parity_reference", "PARITY_REFERENCE", "load_onnx_weights",
    "shipped_torch_model", "MODULES", "read_csv",
    "split_fingerprint", "check_split_source", "check_resumed_split",
]

log = logging.getLogger(__name__)

#: Shipped model name -> module of this package that trains it.
MODULES = {
    "morphology": "morphology",
    "radio-morphology": "radio",
    "real-bogus": "realbogus",
    "embedding": "embedding",
    "morphology-gz2": "gz2",
}


# --------------------------------------------------------------------------- paths
def _is_checkout(folder):
    return (folder / "training" / "astromorph_training").is_dir() and (folder / "models").is_dir()


@functools.lru_cache(maxsize=None)
def _find_repo_root(cwd):
    here = Path(__file__).resolve().parents[2]  # training/.. when run from the checkout
    if _is_checkout(here):
        return here
    for folder in (cwd, *cwd.parents):  # an installed copy: the checkout we are run in
        if _is_checkout(folder):
            return folder
    log.warning("astromorph_training is installed outside an astromorph checkout and %s is not "
                "inside one: models/, training/ and ../shared/data are taken relative to it", cwd)
    return cwd


def repo_root():
    """The astromorph repository whose ``models/`` and ``training/`` are rebuilt.

    ``training/..`` when the package runs from the checkout (an editable install);
    for an installed copy (``pip install ./training``), the nearest folder at or
    above the working directory holding ``training/astromorph_training`` and
    ``models/``; failing both, the working directory itself.
    """
    return _find_repo_root(Path.cwd().resolve())


def resolve_data_dir(arg=None):
    """Real data directory: ``arg``, else ``$ASTROMORPH_DATA``, else ``../shared/data``.

    The default is resolved next to the repository (``<repo>/../shared/data``, see
    `repo_root`).
    """
    source = "--data-dir"
    if arg is None:
        arg, source = os.environ.get("ASTROMORPH_DATA"), "$ASTROMORPH_DATA"
    if not arg:  # unset or empty
        arg, source = repo_root().parent / "shared" / "data", "the default, beside the repository"
    path = Path(arg).expanduser().resolve()
    if not path.is_dir():
        raise SystemExit(f"data directory {str(path)!r} ({source}) is no folder: pass "
                         "--data-dir DIR or set ASTROMORPH_DATA to the folder holding gz1/, gz2/ "
                         "and ztf_alerts/ (docs/training.md)")
    return path


def read_csv(path, columns):
    """``(line number, row dict)`` of each data row of the CSV file ``path``.

    Read as UTF-8, with or without a byte-order mark (spreadsheet exports write one,
    which would rename the first column); columns beyond ``columns`` are ignored.
    A header without one of ``columns``, or a row with fewer fields than the header,
    stops in one line naming the file.
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise SystemExit(f"{path}: no column {', '.join(map(repr, missing))} in its "
                             f"header {reader.fieldnames}")
        for row in reader:
            if any(row[c] is None for c in columns):
                raise SystemExit(f"{path}, line {reader.line_num}: fewer fields than the "
                                 f"header's {len(reader.fieldnames)}")
            yield reader.line_num, row


def split_fingerprint(*columns):
    """sha256 (hex) of the rows ``zip(*columns)`` in order, one ``a,b,...`` line each."""
    text = "".join(",".join(map(str, row)) + "\n" for row in zip(*columns))
    return hashlib.sha256(text.encode()).hexdigest()


class SplitChanged(SystemExit):
    """`check_split_source` refused a file (the data are there; the split would change): a
    `SystemExit` in one line, as before, that callers can tell from missing data."""


def check_split_source(path, expected, *columns, args=None, trained=None):
    """Refuse to draw a held-out split from other rows than the shipped models' split.

    The seeded splits (`morphology.stratified_split`, `gz2.split_indices`) depend on the
    number and the order of the rows of the file they are drawn from: a galaxy added,
    removed or moved moves others between the training and the held-out sets, so a
    retrained model's test numbers are no longer comparable and ``evaluate`` would score
    the shipped model on galaxies it was trained on. ``expected`` is the
    `split_fingerprint` of ``columns`` as the shipped models read them; any other rows
    stop in one line unless ``args.new_split`` (``--new-split``: a deliberate new split,
    logged as a warning). Returns the fingerprint.

    ``trained`` is the fingerprint a checkpoint about to be scored records (its split's
    source at ``train``): other rows are refused, ``--new-split`` or not, since the split
    drawn from them is not the checkpoint's and their held-out galaxies hold some of its
    training ones (a run trained with ``--new-split``, scored on the shipped file, or the
    reverse).
    """
    digest = split_fingerprint(*columns)
    if trained is not None and digest != trained:
        raise SystemExit(f"{path} ({len(columns[0])} rows, fingerprint {digest[:12]}) is not the "
                         f"file the checkpoint's held-out split was drawn from (fingerprint "
                         f"{trained[:12]}): the split drawn from it puts galaxies the checkpoint "
                         "was trained on into the held-out sets; pass the data it was trained on")
    if digest != expected:
        message = (f"{path} ({len(columns[0])} rows, fingerprint {digest[:12]}) is not the file "
                   f"the shipped models' held-out split was drawn from (fingerprint "
                   f"{expected[:12]}): the split depends on its rows and their order, so "
                   "added, removed or reordered rows move galaxies between training and "
                   "held-out sets")
        if not getattr(args, "new_split", False):
            raise SplitChanged(message + "; restore the file, or pass --new-split to draw a new "
                             "split deliberately (its numbers are then not comparable with the "
                             "shipped model's)")
        log.warning("%s; drawing a new split (--new-split)", message)
    return digest


def check_resumed_split(path, state, source):
    """Refuse to resume the checkpoint ``path`` (contents ``state``) on a split drawn from
    other rows than its own (``state["split_source"]``, where recorded; ``source`` is the
    fingerprint `check_split_source` returned now): it would train on galaxies that its
    first epochs held out, and then be scored on galaxies it trained on."""
    recorded = state.get("split_source")
    if recorded is not None and source is not None and recorded != source:
        raise SystemExit(f"{path} was trained on a split drawn from rows of fingerprint "
                         f"{recorded[:12]}, the data give {source[:12]}: pass the data it was "
                         "trained on, or --restart")


def _subdir(*parts, root=None):
    path = Path(root or repo_root()).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def smoke_root(name):
    """Stand-in repository root for ``--smoke`` runs of model ``name`` (never the real
    ``models/``): ``<tempdir>/astromorph-smoke/<name>/``."""
    return _subdir("astromorph-smoke", name, root=tempfile.gettempdir())


def checkpoint_dir(name, root=None):
    """``training/checkpoints/<name>/`` (git-ignored)."""
    return _subdir("training", "checkpoints", name, root=root)


def cache_dir(root=None):
    """``training/cache/`` (git-ignored) for preprocessed arrays."""
    return _subdir("training", "cache", root=root)


def report_dir(name, root=None):
    """``training/reports/<name>/`` for metrics.json and figures (committed)."""
    return _subdir("training", "reports", name, root=root)


def model_dir(name, root=None):
    """``models/<name>/`` for ``model.onnx`` and ``card.json``."""
    return _subdir("models", name, root=root)


def positive_int(text):
    """``argparse`` type of counts such as ``--epochs`` and ``--threads``: an int >= 1.

    Zero and negative values are refused on the command line (one line, exit status 2)
    instead of falling back to the default (``--epochs 0`` trained the full default
    epochs) or failing deep inside torch (``--threads -1``).
    """
    return _int_at_least(text, 1)


def nonnegative_int(text):
    """``argparse`` type of integers where 0 means something (``--seed``, ``radio-morphology
    --stage4``, ``morphology-gz2 --student-epochs``): an int >= 0.

    Negative values are refused on the command line (one line, exit status 2) instead of a
    traceback from numpy (a negative seed) or torch (a layer of -1 channels).
    """
    return _int_at_least(text, 0)


def seed_int(text):
    """``argparse`` type of ``--seed``: an int from 0 to 2**32 - 1, what `set_seed` (numpy's
    global seeding) takes.

    Larger values are refused on the command line (one line, exit status 2) instead of a
    ValueError traceback from numpy once the step has started.
    """
    return _int_at_least(text, 0, high=2 ** 32 - 1)


def _int_at_least(text, low, *, high=None):
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"must be at most {high}, not {value}")
    return value


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside ``path`` to write; on success it is flushed to disk and
    renamed over ``path``, so that a run killed (or out of disk) during the write leaves
    the previous file (or none), never a truncated one the next step cannot read. On
    failure the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _remove_stale_temporaries(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_temporaries(path):
    """Remove the temporary files of ``path`` left by runs killed outright (SIGKILL, a
    power cut: their cleanup never ran), each as large as a checkpoint. A temporary file
    of a process still alive (another run writing now) is left alone."""
    for old in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        pid = old.name[len(path.name) + 2:-len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        log.info("removing %s, left by a run (process %s) that was killed while writing",
                 old, pid)
        old.unlink(missing_ok=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # another user's process, or one we cannot ask about: keep its file
    return True


def _fsync_folder(folder):
    """Flush the folder entry of a rename to disk (POSIX), so that a power cut after
    `atomic_path` cannot bring back the previous file."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path, text):
    """``Path(path).write_text(text)`` atomically (`atomic_path`). Returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_figure(fig, path, *, dpi):
    """Save the matplotlib figure ``fig`` as ``path`` atomically (`atomic_path`), in the
    format its extension names (the temporary file's name ends in ``.tmp``), at ``dpi``.
    Every figure of the reports is saved through it. Returns ``path``."""
    from astromorph._plotting import picture_format, save_figure as _save

    with atomic_path(path) as tmp:
        _save(fig, tmp, dpi=dpi, fmt=picture_format(path))
    return Path(path)


def save_npz(path, **arrays):
    """``np.savez(path, **arrays)`` atomically (`atomic_path`). Returns ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


#: Key under which `save_checkpoint` records the model a checkpoint belongs to.
MODEL_KEY = "astromorph_model"


def save_checkpoint(obj, path, *, model=None):
    """``torch.save(obj, path)`` atomically (`atomic_path`): a run killed during the save
    leaves the previous ``path`` intact, which the next run resumes from. Returns ``path``.

    ``model`` (a shipped model's name, for the ``last.pt`` a run resumes from) is saved
    under `MODEL_KEY`, so that `resume_checkpoint` refuses a checkpoint of another model.
    """
    import torch

    if model is not None:
        obj = {**obj, MODEL_KEY: model}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_checkpoint(path, *, hint="rerun the train step that wrote it (with --restart: the "
                                   "damaged file is kept as a .bak file)"):
    """``torch.load(path)`` on the CPU; a file torch cannot read (truncated by a copy or a
    full disk, or no checkpoint at all) stops in one line naming it and ``hint`` (what to
    do), instead of a torch traceback."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # zip, pickle or EOF errors of a damaged file
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise SystemExit(f"{path} is no readable torch checkpoint ({type(exc).__name__}: "
                         f"{reason}): {hint}") from None


def set_aside(path):
    """Rename ``path`` to ``<name>.<UTC time>.bak`` beside it (never over another file);
    returns the new path."""
    import time

    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1000):
        target = path.with_name(f"{path.name}.{stamp}{f'.{n}' if n else ''}.bak")
        if not target.exists():
            break
    else:  # pragma: no cover - a thousand restarts within one second
        raise SystemExit(f"{path}: no free name to set it aside")
    os.rename(path, target)  # atomic: the checkpoint is under one name or the other
    return target


def resume_checkpoint(path, *, model, restart=False, keep=True, also=()):
    """The checkpoint ``path`` (a run's ``last.pt``) to continue, or None to train afresh.

    Without ``restart``, an existing ``path`` is read (`load_checkpoint`: a damaged file
    stops in one line) and refused in one line if `save_checkpoint` recorded another
    ``model`` in it; a missing one is logged with its full path (a mistyped ``--out-dir``
    shows as a fresh start in another folder).

    With ``restart`` (``--restart``), the checkpoints the fresh run would overwrite,
    ``path`` and those of ``also`` (the run's ``best.pt``), are renamed aside
    (`set_aside`; logged with their new names, which restore them), never deleted: a
    mistyped ``--restart`` costs no training. ``keep=False`` (``--smoke`` runs, in a
    throwaway folder of their own) leaves them to be overwritten.
    """
    path = Path(path)
    if restart:
        for old in (path, *map(Path, also)):
            if keep and old.is_file():
                log.warning("--restart: kept the previous %s as %s (rename it back to resume "
                            "it)", old, set_aside(old))
        return None
    if not path.exists():
        log.info("no checkpoint %s: training from scratch", path.resolve())
        return None
    state = load_checkpoint(path, hint="move it away or pass --restart (which keeps it as "
                                       f"{path.name}.<time>.bak) to train afresh")
    other = state.get(MODEL_KEY, model) if isinstance(state, dict) else None
    if other != model:
        what = f"a {other} checkpoint" if other else "no training checkpoint"
        raise SystemExit(f"{path} is {what}, not one of {model}: move it away or pass "
                         "--restart to train afresh")
    return state


def check_resume(checkpoint, stored_args, args, keys, *, labels=None, trained=None, epochs=None):
    """Refuse to resume ``checkpoint`` with a different recipe.

    ``stored_args`` are the options saved with the checkpoint (values as strings);
    ``keys`` the ones a resumed run must share (the seed, learning rate, loss...;
    ``epochs`` and ``threads`` may change). Raises `SystemExit` naming the first
    difference, so a checkpoint is never continued under a command it did not run.
    A key missing from ``stored_args`` (a checkpoint older than the key) is not checked.

    ``labels`` maps a key to how the message names it when it is no command-line
    option of its own (e.g. ``"epochs per learning-rate cycle (--epochs / --cycles)"``);
    other keys are named as ``--key``.

    ``trained`` (epochs the checkpoint has trained) and ``epochs`` (this run's total),
    when given, refuse a checkpoint already past the run's ``--epochs``: continuing
    would train nothing and record a shorter run than the network had. Fewer or
    equal (a finished run: kept, nothing trained) and more (the run continues to the
    new total) pass.
    """
    labels = labels or {}
    for key in keys:
        if key in stored_args and str(getattr(args, key, None)) != stored_args[key]:
            option = labels.get(key, "--" + key.replace("_", "-"))
            raise SystemExit(f"{checkpoint} was trained with {option} {stored_args[key]}, this "
                             f"run asks for {getattr(args, key, None)}: pass --restart to start "
                             "again, or the same options to resume")
    if trained is not None and epochs is not None and trained > epochs:
        raise SystemExit(f"{checkpoint} has already trained {trained} epochs, more than this "
                         f"run's --epochs {epochs}: pass --restart to start again, or --epochs "
                         f"{trained} or more to keep it")


def train_command(model, stored_args, keys):
    """``python -m astromorph_training MODEL train`` with the options of ``keys`` whose
    recorded values (``stored_args``: the run's options as strings, as checkpoints keep
    them) differ from the command line's defaults: the command that repeats the run."""
    import ast

    from .__main__ import build_parser

    parser = build_parser(model)
    opts = []
    for key in keys:
        if key not in stored_args:
            continue
        value, default = stored_args[key], parser.get_default(key)
        if value in ("None", str(default)):
            continue
        if value.startswith(("[", "(")):
            value = " ".join(str(v) for v in ast.literal_eval(value))
        opts.append(f"--{key.replace('_', '-')} {value}")
    return " ".join([f"python -m astromorph_training {model} train", *opts])


def recorded_seed(state):
    """The ``--seed`` a checkpoint was trained with (int; None where it kept no record).

    ``state`` is a checkpoint dict keeping its options as strings under ``args``, or such a
    dict of options itself. Evaluate's metrics record this one, not the evaluate command
    line's ``--seed`` (0 unless given again).
    """
    seed = state.get("args", state).get("seed")
    return None if seed is None else int(seed)


def set_seed(seed):
    """Seed Python, numpy and torch (CPU), and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of this subproject
        return
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


# --------------------------------------------------------------------- calibration
def softmax(logits, temperature=1.0):
    """Numerically stable softmax over the last axis of ``logits / temperature``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(logits, labels, *, bounds=(0.05, 20.0)):
    """Temperature that minimises the negative log-likelihood (Guo et al. 2017).

    Parameters
    ----------
    logits : array_like, shape (N, K)
        Uncalibrated logits on validation data. For a binary score pass
        ``np.stack([np.zeros_like(z), z], axis=1)``.
    labels : array_like of int, shape (N,)
        True class indices.

    Returns
    -------
    float
        The temperature ``T``; calibrated probabilities are ``softmax(logits / T)``.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)

    def nll(log_t):
        p = softmax(logits, np.exp(log_t))[np.arange(len(labels)), labels]
        return -np.mean(np.log(np.clip(p, 1e-12, None)))

    res = minimize_scalar(nll, bounds=np.log(bounds), method="bounded")
    return float(np.exp(res.x))


# ------------------------------------------------------------------------- metrics
def plot_confusion_matrix(cm, class_names, path, title=""):
    """Save a confusion matrix (counts, shaded by row-normalised recall) as PNG: the figure
    of `astromorph.evaluate_labels` (``astromorph._evaluate.confusion_matrix_figure``)."""
    return save_figure(confusion_matrix_figure(cm, class_names, title=title), path, dpi=120)


def plot_error_gallery(images, probs, labels, class_names, path, title="", *, n=30, cmap=None):
    """Save a gallery of the most confident misclassifications as PNG.

    Parameters
    ----------
    images : ndarray (N, C, H, W)
        Network inputs in [0, 1]; one channel is shown with ``cmap``, three
        as an RGB image.
    probs : ndarray (N, K)
        Predicted class probabilities.
    labels : ndarray (N,)
        True classes.
    class_names : list of str
    path : path-like
    n : int
        Most errors shown, most confident first.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs, labels = np.asarray(probs), np.asarray(labels)
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:n]
    cols = 6
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.15 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        img = np.asarray(images[i], dtype=np.float32)
        if img.shape[0] == 3:
            ax.imshow(np.clip(np.moveaxis(img, 0, -1), 0, 1), origin="lower")
        else:
            ax.imshow(img[0], cmap=cmap or "inferno", origin="lower", vmin=0, vmax=1)
        ax.set_title(f"{class_names[labels[i]]} -> {class_names[pred[i]]} "
                     f"({probs[i, pred[i]]:.2f})", fontsize=8)
    fig.suptitle(f"{title}\n{len(wrong)} of {int((pred != labels).sum())} errors, "
                 "most confident first: true -> predicted (probability)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)
    return Path(path)


def plot_reliability(probs, labels, path, title="", n_bins=15):
    """Save a reliability diagram (top-label accuracy against confidence) as PNG: the figure
    of `astromorph.evaluate_labels` (``astromorph._evaluate.reliability_figure``)."""
    return save_figure(reliability_figure(probs, labels, title=title, n_bins=n_bins), path,
                       dpi=120)


def write_metrics(name, metrics, root=None):
    """Write ``training/reports/<name>/metrics.json`` and return its path."""
    path = report_dir(name, root) / "metrics.json"
    write_text(path, json.dumps(metrics, indent=2, sort_keys=False) + "\n")
    return path


# -------------------------------------------------------------------------- export
def export_onnx(module, example_input, path, *, input_name="input", output_names=("output",),
                opset=18):
    """Export a torch module to ONNX with a dynamic batch dimension.

    The module is exported in eval mode on CPU with the legacy TorchScript
    exporter (stable for small CNNs) and the result is checked with
    ``onnx.checker``.
    """
    import onnx
    import torch

    module = module.eval().cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.as_tensor(np.asarray(example_input, dtype=np.float32))
    dynamic = {input_name: {0: "batch"}}
    dynamic.update({name: {0: "batch"} for name in output_names})
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(tmp), input_names=[input_name],
                          output_names=list(output_names), dynamic_axes=dynamic,
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    model = onnx.load(str(tmp))
    onnx.checker.check_model(model)
    os.replace(tmp, path)
    log.info("exported %s (%.2f MB)", path, path.stat().st_size / 1e6)
    return path


#: How `quantize_int8` quantises (recorded in model cards).
INT8_RECIPE = ("static post-training quantisation with onnxruntime.quantization "
               "(QOperator format: QLinearConv/QLinearMatMul; int8 weights per output channel, "
               "uint8 activations; MinMax ranges from a calibration set of training-split stamps)")


#: Largest output difference allowed between a single-band graph and its model fed the band
#: replicated into every channel (`fold_single_band`).
SINGLE_BAND_ATOL = 1e-5


def fold_single_band(src, dst, *, size, n_check=64, seed=0):
    """Write a copy of an image model that takes one band instead of identical channels.

    A model whose card says ``single_band: replicate`` is fed a single band
    copied into each of its C input channels. When the ops between the graph
    input and the first convolution treat every channel alike (here: an
    orientation concat along the batch axis and subtracting a constant),
    convolving C identical planes with weights ``W`` equals convolving one
    plane with ``W`` summed over its input channels. The copy has those summed
    weights and an input of shape ``(batch, 1, H, W)``: the same outputs
    without the replication and with a C-th of the first convolution's work.
    The fold is checked, not assumed: on ``n_check`` random stamps the copy
    must agree with ``src`` fed the replicated band within `SINGLE_BAND_ATOL`,
    else `RuntimeError`.

    Returns
    -------
    max_abs_diff : float
        Largest output difference found by the check.
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    channels = dims[1].dim_value
    conv = next(n for n in graph.node if n.op_type == "Conv")
    weights = {t.name: t for t in graph.initializer}[conv.input[1]]
    w = numpy_helper.to_array(weights)
    weights.CopyFrom(numpy_helper.from_array(w.sum(axis=1, keepdims=True).astype(w.dtype),
                                             weights.name))
    dims[1].dim_value = 1
    onnx.checker.check_model(model)
    tmp = Path(dst).with_suffix(".tmp")
    onnx.save(model, str(tmp))
    band = np.random.default_rng(seed).random((n_check, 1, size, size), dtype=np.float32)
    name = graph.input[0].name
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    full = ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    grey = ort.InferenceSession(str(tmp), opts, providers=["CPUExecutionProvider"])
    a = full.run(None, {name: np.repeat(band, channels, axis=1)})
    b = grey.run(None, {name: band})
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
    if not diff <= SINGLE_BAND_ATOL:
        tmp.unlink()
        raise RuntimeError(f"folding the channels of {src} changes its outputs by {diff:.2e}: "
                           "the ops before its first convolution do not treat channels alike")
    tmp.replace(dst)
    log.info("single-band graph %s: max abs diff %.1e vs the replicated band", dst, diff)
    return diff


def single_band_graph(path, *, size, note=""):
    """Fold ``path`` into ``model.grey.onnx`` beside it; the card's ``single_band_graph`` entry.

    See `fold_single_band`. ``note`` is appended to the entry's description.
    """
    grey = Path(path).parent / "model.grey.onnx"
    diff = fold_single_band(path, grey, size=size)
    rate = onnx_throughput(grey, (1, size, size), batch=256, threads=2)
    log.info("single-band graph: %.0f stamps/s (2 threads, batch 256)", rate)
    return {
        "file": grey.name,
        "sha256": sha256sum(grey),
        "file_size_bytes": grey.stat().st_size,
        "input_shape": [1, size, size],
        "description": ("model.onnx with its first convolution's weights summed over the three "
                        "colour channels: for a single band it gives the outputs of model.onnx "
                        "fed that band in R, G and B, without the copying and with a third of "
                        "that convolution's work; Model.predict uses it for single-band input"
                        + note),
        "max_abs_diff_vs_replicated_band": float(f"{diff:.2g}"),
        "stamps_per_second": round(rate),
        "made_by": "the model's export step (astromorph_training._common.fold_single_band)",
    }


def quantize_int8(src, dst, calibration, *, input_name="input", batch=64):
    """Write a statically quantised (int8) copy of the float ONNX graph ``src`` to ``dst``.

    Parameters
    ----------
    src, dst : str or Path
    calibration : numpy.ndarray, (N, C, H, W)
        Network-ready inputs (made by astromorph's preprocessing) whose
        activation ranges set the quantisation scales; from the training
        split only. The result is deterministic for fixed inputs.
    input_name : str, optional
    batch : int, optional
        Calibration batch size.

    Returns
    -------
    pathlib.Path
        ``dst``, written atomically.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(range(0, len(calibration), batch))

        def get_next(self):
            start = next(self._batches, None)
            if start is None:
                return None
            return {input_name: np.ascontiguousarray(calibration[start:start + batch],
                                                     dtype=np.float32)}

    dst = Path(dst)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(src), str(pre))
        quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QOperator,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        os.chmod(out, 0o644)
        os.replace(out, dst)
    log.info("quantised %s -> %s (%.2f MB)", src, dst, dst.stat().st_size / 1e6)
    return dst


def sha256sum(path):
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_card(name, card, root=None):
    """Write ``models/<name>/card.json`` with the sha256 of ``model.onnx`` filled in.

    The card is written atomically. Returns its path.
    """
    directory = model_dir(name, root)
    onnx_path = directory / "model.onnx"
    card = dict(card)
    card["name"] = name
    card["sha256"] = sha256sum(onnx_path)
    card["file_size_bytes"] = onnx_path.stat().st_size
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; the card ships in the wheel for every user
    os.replace(tmp, directory / "card.json")
    return directory / "card.json"


def check_parity(torch_module, x, name_or_path, *, atol=1e-5, rtol=1e-4, output=None):
    """Compare a torch module with the exported ONNX model run through astromorph.

    Parameters
    ----------
    torch_module : torch.nn.Module
        The module that was exported (including any calibration layer).
    x : numpy.ndarray
        Network input, exactly as astromorph's preprocessing returns it.
    name_or_path : str or Path
        Passed to `astromorph.load_model`.
    atol, rtol : float
        Tolerance of `numpy.testing.assert_allclose`; by default that of the export
        and shipped-model parity checks in docs/training.md (1e-5 absolute, 1e-4
        relative), as `write_parity_reference`.
    output : str, optional
        Output to compare; default the first output in the card.

    Returns
    -------
    float
        Largest absolute difference. Raises ``AssertionError`` beyond tolerance.
    """
    return _parity(torch_module, x, name_or_path, atol=atol, rtol=rtol, output=output)[0]


def _parity(torch_module, x, name_or_path, *, atol, rtol, output=None):
    """`check_parity`'s work; returns (largest difference, output name, torch output)."""
    import astromorph
    import torch

    model = astromorph.load_model(name_or_path, providers="cpu")
    onnx_out = model.predict(x, progress=False)
    key = output or model.output_names[0]
    with torch.no_grad():
        ref = torch_module.eval()(torch.as_tensor(np.asarray(x, dtype=np.float32)))
    if isinstance(ref, (tuple, list)):
        ref = ref[0]
    ref = ref.numpy().reshape(np.shape(onnx_out[key]))
    diff = float(np.max(np.abs(ref - onnx_out[key]))) if ref.size else 0.0
    np.testing.assert_allclose(onnx_out[key], ref, atol=atol, rtol=rtol)
    return diff, key, ref


#: File name, in ``training/reports/<name>/``, of the torch outputs the shipped ONNX must reproduce.
PARITY_REFERENCE = "parity_reference.npz"


def synthetic_scenes(n, size, *, channels=1, seed=0):
    """Redistributable test scenes for parity references, values in [0, 1].

    Elliptical Gaussian sources (random position near the centre, size, axis
    ratio, angle and colour) on a faint noisy background: no survey pixels, so
    the references can be committed where the real data cannot.

    Returns
    -------
    numpy.ndarray, float32, (n, size, size, channels)
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) - (size - 1) / 2
    out = np.empty((n, size, size, channels), np.float32)
    for k in range(n):  # a handful of scenes, written once per export
        img = rng.normal(0.03, 0.01, (size, size, channels)).astype(np.float32)
        for _ in range(rng.integers(1, 4)):
            x0, y0 = rng.normal(0, size / 10, 2)
            sigma = rng.uniform(size / 40, size / 8)
            q, theta = rng.uniform(0.3, 1.0), rng.uniform(0, np.pi)
            u = (xx - x0) * np.cos(theta) + (yy - y0) * np.sin(theta)
            v = -(xx - x0) * np.sin(theta) + (yy - y0) * np.cos(theta)
            blob = np.exp(-0.5 * (u ** 2 + (v / q) ** 2) / sigma ** 2)
            img += blob[..., None] * rng.uniform(0.2, 0.9) * rng.uniform(0.6, 1.0, channels)
        out[k] = img
    return np.clip(out, 0.0, 1.0)


def parity_raw_inputs(kind, n=8, *, seed=0):
    """Raw inputs for `write_parity_reference`, built from `synthetic_scenes`.

    Parameters
    ----------
    kind : {"colour", "radio", "triplet"}
        ``"colour"``: 8-bit colour cutouts (n, 424, 424, 3), as the Galaxy Zoo
        JPEGs; ``"radio"``: 8-bit data-set images (n, 300, 300), zero below the
        threshold and 255 at the peak; ``"triplet"``: float science, reference,
        difference stamps (n, 3, 63, 63) in counts, the science epoch holding a
        point source the reference lacks.
    """
    if kind == "colour":
        return (synthetic_scenes(n, 424, channels=3, seed=seed) * 255).astype(np.uint8)
    if kind == "radio":
        img = np.clip(synthetic_scenes(n, 300, seed=seed)[..., 0] - 0.06, 0.0, None)
        return np.round(255 * img / img.max(axis=(1, 2), keepdims=True)).astype(np.uint8)
    if kind == "triplet":
        rng = np.random.default_rng(seed)
        ref = 100.0 + 2000.0 * synthetic_scenes(n, 63, seed=seed)[..., 0]
        yy, xx = np.mgrid[:63, :63] - 31.0
        point = np.exp(-0.5 * (xx ** 2 + yy ** 2) / 1.5 ** 2) * rng.uniform(50, 2000, (n, 1, 1))
        sci = ref + point + rng.normal(0, 10, ref.shape)
        return np.stack([sci, ref, sci - ref], axis=1).astype(np.float32)
    raise ValueError(f"unknown kind {kind!r}: 'colour', 'radio' or 'triplet'")


def write_parity_reference(name, torch_module, x, onnx_path, *, root=None, output=None,
                           atol=1e-5, rtol=1e-4):
    """Check torch/ONNX parity on ``x`` and commit the torch outputs as a reference.

    ``training/reports/<name>/parity_reference.npz`` holds the network inputs
    (rounded to float16 to keep the file small; both sides see the same
    float32 values), the torch module's outputs and the sha256 of the ONNX file
    they belong to, so the test suite proves the shipped ONNX reproduces the
    trained torch model without the (uncommitted) checkpoint.

    Parameters
    ----------
    name : str
        Model name.
    torch_module : torch.nn.Module
        The exported module (with its calibration layer).
    x : numpy.ndarray
        Network input from astromorph's preprocessing of redistributable raw
        inputs (never survey data: the file is committed).
    onnx_path : str or Path
        The exported ``model.onnx`` (its folder holds the card).

    Returns
    -------
    float
        Largest absolute torch/ONNX difference (``AssertionError`` beyond tolerance).
    """
    x = np.asarray(x, np.float32).astype(np.float16)
    diff, key, ref = _parity(torch_module, x.astype(np.float32), str(Path(onnx_path).parent),
                             atol=atol, rtol=rtol, output=output)
    path = report_dir(name, root) / PARITY_REFERENCE
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    with os.fdopen(fd, "wb") as f:
        np.savez_compressed(f, input=x, output=ref.astype(np.float32), output_name=key,
                            onnx_sha256=sha256sum(onnx_path), atol=atol, rtol=rtol)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    log.info("parity reference %s: %d inputs, max abs diff %.2e", path, len(x), diff)
    return diff


def load_onnx_weights(module, onnx_path, example_input):
    """Load the weights of an exported ONNX file into the torch module it was exported from.

    The reverse of `export_onnx`, for a module of the same architecture (random
    weights): it gives back the torch model behind a shipped file whose training
    checkpoint was not kept, so that parity with the training code can still be
    checked. The exporter folds every batch normalisation into the convolution
    before it and names the folded tensors ``onnx::Conv_<n>``; every other
    tensor keeps its ``state_dict`` name. So named tensors are copied by name,
    and the ONNX ``Conv`` nodes, in graph order, are matched to the module's
    convolutions in the order its forward pass first calls them (the order the
    exporter traced); a convolution followed by a batch normalisation gets the
    folded kernel, and the normalisation becomes ``x + bias`` (unit scale, zero
    mean, variance ``1 - eps``).

    Parameters
    ----------
    module : torch.nn.Module
        The exported module's architecture (calibration layers included), in
        eval mode; its weights are overwritten.
    onnx_path : str or Path
        The exported file.
    example_input : numpy.ndarray
        A network input of the right shape (a batch of 2 zeros will do), for
        one forward pass that records the order of the convolutions.

    Returns
    -------
    torch.nn.Module
        ``module``, in eval mode.

    Raises
    ------
    ValueError
        If the file and the module do not have the same weights: a different
        number of convolutions, a shape that differs, a tensor of the file that
        nothing in the module took, or a module tensor that nothing set.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    module = module.eval()
    state = module.state_dict()
    todo = {k for k in state if not k.endswith("num_batches_tracked")}

    def copy(key, value, source):
        if tuple(value.shape) != tuple(state[key].shape):
            raise ValueError(f"{onnx_path}: {source} has shape {tuple(value.shape)}, the module's "
                             f"{key} {tuple(state[key].shape)}")
        state[key] = torch.as_tensor(np.array(value))
        todo.discard(key)

    used = set()
    for key in list(state):
        if key in tensors:
            copy(key, tensors[key], key)
            used.add(key)
    modules = dict(module.named_modules())
    names = {id(m): n for n, m in modules.items()}
    calls = []
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append((m, id(i[0]), id(o))))
             for m in module.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.modules.batchnorm._BatchNorm))]
    try:
        with torch.no_grad():
            module(torch.as_tensor(np.asarray(example_input, dtype=np.float32)))
    finally:
        for hook in hooks:
            hook.remove()
    order, seen = [], set()
    for k, (m, _, out) in enumerate(calls):
        if isinstance(m, torch.nn.Conv2d) and id(m) not in seen:
            seen.add(id(m))
            nxt = calls[k + 1] if k + 1 < len(calls) else None
            folded = nxt is not None and nxt[1] == out and not isinstance(nxt[0], torch.nn.Conv2d)
            order.append((names[id(m)], names[id(nxt[0])] if folded else None))
    nodes = [n for n in graph.node if n.op_type == "Conv"]
    if len(nodes) != len(order):
        raise ValueError(f"{onnx_path} has {len(nodes)} convolutions, the module "
                         f"{len(order)}: not the same architecture")
    for (conv, norm), node in zip(order, nodes):
        weight, bias = node.input[1], (node.input[2] if len(node.input) > 2 else None)
        if weight == f"{conv}.weight":  # exported under its own name: already copied
            continue
        copy(f"{conv}.weight", tensors[weight], f"Conv node {node.name!r}")
        used.add(weight)
        if bias is None:
            continue
        used.add(bias)
        if norm is None:
            copy(f"{conv}.bias", tensors[bias], f"Conv node {node.name!r} bias")
            continue
        copy(f"{norm}.bias", tensors[bias], f"Conv node {node.name!r} bias")
        eps = modules[norm].eps
        for key, fill in (("weight", 1.0), ("running_mean", 0.0), ("running_var", 1.0 - eps)):
            copy(f"{norm}.{key}", np.full(state[f"{norm}.{key}"].shape, fill, np.float32), key)
    left = sorted(set(tensors) - used)
    if left or todo:
        raise ValueError(f"{onnx_path} and the module do not hold the same weights: in the file "
                         f"only {left}, in the module only {sorted(todo)}")
    module.load_state_dict(state)
    return module


def shipped_torch_model(name, *, root=None):
    """The training code's torch module of a shipped model, weights read from its ONNX file.

    The architecture is the card's ``training.architecture`` (written by
    ``export``), built by the model's training module (``from_architecture``);
    the weights come from ``models/<name>/model.onnx`` (`load_onnx_weights`).
    Fed what astromorph's preprocessing returns, the module must give what the
    shipped file gives: the parity check of a shipped file whose training
    checkpoint is gone.

    Parameters
    ----------
    name : str
        Model name (a key of `MODULES`).
    root : str or Path, optional
        Repository holding ``models/``; default `repo_root`.

    Returns
    -------
    torch.nn.Module
        In eval mode.
    """
    import importlib

    if name not in MODULES:
        raise ValueError(f"unknown model {name!r}: one of {sorted(MODULES)}")
    folder = model_dir(name, root)
    card = json.loads((folder / "card.json").read_text())
    arch = card["training"].get("architecture")
    if arch is None:
        raise ValueError(f"{folder / 'card.json'} records no training.architecture "
                         "(written by `export`)")
    module = importlib.import_module(f"astromorph_training.{MODULES[name]}").from_architecture(arch)
    example = np.zeros((2, *card["input"]["shape"]), np.float32)
    return load_onnx_weights(module, folder / "model.onnx", example)


def run_onnx(path, x, batch=256, threads=2):
    """Run an ONNX file with onnxruntime on CPU in batches; returns its first output.

    Parameters
    ----------
    path : str or Path
    x : numpy.ndarray, (N, ...)
        Network input (cast to contiguous float32 batch by batch).
    batch, threads : int, optional
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = [sess.run(None, {name: np.ascontiguousarray(x[i:i + batch], dtype=np.float32)})[0]
           for i in range(0, len(x), batch)]
    if not out:
        shape = [d if isinstance(d, int) else 0 for d in sess.get_outputs()[0].shape]
        return np.zeros([0] + shape[1:], np.float32)
    return np.concatenate(out)


#: What the wall-clock and CPU-time throughput figures in model cards mean.
THROUGHPUT_NOTE = ("wall-clock rate measured at export on the 2-core training machine, which "
                   "depends on what else runs there; the CPU-time rate of one thread is the "
                   "load-independent figure, about half the rate of 2 dedicated threads")


def onnx_throughput(path, shape, *, batch=256, threads=2, repeats=5):
    """Stamps per second through onnxruntime on ``threads`` CPU threads (model only)."""
    import time

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    sess.run(None, {name: x})
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {name: x})
        best = min(best, time.perf_counter() - t)
    return batch / best


def ece_noise_floor(probs, n_sim=500, seed=0):
    """ECE a perfectly calibrated model with these probabilities would show on this many images.

    Labels are drawn from ``probs`` themselves, so any ECE measured is pure
    finite-sample noise; returns its mean and 95th percentile.
    """
    rng = np.random.default_rng(seed)
    cum = np.cumsum(probs, axis=1)
    eces = []
    for _ in range(n_sim):
        u = rng.random((len(probs), 1))
        labels = np.minimum((u > cum).sum(axis=1), probs.shape[1] - 1)
        eces.append(expected_calibration_error(probs, labels))
    return {"mean": float(np.mean(eces)), "p95": float(np.percentile(eces, 95)),
            "note": "ECE of a perfectly calibrated model with the same confidences on the same "
                    "number of images (labels drawn from its own probabilities)"}
