"""`evaluate_labels`: a model's output columns scored against the user's own labels.

The classification measures (`classification_report`, `expected_calibration_error`) and
figures (`confusion_matrix_figure`, `reliability_figure`) are also those the ``training/``
subproject writes into the model cards and reports: one implementation of each.
"""
import json
import logging
import os
from collections.abc import Mapping

import numpy as np

from .exceptions import InputError, InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["evaluate_labels", "LabelEvaluation", "classification_report",
           "expected_calibration_error", "roc_auc", "roc_curve", "error_rates",
           "confusion_matrix_figure", "reliability_figure", "register"]

log = logging.getLogger(__name__)

#: The most points of the ROC curve kept in the metrics (a curve has one per distinct score).
_ROC_POINTS = 1001

#: Truth values of a real-bogus score, as text (lower case): real (1) or bogus (0).
_REAL = {"1": True, "1.0": True, "true": True, "t": True, "real": True,
         "0": False, "0.0": False, "false": False, "f": False, "bogus": False}


#: The figures `LabelEvaluation.plot` draws, the default first: for class probabilities
#: (True) and for a score (False).
_PLOT_KINDS = {True: ("confusion", "reliability"), False: ("roc", "reliability")}


def _is_classifier(card):
    """Whether a model gives class probabilities (else a score, or neither)."""
    return "probabilities" in {spec.get("kind") for spec in card["outputs"]}


# ------------------------------------------------------------------------------- measures
def _first_bad(bad, values, what):
    """The count and first row of ``bad`` values, for a message."""
    i = int(np.flatnonzero(bad)[0])
    return f"{int(bad.sum())} of {len(bad)} {what} (the first at row {i}: {values[i]!r})"


def _scores_and_truth(scores, real):
    """``scores`` (N,) as finite floats and ``real`` (N,) as booleans (True, or 1, is real).

    NaN scores would be ranked, sorted or compared as numbers, and ``astype(bool)`` makes
    every non-zero number and every text ('0' too) real: both are refused.
    """
    scores = np.asarray(scores, dtype=np.float64)
    real = np.asarray(real)
    if scores.ndim != 1 or real.shape != scores.shape:
        raise InvalidArgumentError(f"{scores.size} scores and {real.size} labels: one label "
                                   f"(real or bogus) per score, both 1-d")
    if not np.isfinite(scores).all():
        bad = ~np.isfinite(scores)
        raise InvalidArgumentError(f"{_first_bad(bad, scores.tolist(), 'scores')} are not "
                                   "finite: leave those rows out")
    if real.dtype.kind != "b":
        ok = np.isin(real, (0, 1)) if real.dtype.kind in "iuf" else np.zeros(real.shape, bool)
        if not ok.all():
            raise InvalidArgumentError(f"the truth of a score is True/False or 0 or 1 (real "
                                       f"= 1): {_first_bad(~ok, real.tolist(), 'labels')} "
                                       "are not")
        real = real == 1
    return scores, real


def _probs_and_labels(probs, labels, n_classes=None):
    """``probs`` (N, K) as finite floats and ``labels`` (N,) as class indices in [0, K)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise InvalidArgumentError(f"{len(probs)} rows of probabilities and {labels.size} "
                                   f"labels: one class index per row of an (N, K) array")
    k = probs.shape[1]
    if n_classes is not None and k != n_classes:
        raise InvalidArgumentError(f"probabilities of {k} columns for {n_classes} class "
                                   "names: one column per class")
    if not np.isfinite(probs).all():
        bad = ~np.isfinite(probs).all(axis=1)
        raise InvalidArgumentError(f"{_first_bad(bad, probs.tolist(), 'rows')} have "
                                   "probabilities that are not finite: leave them out")
    if labels.dtype.kind == "b":
        labels = labels.astype(np.int64)
    ok = (np.isin(labels, np.arange(k)) if labels.dtype.kind in "iuf"
          else np.zeros(labels.shape, bool))
    if not ok.all():
        raise InvalidArgumentError(f"labels must be class indices 0 to {k - 1}: "
                                   f"{_first_bad(~ok, labels.tolist(), 'labels')} are not")
    return probs, labels.astype(np.int64)


def _check_bins(n_bins):
    """``n_bins`` as an int >= 1 (0 bins summed nothing: an ECE of 0, perfect calibration)."""
    from .preprocessing._checks import check_whole

    return check_whole(n_bins, "n_bins")


def _confidence_bins(conf, n_bins):
    """The bin of each confidence: ``b`` for ``[b / n_bins, (b + 1) / n_bins)``, the last
    closed at 1, by comparison with those edges (``int(conf * n_bins)`` rounded a confidence
    one floating-point step below an edge, e.g. 0.8999999999999999 of 10 bins, up into the
    bin above)."""
    return np.searchsorted(np.arange(1, n_bins) / n_bins, conf, side="right")


def expected_calibration_error(probs, labels, n_bins=15):
    """Top-label expected calibration error with equal-width confidence bins.

    ``probs`` (N, K) class probabilities (for a binary score, ``(1 - s, s)``), ``labels``
    (N,) true class indices; ``n_bins`` bins of the top probability, ``[b / n_bins,
    (b + 1) / n_bins)`` with the last one closed at 1 (a confidence on an edge is in the
    bin it opens). The top label is the most probable class, the first of tied ones (so
    for a score of exactly 0.5 class 0, bogus). Raises `InvalidArgumentError` for
    probabilities that are not finite, labels that are no class index or an ``n_bins``
    that is no whole number >= 1.
    """
    probs, labels = _probs_and_labels(probs, labels)
    n_bins = _check_bins(n_bins)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = _confidence_bins(conf, n_bins)
    ece = 0.0
    for b in range(n_bins):  # a few bins, each an array operation
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def _num(x):
    """A rounded float for JSON, or None for NaN (a class without rows)."""
    return None if not np.isfinite(x) else round(float(x), 4)


def _finite(x):
    """A float for JSON, or None for NaN (a class without rows)."""
    return float(x) if np.isfinite(x) else None


def classification_report(probs, labels, class_names):
    """Accuracy, macro recall, per-class recall and precision, confusion matrix, ECE.

    Returns a JSON-serialisable dict. ``confusion_matrix[i][j]`` counts true class ``i``
    predicted as ``j`` (the most probable class of ``probs``, the first of tied ones);
    ``labels`` are class indices. ``macro_recall`` is the mean recall of the classes that
    ``labels`` hold (a class without true rows has no recall, None, and is left out of it,
    as in the training scripts); a class never predicted has no precision (None).
    """
    k = len(class_names)
    probs, labels = _probs_and_labels(probs, labels, k)
    pred = probs.argmax(axis=1)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (labels, pred), 1)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    recall = np.divide(np.diag(cm), support, out=np.full(k, np.nan), where=support > 0)
    precision = np.divide(np.diag(cm), predicted, out=np.full(k, np.nan), where=predicted > 0)
    return {
        "n": int(len(labels)),
        "accuracy": float((pred == labels).mean()),
        "macro_recall": float(np.nanmean(recall)),
        "per_class": {
            name: {"recall": _num(recall[i]), "precision": _num(precision[i]),
                   "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
        "ece": expected_calibration_error(probs, labels),
    }


def roc_auc(scores, real):
    """ROC AUC by the rank-sum formula (ties averaged); NaN without both classes."""
    from scipy.stats import rankdata

    scores, real = _scores_and_truth(scores, real)
    n1, n0 = real.sum(), (~real).sum()
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[real].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def roc_curve(scores, real):
    """False and true positive rates, and the thresholds (``score >= t`` is real) where they
    change, from the strictest (``inf``: nothing is real) down; tied scores are one point."""
    scores, real = _scores_and_truth(scores, real)
    order = np.argsort(-scores, kind="stable")
    s, lab = scores[order], real[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last row of each run of equal scores
    tp, fp = np.cumsum(lab)[last], np.cumsum(~lab)[last]
    tpr = np.r_[0.0, tp / max(real.sum(), 1)]
    fpr = np.r_[0.0, fp / max((~real).sum(), 1)]
    return fpr, tpr, np.r_[np.inf, s[last]]


def threshold_for_fnr(scores, real, target):
    """The highest threshold (``score >= t`` is real) that rejects at most a fraction
    ``target`` of the real rows: one of their scores; NaN without real rows.

    The threshold a survey would set on its own labelled candidates to keep, e.g., 98 per
    cent of its reals (``target=0.02``), cutting as many bogus ones as that allows.
    """
    scores, real = _scores_and_truth(scores, real)
    r = np.sort(scores[real])
    if not len(r):
        return float("nan")
    # rejecting the k lowest reals at most: the (k+1)-th lowest score; ties below it may
    # only lower the count rejected
    k = min(int(np.floor(target * len(r) * (1 + 1e-12))), len(r) - 1)
    return float(r[k])


def error_rates(scores, real, threshold):
    """(FNR, FPR) when ``score >= threshold`` is called real: the fraction of real rows
    rejected and of bogus rows accepted (NaN for a class without rows)."""
    scores, real = _scores_and_truth(scores, real)
    fnr = float(np.mean(scores[real] < threshold)) if real.any() else float("nan")
    fpr = float(np.mean(scores[~real] >= threshold)) if (~real).any() else float("nan")
    return fnr, fpr


# -------------------------------------------------------------------------------- figures
def confusion_matrix_figure(cm, class_names, *, title=""):
    """A `~matplotlib.figure.Figure` of a confusion matrix: counts (true rows, predicted
    columns), each cell shaded by its row-normalised fraction (the recall on the diagonal)."""
    from ._plotting import figure

    cm = np.asarray(cm)
    n = len(class_names)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    # at most 14 inches square (37 classes were 46 inches wide); beyond 12 classes the
    # cells are too small for their counts, and the shade alone says the fraction
    cell = min(1.2, 11.0 / n)
    fig = figure(figsize=(cell * n + 3, cell * n + 2), layout="constrained")
    ax = fig.subplots()
    shade = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shade, ax=ax, shrink=0.8,
                 label="fraction of the true class's rows (recall on the diagonal)")
    if n <= 12:
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center",
                        color="white" if norm[i, j] > 0.6 else "black", fontsize=9)
    size = 10 if n <= 12 else 7
    ax.set_xticks(range(n), class_names, rotation=30 if n <= 12 else 90,
                  ha="right" if n <= 12 else "center", fontsize=size)
    ax.set_yticks(range(n), class_names, fontsize=size)
    ax.set_xlabel("predicted class (the model's label)")
    ax.set_ylabel("true class (your label)")
    ax.set_title(title + ("" if n <= 12 else "\n(counts in cells left out: too many classes)"))
    return fig


def reliability_figure(probs, labels, *, title="", n_bins=15):
    """A `~matplotlib.figure.Figure` of a reliability diagram: top-label accuracy against
    confidence, in ``n_bins`` equal bins (each bar's number of rows above it), with the ECE
    in the title."""
    from ._plotting import figure

    probs, labels = _probs_and_labels(probs, labels)
    n_bins = _check_bins(n_bins)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    idx = _confidence_bins(conf, n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    filled = counts > 0
    centres = np.bincount(idx, weights=conf, minlength=n_bins)[filled] / counts[filled]
    accs = np.bincount(idx, weights=correct, minlength=n_bins) / np.maximum(counts, 1)
    fig = figure(figsize=(4.5, 5.2), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.bar(edges[:-1], accs, width=1 / n_bins, align="edge", alpha=0.3, edgecolor="C0",
           label="bins (number of rows at their foot)")
    # not clipped: a bin of accuracy 0 or 1 has its marker on the axes' edge
    ax.plot(centres, accs[filled], "o-", color="C0", label="model", clip_on=False, zorder=3)
    for x, acc, count in zip(edges[:-1][filled], accs[filled], counts[filled]):
        ax.text(x + 0.5 / n_bins, 0.01, str(count), ha="center", va="bottom", fontsize=6,
                color="0.2", rotation=90 if count >= 1000 else 0)
    ax.set_xlabel("confidence (probability of the top class)")
    ax.set_ylabel("accuracy (fraction of rows right)")
    ece = f"ECE = {expected_calibration_error(probs, labels, n_bins):.3f}"
    ax.set_title(f"{title}\n{ece}" if title else ece)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    # below the axes: inside, it covered the bars of low confidence
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False)
    return fig


def _roc_figure(metrics, *, title=""):
    from ._plotting import figure

    fpr, tpr = metrics["roc_curve"]["fpr"], metrics["roc_curve"]["tpr"]
    fig = figure(figsize=(4.8, 4.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="chance")
    auc = metrics["roc_auc"]
    if None in fpr[:1] + tpr[:1]:  # one class only: no curve (its points lay on an axis)
        what, n = (("real", metrics["n_real"]) if metrics["n_real"]
                   else ("bogus", metrics["n_bogus"]))
        ax.text(0.5, 0.6, f"no ROC curve: all {n} labelled rows are {what}\n"
                f"(the error rates at the thresholds are in the metrics)", ha="center",
                va="center", transform=ax.transAxes, fontsize=9,
                bbox={"facecolor": "white", "edgecolor": "0.6"})
    else:
        ax.plot(fpr, tpr, color="C0", label=f"model (AUC {auc:.4f})" if auc is not None
                else "model")
    # hollow, each smaller than those before it: thresholds that land on one point (given
    # 0.5 and target_fnr's 0.5) show as rings one inside another, none hidden under another
    for i, (name, at) in enumerate(metrics["at_thresholds"].items(), 1):
        if at["fnr"] is None or at["fpr"] is None:
            continue
        ax.plot(at["fpr"], 1 - at["fnr"], "sod"[(i - 1) % 3], color=f"C{i}",
                ms=max(15 - 4.5 * (i - 1), 4), mfc="none", mew=2, zorder=3,
                label=f"{name} {at['threshold']:g}: FNR {at['fnr']:.1%}, FPR {at['fpr']:.1%}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (bogus accepted)")
    ax.set_ylabel("true positive rate (real accepted)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- the result
class LabelEvaluation:
    """How a model's output columns agree with known labels (made by `evaluate_labels`).

    Parameters
    ----------
    metrics : dict
        The measures (see `evaluate_labels`); JSON-serialisable.
    arrays : dict
        The rows used, for the figures: ``probabilities`` and ``truth`` (class indices)
        for a classifier, ``scores`` and ``real`` for a score.

    Attributes
    ----------
    metrics : dict
    """

    def __init__(self, metrics, arrays):
        self.metrics = metrics
        self._arrays = arrays

    @property
    def _classifier(self):
        return "class_names" in self.metrics

    def __repr__(self):
        m = self.metrics
        head = (f"<LabelEvaluation of {m['model']!r} on {m['n_used']} of {m['n_rows']} rows "
                f"({m['n_unlabelled']} unlabelled, "
                + (f"{m['n_no_class']} of no class, " if m.get("n_no_class") else "")
                + f"{m['n_unscored']} unscored, "
                f"{m['n_flagged']} flagged{' and kept' if m['keep_flagged'] else ''})")
        if self._classifier:
            return head + (f": accuracy {m['accuracy']:.3f}, macro recall "
                           f"{m['macro_recall']:.3f}>")
        auc = m["roc_auc"]
        return head + (f": ROC AUC {auc:.4f}>" if auc is not None else ": no ROC AUC "
                       "(one class only)>")

    def summary(self):
        """The measures in a few lines of text.

        Returns
        -------
        str
        """
        m = self.metrics
        lines = [repr(self)[1:-1]]
        if self._classifier:
            lines.append(f"ECE {m['ece']:.3f}")
            width = max(len(c) for c in m["class_names"])
            lines.append(f"{'class'.ljust(width)}  support  recall  precision")
            for name, c in m["per_class"].items():
                lines.append(f"{name.ljust(width)}  {c['support']:7d}  "
                             f"{_fmt(c['recall']):>6}  {_fmt(c['precision']):>9}")
        else:
            lines.append(f"{m['n_real']} real, {m['n_bogus']} bogus; ECE {m['ece']:.3f}")
            for name, at in m["at_thresholds"].items():
                lines.append(f"at the {name} threshold {_fmt(at['threshold'], 'g')}"
                             f"{' (no real row)' if at['threshold'] is None else ''}: "
                             f"FNR {_fmt(at['fnr'], '.2%')} (real rejected), "
                             f"FPR {_fmt(at['fpr'], '.2%')} (bogus accepted)")
        return "\n".join(lines)

    def plot(self, path=None, *, kind=None, title=None, dpi=120, overwrite=False):
        """Draw the confusion matrix, the reliability diagram or the ROC curve.

        Parameters
        ----------
        path : str or os.PathLike, optional
            Picture file to write (atomically), its format named by its extension
            (``.png``, ``.pdf``, ``.svg``...); default: none.
        kind : {"confusion", "reliability", "roc"}, optional
            Classifiers: ``"confusion"`` (default; counts shaded by the row-normalised
            recall) or ``"reliability"``; scores: ``"roc"`` (default; the points at the
            thresholds marked) or ``"reliability"``.
        title : str, optional
            Default: the model's name and version and the number of rows used.
        dpi : float, optional
            Resolution of the written picture.
        overwrite : bool, optional
            Replace an existing ``path`` (default: refuse).

        Returns
        -------
        matplotlib.figure.Figure

        Raises
        ------
        astromorph.exceptions.InvalidArgumentError
            An unknown ``kind``, a ``path`` whose extension names no picture format.
        astromorph.exceptions.OutputExistsError
            ``path`` exists and ``overwrite`` is false.
        astromorph.exceptions.MissingDependencyError
            Without matplotlib.
        """
        from ._io import atomic_output, check_output
        from ._plotting import picture_format, save_figure
        from .preprocessing._checks import check_choice, check_number

        kinds = _PLOT_KINDS[self._classifier]
        kind = kinds[0] if kind is None else kind
        check_choice(kind, "kind", sorted({k for ks in _PLOT_KINDS.values() for k in ks}))
        if kind not in kinds:
            raise InvalidArgumentError(f"kind must be one of {', '.join(map(repr, kinds))} "
                                       f"for model {self.metrics['model']!r}, got {kind!r}")
        dpi = check_number(dpi, "dpi", positive=True)
        if title is not None and not isinstance(title, str):
            raise InvalidArgumentTypeError(f"title must be a string, got {title!r}")
        fmt = None
        if path is not None:
            check_output(path, overwrite=overwrite)
            fmt = picture_format(path)  # matplotlib and the extension, before any drawing
        m, a = self.metrics, self._arrays
        if title is None:
            title = f"{m['model']} v{m['model_version']}: {m['n_used']} labelled rows"
        if kind == "confusion":
            fig = confusion_matrix_figure(m["confusion_matrix"], m["class_names"], title=title)
        elif kind == "roc":
            fig = _roc_figure(m, title=title)
        elif self._classifier:
            fig = reliability_figure(a["probabilities"], a["truth"], title=title)
        else:
            s = a["scores"]
            fig = reliability_figure(np.stack([1 - s, s], 1), a["real"], title=title)
        if path is not None:
            with atomic_output(path, overwrite=overwrite) as tmp:
                save_figure(fig, tmp, dpi=dpi, fmt=fmt)
            log.info("wrote %s", path)
        return fig


def _fmt(value, spec=".3f"):
    return "-" if value is None else format(value, spec)


# ----------------------------------------------------------------------------- the table
def _read(table):
    from astropy.table import Table

    if isinstance(table, Table):
        return table
    if isinstance(table, (str, os.PathLike)):
        from ._cli_annotate import _read_catalogue

        return _read_catalogue(os.fspath(table), "table")
    raise InvalidArgumentTypeError(f"table must be an astropy Table or QTable, or the path "
                                   f"of one, got {type(table).__name__} {table!r:.60}")


def _column(table, name, what, hint=""):
    if name not in table.colnames:
        raise InputError(f"the table has no {what} column {name!r} (columns: "
                         f"{', '.join(table.colnames)}){hint}")  # e.g. not made by this model
    return table[name]


def _values(column):
    """A column's values as a plain array and its mask (masked entries: True)."""
    mask = np.asarray(getattr(column, "mask", False), dtype=bool)
    data = getattr(column, "unmasked", column)  # astropy's Masked quantities
    data = np.asarray(np.ma.getdata(data))
    return data, np.broadcast_to(mask, data.shape).copy()


def _numbers(column):
    """`_values` of a model's output or flags column, which must hold one number per row:
    `InputError` naming the column for text or arrays (e.g. a column of another program)."""
    data, mask = _values(column)
    if data.ndim != 1:
        raise InputError(f"column {column.info.name!r} holds arrays of shape "
                         f"{data.shape[1:]}, not one number per row")
    if data.dtype.kind not in "biuf":
        example = f" (e.g. {str(data[0])!r:.40})" if len(data) else ""
        raise InputError(f"column {column.info.name!r} holds {data.dtype} values, not "
                         f"numbers{example}")
    return data, mask


def _truth_text(column):
    """The truth column as stripped text, and the rows without a label (masked, empty,
    None or NaN)."""
    data, mask = _values(column)
    if data.ndim != 1:
        raise InputError(f"truth column {column.info.name!r} holds arrays of shape "
                         f"{data.shape[1:]}, not one label per row")
    if data.dtype.kind == "f":
        mask |= ~np.isfinite(data)
        data = np.where(mask, 0, data)
        if np.all(data == np.round(data)) and np.all(abs(data) < 2**53):
            # class ids, 0/1, as floats for their NaN
            data = data.astype(np.int64)
    if data.dtype.kind == "S":
        data = np.char.decode(data, "utf-8", "replace")
    if data.dtype.kind == "O":
        mask |= np.array([v is None or isinstance(v, (float, np.floating)) and np.isnan(v)
                          for v in data], bool)
        # each value as a `labels` key is written: 1.0 as 1 (as in a float column), bytes
        # decoded
        data = np.array([_key_text(v) for v in np.where(mask, "", data)], dtype=str)
    text = np.char.strip(data.astype(str))
    return text, mask | (text == "")


def _fraction(text):
    """Whether a truth value is a finite number that is no integer (a score, a vote
    fraction)."""
    try:
        value = float(text)
    except ValueError:
        return False
    return bool(np.isfinite(value)) and not value.is_integer()


def _translate(text, unlabelled, labels, allowed, describe, truth):
    """Indices of ``allowed`` (a dict lower-case text -> value) of the labelled rows of
    ``text``, after the user's ``labels`` mapping (lower-case keys), in any case, and the
    rows whose label the mapping sends to None (no class of the model: left out);
    `InputError` naming the values it cannot place, as they are written (and, for scores
    or fractions, how to make labels of them)."""
    values, inverse = np.unique(text[~unlabelled], return_inverse=True)
    values = values.tolist()
    mapped = [labels.get(v.lower(), v.lower()) for v in values]
    unknown = [v for v, m in zip(values, mapped) if m is not None and m not in allowed]
    if unknown:
        advice = ("translate your labels with labels={your label: class} (--map YOUR=CLASS)"
                  if not any(map(_fraction, unknown)) else
                  f"scores or fractions are not labels: make a column of labels of them first, "
                  f"e.g. t['cut'] = t[{truth!r}] >= 0.5 (True and False: real and bogus, or "
                  f"labels={{True: class, False: class}})")
        # scores: a few (each as long as 18 digits), not a line of them before the advice
        few = 20 if "scores or fractions" not in advice else 3
        listed = ", ".join(map(repr, unknown[:few]))
        raise InputError((f"truth values {listed}" if len(unknown) <= few else
                          f"truth values ({len(unknown)} distinct values such as {listed} ...)")
                         + f" are not {describe}; {advice}")
    out = np.zeros(len(text), dtype=object)
    out[~unlabelled] = np.array([allowed.get(m) for m in mapped], dtype=object)[inverse]
    no_class = np.zeros(len(text), bool)  # labels the user mapped to None: left out
    no_class[~unlabelled] = np.array([m is None for m in mapped], bool)[inverse]
    out[no_class] = 0
    return out, no_class


def _key_text(key):
    """A key of ``labels`` as `_truth_text` writes the truth values: 1.0 as 1, bytes
    decoded, stripped."""
    if isinstance(key, (bytes, np.bytes_)):
        key = key.decode("utf-8", "replace")
    elif isinstance(key, (float, np.floating)) and float(key).is_integer():
        key = int(key)
    return str(key).strip()


def _check_labels(labels, allowed, model):
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise InvalidArgumentTypeError(f"labels must be a mapping {{your label: model "
                                       f"class}}, got {labels!r:.80}")
    out, given = {}, {}
    for key, value in labels.items():
        if value is None:  # a label of no class of the model: its rows are left out
            target = None
        elif isinstance(value, (bool, np.bool_)):
            target = str(int(value))
        else:
            target = str(value).strip().lower()
        if target is not None and target not in allowed:
            raise InvalidArgumentError(
                f"labels maps {key!r} to {value!r}, which is none of the values model "
                f"{model!r} knows: {', '.join(dict.fromkeys(map(str, allowed)))}")
        text = _key_text(key).lower()  # labels are matched in any case
        if text in out and allowed.get(out[text]) != allowed.get(target):
            raise InvalidArgumentError(
                f"labels maps {given[text]!r} to {labels[given[text]]!r} and {key!r} to "
                f"{value!r}: labels are matched in any case")
        out[text], given[text] = target, key
    return out


def _excluded(flags, scored, unlabelled, no_class, keep_flagged):
    """Counts of the rows left out, and the rows used."""
    labelled = ~unlabelled & ~no_class
    unscored = labelled & ~scored
    flagged = labelled & scored & (flags != 0)
    used = labelled & scored & ((flags == 0) | keep_flagged)
    return used, {"n_rows": int(len(flags)), "n_used": int(used.sum()),
                  "n_unlabelled": int(unlabelled.sum()), "n_no_class": int(no_class.sum()),
                  "n_unscored": int(unscored.sum()), "n_flagged": int(flagged.sum()),
                  "keep_flagged": bool(keep_flagged)}


# --------------------------------------------------------------------------- public API
def evaluate_labels(table, truth, *, model, labels=None, threshold=None, target_fnr=None,
                    keep_flagged=False, suffix=""):
    """Score a model's output columns against your own labels.

    For a model applied to your survey (`annotate`, `annotate_stamps`, `predict_files`),
    with labels known for some of the rows: how well does it do there?

    Parameters
    ----------
    table : astropy.table.Table, str or os.PathLike
        The model's output columns (``<prefix>_p_<class>`` or ``<prefix>_score``, and
        ``<prefix>_flags``, the prefix from the card's ``column_prefix``) and ``truth``; or
        the path of such a table (``.ecsv``, ``.fits``, ``.csv``, ``.parquet``). It is not
        modified.
    truth : str
        The column of your labels. Classifiers (``morphology``, ``radio-morphology``): the
        card's class names, in any case (``labels`` translates others); real-bogus scores: booleans,
        0/1 or ``real``/``bogus`` (real = 1). Masked, empty, NaN or None values are
        unlabelled rows, left out and counted.
    model : str, os.PathLike or Model
        The model (name, path or loaded `Model`, as for `annotate`) that made the columns;
        its card gives the prefix, the classes and, for a score, the
        ``recommended_threshold``.
    labels : dict, optional
        Your label -> the model's, e.g. ``{"E": "elliptical", "S": "spiral"}`` or
        ``{"FR1": "FRI"}``, or ``{0: "elliptical", 1: "spiral"}`` for class ids (also
        when they are stored as floats, NaN for unlabelled rows); other values are taken
        as they are. A label mapped to None (``{"Irr": None}``: no class of the model) has
        its rows left out, counted as ``n_no_class``.
    threshold : float, optional
        Scores: a threshold in [0, 1] whose error rates are given beside those at the
        card's ``recommended_threshold``.
    target_fnr : float, optional
        Scores: a false negative rate in [0, 1) to keep to; the metrics then hold the
        highest threshold that rejects at most that fraction of your reals
        (``at_thresholds["target_fnr"]``) and the false positive rate there: the
        threshold to set for your own survey (``None`` without real rows).
    keep_flagged : bool, optional
        Use the rows whose ``<prefix>_flags`` is non-zero too, where their outputs are
        finite (default: leave them out; they are counted either way).
    suffix : str, optional
        The suffix of the model's columns, e.g. ``"_2"`` for a second run added to the
        table with ``on_conflict="suffix"`` (``rb_score_2``, ``rb_flags_2``).

    Returns
    -------
    LabelEvaluation
        ``metrics``: ``n_rows``, ``n_used``, ``n_unlabelled``, ``n_no_class`` (rows whose
        label ``labels`` maps to None), ``n_unscored`` (labelled rows
        without outputs: masked or not finite), ``n_flagged`` (labelled, scored rows with
        flags); for classifiers ``accuracy``, ``macro_recall`` (the mean recall of the
        classes your labels hold), ``per_class`` (recall, precision, support; None for a
        class without true or predicted rows), ``confusion_matrix`` (true rows, predicted
        columns) with ``class_names``, and ``ece`` (see `expected_calibration_error`); for
        scores ``n_real``, ``n_bogus``, ``roc_auc`` (None with one class only),
        ``at_thresholds`` (FNR and FPR at each threshold, ``score >= threshold`` being
        real, compared at the scores' precision as ``table["rb_score"] >= threshold``
        does: a float32 score 0.7 passes 0.7), ``roc_curve`` (``fpr``,
        ``tpr``, ``thresholds``: one point per distinct score, at most 1001, evenly
        spaced ones for more; with one class only the rate of the other is None at every
        point) and ``ece``. ``plot()`` draws them.

    Raises
    ------
    astromorph.exceptions.InputNotFoundError
        ``table`` is a path that names no file (an `InputError` too).
    astromorph.exceptions.InputError
        A ``table`` path that is a folder or cannot be read as a table, no ``truth``
        column or output column, an output or flags column that holds no numbers, truth
        values that are no class of the model (the message lists them and the classes), or
        no row left to score.
    astromorph.exceptions.InvalidArgumentError
        A model whose outputs are no classes or score (``morphology-gz2`` vote fractions,
        ``embedding``: the message says what to use), a bad option.
    astromorph.exceptions.InvalidArgumentTypeError
        An option of the wrong type.
    """
    from ._model import Model
    from ._registry import model_card
    from .preprocessing._checks import check_bool

    card = model.card if isinstance(model, Model) else model_card(model)
    name = card["name"]
    if not isinstance(truth, str):
        raise InvalidArgumentTypeError(f"truth must be a column name, got {truth!r}")
    keep_flagged = check_bool(keep_flagged, "keep_flagged")
    if not isinstance(suffix, str):
        raise InvalidArgumentTypeError(f"suffix must be a string, got {suffix!r}")
    kinds = {spec.get("kind") for spec in card["outputs"]}
    classifier = "probabilities" in kinds  # as `_is_classifier` tells
    if not classifier and "score" not in kinds:
        raise InvalidArgumentError(_cannot_score(name, kinds))
    threshold = _score_option(threshold, "threshold", name, classifier, one=True)
    target_fnr = _score_option(target_fnr, "target_fnr", name, classifier, one=False)
    table = _read(table)
    prefix = card.get("column_prefix", name.replace("-", "_"))
    hint = "; suffix= names the columns of a run added with on_conflict='suffix'"
    text, unlabelled = _truth_text(_column(table, truth, "truth"))
    if f"{prefix}_flags{suffix}" in table.colnames:
        flags, unknown = _numbers(table[f"{prefix}_flags{suffix}"])
        if flags.dtype.kind == "f":  # e.g. a CSV round trip that lost the integer type
            unknown |= ~np.isfinite(flags)
        # a masked or NaN flag is unknown: the row counts as flagged, never as clean
        flags = np.where(unknown, -1, np.where(unknown, 0, flags).astype(np.int64))
    else:
        log.info("the table has no %s_flags%s column: every row is taken as unflagged",
                 prefix, suffix)
        flags = np.zeros(len(table), np.int64)
    if classifier:
        spec = next(s for s in card["outputs"] if s.get("kind") == "probabilities")
        classes = list(spec["labels"])
        allowed = {c.lower(): i for i, c in enumerate(classes)}  # matched in any case
        mapping = _check_labels(labels, allowed, name)
        columns = [_numbers(_column(table, f"{prefix}_p_{c}{suffix}", f"{name} output", hint))
                   for c in classes]
        probs = np.stack([np.asarray(v, np.float64) for v, _ in columns], axis=1)
        scored = ~np.any([m for _, m in columns], axis=0) & np.isfinite(probs).all(axis=1)
        target, no_class = _translate(text, unlabelled, mapping, allowed,
                                      f"classes of {name!r} ({', '.join(classes)})", truth)
    else:
        mapping = _check_labels(labels, _REAL, name)
        score, mask = _numbers(_column(table, f"{prefix}_score{suffix}", f"{name} output",
                                      hint))
        # a threshold is compared at the scores' own precision, as ``table["rb_score"] >=
        # threshold`` does for a float32 column: float32(0.7) passes 0.7
        precision = score.dtype if score.dtype.kind == "f" else np.float64
        score = np.asarray(score, np.float64)
        scored = ~mask & np.isfinite(score)
        target, no_class = _translate(text, unlabelled, mapping, _REAL,
                                      "real (1, true, real) or bogus (0, false, bogus)", truth)
    used, metrics = _excluded(flags, scored, unlabelled, no_class, keep_flagged)
    metrics = {"model": name, "model_version": str(card.get("version")), "truth": truth,
               **metrics}
    if not used.any():
        raise InputError(f"no row to score: of {metrics['n_rows']}, {metrics['n_unlabelled']} "
                         f"have no label in {truth!r}, "
                         + (f"{metrics['n_no_class']} a label mapped to None, "
                            if metrics["n_no_class"] else "")
                         + f"{metrics['n_unscored']} no output of "
                         f"{name!r} and {metrics['n_flagged']} are flagged"
                         + ("" if keep_flagged else
                            " (keep_flagged=True, --keep-flagged, uses them)"))
    if classifier:
        y = target[used].astype(np.int64)
        report = classification_report(probs[used], y, classes)
        report.pop("n")
        metrics.update(report)
        return LabelEvaluation(metrics, {"probabilities": probs[used], "truth": y})
    s, real = score[used], target[used].astype(bool)
    thresholds = {}
    if card.get("recommended_threshold") is not None:
        thresholds["recommended"] = float(card["recommended_threshold"])
    if threshold is not None:
        thresholds["given"] = threshold
    if target_fnr is not None:  # NaN without real rows: no rates either
        thresholds["target_fnr"] = threshold_for_fnr(s, real, target_fnr)
    fpr, tpr, cuts = roc_curve(s, real)
    if len(cuts) > _ROC_POINTS:  # a big table: evenly spaced points, the ends kept
        keep = np.unique(np.linspace(0, len(cuts) - 1, _ROC_POINTS).round().astype(int))
        fpr, tpr, cuts = fpr[keep], tpr[keep], cuts[keep]
    metrics.update({
        "n_real": int(real.sum()), "n_bogus": int((~real).sum()),
        "roc_auc": _finite(roc_auc(s, real)),
        "at_thresholds": {},
        "ece": expected_calibration_error(np.stack([1 - s, s], 1), real),
        # a rate of a class without rows is no fraction: None, not 0 at every point
        "roc_curve": {"fpr": fpr.tolist() if (~real).any() else [None] * len(fpr),
                      "tpr": tpr.tolist() if real.any() else [None] * len(tpr),
                      "thresholds": [None] + cuts[1:].tolist()},  # the first is inf
    })
    for key, t in thresholds.items():
        fnr, fp = (error_rates(s, real, float(np.asarray(t, precision)))
                   if np.isfinite(t) else (np.nan, np.nan))
        metrics["at_thresholds"][key] = {"threshold": _finite(t), "fnr": _finite(fnr),
                                         "fpr": _finite(fp)}
    if "target_fnr" in metrics["at_thresholds"]:
        metrics["at_thresholds"]["target_fnr"]["target"] = target_fnr
    return LabelEvaluation(metrics, {"scores": s, "real": real})


def _score_option(value, option, name, classifier, *, one):
    """A rate option of scores (``threshold``, ``target_fnr``): None, or a number in [0, 1]
    (``one``) or [0, 1); refused for a classifier."""
    from .preprocessing._checks import check_number

    if value is None:
        return None
    if classifier:
        raise InvalidArgumentError(f"{option} is for scores (real-bogus); model {name!r} "
                                   "gives class probabilities")
    value = check_number(value, option, minimum=0)
    if value > 1 or (value == 1 and not one):
        raise InvalidArgumentError(f"{option} must be in [0, {'1]' if one else '1)'}, "
                                   f"got {value!r}")
    return value


def _cannot_score(name, kinds):
    if "embedding" in kinds:
        return (f"model {name!r} gives embedding vectors, not classes: fit "
                "astromorph.LabelHead on them with your labels (its cv_scores_ say how well "
                "they separate), or cluster them (astromorph.cluster_table)")
    return (f"model {name!r} gives vote fractions ({', '.join(sorted(map(str, kinds)))}), "
            "not one class per row: compare its columns with your own fractions directly "
            "(e.g. their mean absolute error), or evaluate the morphology model's classes")


# ---------------------------------------------------------------------------- command line
def register(sub):
    """Add the ``evaluate`` sub-command to the ``astromorph`` command line."""
    from .cli import add_model_option

    p = sub.add_parser(
        "evaluate", help="score a model's columns in a table against your own labels",
        description="Compare the output columns a model wrote into a table (astromorph "
                    "annotate or predict) with a column of your labels: accuracy, recall, "
                    "confusion matrix and calibration for classifiers; ROC AUC and error "
                    "rates at thresholds for real-bogus. Unlabelled and flagged rows are "
                    "left out and counted.")
    p.add_argument("table", metavar="TABLE", help="table with the model's columns (ECSV, "
                                                  "FITS, CSV or Parquet)")
    p.add_argument("--truth", required=True, metavar="COL", help="column of your labels")
    add_model_option(p, "model name or path that made the columns", required=True)
    p.add_argument("--map", action="append", dest="label_map", metavar="USER=CLASS",
                   help="translate a label of yours to the model's (repeat), e.g. "
                        "--map E=elliptical; --map=-5=elliptical for a label that "
                        "begins with -; --map Irr= leaves out the rows of a label that "
                        "is no class of the model")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="real-bogus: also give the error rates at this threshold")
    p.add_argument("--target-fnr", type=float, metavar="F",
                   help="real-bogus: also give the highest threshold that rejects at most "
                        "this fraction of your reals (e.g. 0.02), and the FPR there "
                        "(default: none)")
    p.add_argument("--suffix", default="", metavar="S",
                   help="suffix of the model's columns, e.g. _2 for a second run added "
                        "with --on-conflict suffix (default: none)")
    p.add_argument("--keep-flagged", action="store_true",
                   help="use flagged rows that have outputs too (default: leave them out)")
    p.add_argument("--plot", metavar="OUT.png", help="write a figure (confusion matrix, or "
                   "ROC curve for real-bogus)")
    p.add_argument("--plot-kind", choices=["confusion", "reliability", "roc"], default=None,
                   help="which figure --plot draws (default: confusion, or roc for scores)")
    p.add_argument("-o", "--output", metavar="METRICS.json", help="write the metrics as JSON")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (default: refuse before any work)")
    p.set_defaults(func=_cmd_evaluate)
    return p


def _cmd_evaluate(args):
    from ._io import atomic_output, check_distinct_outputs, check_output
    from ._plotting import picture_format
    from .cli import check_range, report

    check_range("--threshold", args.threshold, low=0, high=1)
    if args.target_fnr is not None and not 0 <= args.target_fnr < 1:
        raise InvalidArgumentError(f"--target-fnr must be in [0, 1), got {args.target_fnr:g}")
    labels = {}
    for item in args.label_map or ():
        user, sep, model_class = item.partition("=")
        if not sep or not user.strip():
            raise InvalidArgumentError(f"--map takes YOUR_LABEL=MODEL_CLASS, got {item!r}")
        # YOUR_LABEL= (no class): a label of no class of the model, its rows left out
        labels[user.strip()] = model_class.strip() or None
    if args.plot_kind and not args.plot:
        raise InvalidArgumentError("--plot-kind applies only with --plot")
    if args.plot_kind:  # before any work: the kinds this model's outputs have
        from ._registry import model_card

        card = model_card(args.model)
        kinds = _PLOT_KINDS[_is_classifier(card)]
        if args.plot_kind not in kinds:
            raise InvalidArgumentError(
                f"--plot-kind {args.plot_kind} does not apply to model {card['name']!r}: "
                f"use {' or '.join(kinds)}")
    check_distinct_outputs({"--output": args.output, "--plot": args.plot})
    for path in (args.output, args.plot):  # before any work
        if path:
            check_output(path, overwrite=args.overwrite, inputs=[args.table])
    if args.plot:
        picture_format(args.plot)
    result = evaluate_labels(args.table, args.truth, model=args.model, labels=labels or None,
                             threshold=args.threshold, target_fnr=args.target_fnr,
                             keep_flagged=args.keep_flagged,
                             suffix=args.suffix)
    if args.plot:
        result.plot(args.plot, kind=args.plot_kind, overwrite=args.overwrite)
    if args.output:
        with atomic_output(args.output, overwrite=args.overwrite) as tmp:
            tmp.write_text(json.dumps(result.metrics, indent=1) + "\n")
    if not args.quiet or not args.output:  # without -o the summary is the result, as the
        print(result.summary())           # table is for predict and annotate
    for what, path in (("metrics", args.output), ("figure", args.plot)):
        if path:
            report(args, f"wrote {what} to {path}")
    return 0
