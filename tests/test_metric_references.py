"""The held-out measures of the model cards against independent brute-force references.

`astromorph._evaluate` (``roc_auc``, ``roc_curve``, ``error_rates``, ``threshold_for_fnr``,
``classification_report``, ``expected_calibration_error``) computes the numbers that
`evaluate_labels` gives and that ``training/`` writes into the cards and reports; the
training helpers (``rates``, ``fit_temperature``, ``softmax``) the rest. Each is compared here
with a plain loop or with scipy (sklearn is not a dependency) on seeded random inputs, ties
and edge values included.
"""
import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from astromorph._evaluate import (classification_report, error_rates,
                                  expected_calibration_error, roc_auc, roc_curve,
                                  threshold_for_fnr)


def _binary_sets(n_sets=60, seed=0):
    """Scores on a coarse grid (many ties, 0 and 1 included) with labels of both classes."""
    rng = np.random.default_rng(seed)
    for _ in range(n_sets):
        n = int(rng.integers(2, 40))
        s = rng.integers(0, 5, n) / 4
        y = rng.random(n) < 0.5
        y[:2] = [True, False]
        yield s, y


def test_roc_auc_is_the_mann_whitney_statistic_with_ties():
    for s, y in _binary_sets():
        ref = mannwhitneyu(s[y], s[~y]).statistic / (y.sum() * (~y).sum())
        assert roc_auc(s, y) == pytest.approx(ref, abs=1e-12)
        # labels as 0/1 integers are the same truth
        assert roc_auc(s, y.astype(int)) == roc_auc(s, y)


def test_roc_auc_without_both_classes_is_nan():
    assert np.isnan(roc_auc([0.1, 0.2], [True, True]))
    assert np.isnan(roc_auc([0.1, 0.2], [0, 0]))


def test_roc_curve_points_are_the_rates_at_each_distinct_score():
    for s, y in _binary_sets():
        fpr, tpr, cuts = roc_curve(s, y)
        assert cuts[0] == np.inf and list(cuts[1:]) == sorted(set(s), reverse=True)
        for f, t, c in zip(fpr, tpr, cuts):  # score >= c is called real
            assert f == np.mean(s[~y] >= c) and t == np.mean(s[y] >= c)
            fnr, fp = error_rates(s, y, c)
            assert fp == f and fnr == pytest.approx(1 - t, abs=1e-15)
        # the area under the curve (trapezoids: ties as diagonal steps) is the AUC
        area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
        assert area == pytest.approx(roc_auc(s, y), abs=1e-12)


def test_error_rates_at_a_threshold_equal_to_a_score_call_it_real():
    fnr, fpr = error_rates([0.2, 0.5, 0.5, 0.8], [True, True, False, False], 0.5)
    assert (fnr, fpr) == (0.5, 1.0)  # the real 0.5 is kept, the bogus 0.5 accepted


def test_threshold_for_fnr_is_the_highest_score_keeping_the_rate():
    rng = np.random.default_rng(1)
    for _ in range(150):
        n = int(rng.integers(1, 30))
        s = rng.integers(0, 8, n) / 7
        y = rng.random(n) < 0.6
        y[0] = True
        target = float(rng.choice([0, 0.02, 0.1, 0.25, 1 / 3, 0.5, 0.99]))
        # every score (and +inf): the highest whose rejected reals are at most target * n
        ok = [c for c in np.r_[s, np.inf] if np.sum(s[y] < c) <= target * y.sum() + 1e-9]
        t = threshold_for_fnr(s, y, target)
        assert t == max(ok)
        assert error_rates(s, y, t)[0] <= target + 1e-12
    # a target whose product with the count is an integer only on paper (0.29 * 100 is
    # 28.999999999999996 in floating point) still allows that many rejections
    s = np.arange(100) / 100
    assert threshold_for_fnr(s, np.ones(100, bool), 0.29) == 0.29


def test_classification_report_against_loops():
    rng = np.random.default_rng(2)
    for _ in range(60):
        n, k = int(rng.integers(1, 30)), int(rng.integers(2, 6))
        probs = rng.dirichlet(np.ones(k), n)
        y = rng.integers(0, k, n)
        names = [f"c{i}" for i in range(k)]
        r = classification_report(probs, y, names)
        pred = [max(range(k), key=lambda j: probs[i, j]) for i in range(n)]
        cm = [[sum(1 for i in range(n) if y[i] == a and pred[i] == b) for b in range(k)]
              for a in range(k)]
        assert r["confusion_matrix"] == cm
        assert r["accuracy"] == pytest.approx(np.mean(np.equal(pred, y)), abs=1e-12)
        recalls = []
        for a in range(k):
            row, col = sum(cm[a]), sum(cm[b][a] for b in range(k))
            c = r["per_class"][f"c{a}"]
            assert c["support"] == row
            assert c["recall"] == (None if row == 0 else round(cm[a][a] / row, 4))
            assert c["precision"] == (None if col == 0 else round(cm[a][a] / col, 4))
            if row:
                recalls.append(cm[a][a] / row)
        # macro recall: the mean over the classes present in the truth (documented)
        assert r["macro_recall"] == pytest.approx(np.mean(recalls), abs=1e-12)


def _ece_reference(probs, labels, n_bins=15):
    """Top-label ECE with the bins [b / n, (b + 1) / n), the last one closed at 1."""
    total = 0.0
    n = len(labels)
    rows = [(max(p), int(np.argmax(p)) == lab) for p, lab in zip(probs, labels)]
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        sel = [(c, ok) for c, ok in rows if lo <= c < hi or (b == n_bins - 1 and c == 1)]
        if sel:
            conf = sum(c for c, _ in sel) / len(sel)
            acc = sum(ok for _, ok in sel) / len(sel)
            total += len(sel) / n * abs(acc - conf)
    return total


def test_ece_against_a_loop_with_confidences_on_bin_edges():
    rng = np.random.default_rng(3)
    for i in range(80):
        n = int(rng.integers(1, 30))
        if i % 2:  # a binary score on the bin edges: 0, 1 and every b / 15
            s = rng.integers(0, 16, n) / 15
            probs, y = np.stack([1 - s, s], 1), rng.integers(0, 2, n)
        else:
            k = int(rng.integers(2, 5))
            probs, y = rng.dirichlet(np.ones(k), n), rng.integers(0, k, n)
        assert expected_calibration_error(probs, y) == pytest.approx(
            _ece_reference(probs, y), abs=1e-12)
    # every confidence exactly on an edge falls in the bin it opens (1 in the last)
    for b in range(16):
        c = b / 15
        if c >= 0.5:
            assert expected_calibration_error([[c, 1 - c]], [0]) == pytest.approx(1 - c)
    assert expected_calibration_error([[1.0, 0.0], [0.0, 1.0]], [0, 1]) == 0.0


def test_training_helpers_against_references():
    rb = pytest.importorskip("astromorph_training.realbogus")
    common = pytest.importorskip("astromorph_training._common")
    from scipy.special import softmax

    for s, y in _binary_sets(20):
        for t in (0.0, 0.25, 0.5, 1.0):  # thresholds equal to scores: >= is real
            fnr = sum(1 for v, lab in zip(s, y) if lab and not v >= t) / y.sum()
            fpr = sum(1 for v, lab in zip(s, y) if not lab and v >= t) / (~y).sum()
            assert rb.rates(s, y, t) == (fnr, fpr) == error_rates(s, y, t)

    rng = np.random.default_rng(4)
    z = rng.normal(0, 2, (300, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(z / 0.5, axis=1)])  # drawn at T = 0.5
    assert np.allclose(common.softmax(z, 2.0), softmax(z / 2.0, axis=1))
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    nll = [-np.mean(np.log(softmax(z / t, axis=1)[np.arange(300), y])) for t in grid]
    assert common.fit_temperature(z, y) == pytest.approx(grid[np.argmin(nll)], rel=2e-3)


@pytest.mark.parametrize("call", [
    lambda s, y: roc_auc(s, y), lambda s, y: roc_curve(s, y),
    lambda s, y: error_rates(s, y, 0.5), lambda s, y: threshold_for_fnr(s, y, 0.1)])
def test_score_measures_refuse_what_they_cannot_score(call):
    """NaN scores were silently ranked, sorted last or counted as right answers (a NaN real
    was not rejected and a NaN bogus not accepted at any threshold); text labels were all
    real ('0' is a true string) and other numbers were real when non-zero."""
    from astromorph.exceptions import InvalidArgumentError

    s, y = np.array([0.2, 0.9, 0.4, 0.7]), np.array([0, 1, 0, 1])
    call(s, y)
    call(s, y.astype(bool))
    call(s, y.astype(float))
    with pytest.raises(InvalidArgumentError, match=r"1 of 4 scores .*row 2: nan"):
        call(np.where(np.arange(4) == 2, np.nan, s), y)
    for labels, shown in ((np.array(["0", "1", "0", "1"]), "'0'"),
                          (np.array([0, 1, 2, 1]), "2"), (np.array([0, 1, 0.5, 1]), "0.5"),
                          (np.array([0, np.nan, 0, 1]), "nan")):
        with pytest.raises(InvalidArgumentError, match=f"0 or 1.*{shown}"):
            call(s, labels)
    with pytest.raises(InvalidArgumentError, match="3 scores and 4 labels"):
        call(s[:3], y)


@pytest.mark.parametrize("call", [
    lambda p, y: classification_report(p, y, ["a", "b", "c"]),
    lambda p, y: expected_calibration_error(p, y)])
def test_class_measures_refuse_labels_that_are_no_class(call):
    """A label -1 was counted as the last class (numpy's negative index), a NaN probability
    row was in no bin of the ECE but in its denominator."""
    from astromorph.exceptions import InvalidArgumentError

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    call(probs, np.array([0, 1, 2]))
    for labels, shown in ((np.array([0, -1, 2]), "-1"), (np.array([0, 3, 2]), "3"),
                          (np.array([0, 1.5, 2]), "1.5"), (np.array(["a", "b", "c"]), "'a'")):
        with pytest.raises(InvalidArgumentError, match=f"class indices 0 to 2.*{shown}"):
            call(probs, labels)
    bad = probs.copy()
    bad[1, 0] = np.nan
    with pytest.raises(InvalidArgumentError, match=r"1 of 3 rows .*row 1"):
        call(bad, np.array([0, 1, 2]))
    with pytest.raises(InvalidArgumentError, match="3 rows of probabilities and 2 labels"):
        call(probs, np.array([0, 1]))


def test_a_report_refuses_probabilities_of_other_classes():
    from astromorph.exceptions import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="2 columns.*3 class names"):
        classification_report(np.eye(2), [0, 1], ["a", "b", "c"])


def test_training_rates_refuse_nan_scores():
    """realbogus.rates counted a NaN real as kept and a NaN bogus as rejected."""
    rb = pytest.importorskip("astromorph_training.realbogus")
    from astromorph.exceptions import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="not finite"):
        rb.rates([np.nan, 0.9, np.nan, 0.1], [1, 1, 0, 0], 0.5)


def _pairwise_auc(s, y):
    """The AUC by its definition: over every (real, bogus) pair, 1 where the real scores
    higher, 1/2 for a tie."""
    wins = 0.0
    for a in s[y]:
        for b in s[~y]:
            wins += 1.0 if a > b else 0.5 if a == b else 0.0
    return wins / (y.sum() * (~y).sum())


def test_roc_auc_counts_every_real_bogus_pair_ties_half():
    """The rank-sum AUC against the pair count it stands for (scipy's Mann-Whitney above
    ranks as the code does): continuous scores, a coarse grid of ties, scores outside
    [0, 1], all scores equal, labels as booleans, integers and floats."""
    rng = np.random.default_rng(11)
    for i in range(120):
        n = int(rng.integers(2, 60))
        s = [rng.random(n), rng.integers(0, 4, n) / 3, rng.normal(0, 50, n),
             np.full(n, 0.37)][i % 4]
        y = rng.random(n) < rng.uniform(0.05, 0.95)
        y[:2] = [True, False]
        ref = _pairwise_auc(s, y)
        assert roc_auc(s, y) == pytest.approx(ref, abs=1e-12)
        assert roc_auc(s, y.astype(np.int8)) == roc_auc(s, y.astype(float)) == roc_auc(s, y)
    assert roc_auc(np.full(7, 0.5), np.arange(7) % 2 == 0) == 0.5


@pytest.mark.parametrize("real", [True, False])
def test_roc_auc_of_one_class_is_nan_without_a_numpy_warning(real):
    """One class only has no pair to count: NaN, said quietly (a 0/0 gave the same NaN
    with numpy's 'invalid value encountered in scalar divide' warning, which under
    ``-W error`` or a warnings filter of the user's stopped the evaluation)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(roc_auc([0.1, 0.5, 0.9], [real] * 3))


def test_threshold_for_fnr_of_a_target_just_below_one_is_the_highest_real_score():
    """A target a hair below 1 (allowed: [0, 1)) times the number of reals rounds up to that
    number: the threshold is still one of the real scores (the highest), not an
    IndexError past the end."""
    s = np.arange(100) / 100
    assert threshold_for_fnr(s, np.ones(100, bool), 1 - 1e-13) == 0.99
    assert threshold_for_fnr([0.3], [True], 0.999999999999999) == 0.3


def test_ece_of_any_bin_count_against_a_loop_with_confidences_at_the_edges():
    """Every ``n_bins``, not only the default 15, against the loop: confidences on each edge
    ``b / n_bins`` and one floating-point step either side. ``int(c * n_bins)`` put a
    confidence one step below an edge (0.8999999999999999 with 10 bins) in the bin above."""
    for n_bins in range(1, 31):
        edges = np.arange(n_bins + 1) / n_bins
        c = np.concatenate([edges, np.nextafter(edges, -1), np.nextafter(edges, 2)])
        c = np.unique(c[(c >= 0.5) & (c <= 1)])
        probs = np.stack([c, 1 - c], 1)
        y = (np.arange(len(c)) % 3 == 0).astype(int)  # class 0, the top one, a third right
        assert expected_calibration_error(probs, y, n_bins) == pytest.approx(
            _ece_reference(probs, y, n_bins), abs=1e-12), n_bins
    rng = np.random.default_rng(12)
    for n_bins in (1, 2, 3, 7, 10, 20, 50):
        probs = rng.dirichlet(np.ones(3) * 0.5, 200)
        y = rng.integers(0, 3, 200)
        assert expected_calibration_error(probs, y, n_bins) == pytest.approx(
            _ece_reference(probs, y, n_bins), abs=1e-12)


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, "15", None, True])
def test_ece_refuses_a_bin_count_that_is_no_positive_whole_number(n_bins):
    """``n_bins=0`` (or negative) gave an ECE of 0.0, perfect calibration, for any
    probabilities: no bin, nothing summed."""
    from astromorph.exceptions import InvalidArgumentError, InvalidArgumentTypeError

    with pytest.raises((InvalidArgumentError, InvalidArgumentTypeError), match="n_bins"):
        expected_calibration_error([[0.9, 0.1], [0.2, 0.8]], [1, 1], n_bins)


def test_reliability_figure_bars_are_the_loop_accuracies():
    """The reliability diagram's bars (top-label accuracy per bin) and the row counts at
    their feet are those of the ECE's bins, confidences on edges included."""
    pytest.importorskip("matplotlib")
    from astromorph._evaluate import reliability_figure

    rng = np.random.default_rng(13)
    for n_bins in (4, 10, 15):
        s = np.r_[rng.integers(0, 2 * n_bins + 1, 60) / (2 * n_bins), rng.random(40)]
        s = np.r_[s, np.nextafter(np.arange(n_bins + 1) / n_bins, -1)[1:]]
        probs, y = np.stack([1 - s, s], 1), rng.integers(0, 2, len(s))
        rows = [(max(p), int(np.argmax(p)) == lab) for p, lab in zip(probs, y)]
        heights, counts = [], []
        for b in range(n_bins):
            sel = [ok for c, ok in rows if b / n_bins <= c < (b + 1) / n_bins
                   or (b == n_bins - 1 and c == 1)]
            heights.append(np.mean(sel) if sel else 0.0)
            if sel:
                counts.append(str(len(sel)))
        ax = reliability_figure(probs, y, n_bins=n_bins).axes[0]
        assert [p.get_height() for p in ax.patches] == pytest.approx(heights, abs=1e-12)
        assert [t.get_text() for t in ax.texts] == counts
        assert f"ECE = {_ece_reference(probs, y, n_bins):.3f}" in ax.get_title()


def test_classification_report_ece_is_the_default_fifteen_bins():
    """The report's (and the model cards') ECE is `expected_calibration_error` with its
    documented 15 bins, checked on probabilities where 10 or 20 bins give other values."""
    rng = np.random.default_rng(14)
    probs, y = rng.dirichlet(np.ones(4), 300), rng.integers(0, 4, 300)
    r = classification_report(probs, y, list("abcd"))
    assert r["ece"] == pytest.approx(_ece_reference(probs, y, 15), abs=1e-12)
    assert abs(_ece_reference(probs, y, 10) - r["ece"]) > 1e-6
    assert abs(_ece_reference(probs, y, 20) - r["ece"]) > 1e-6


def test_a_report_refuses_more_probability_columns_than_class_names():
    """Three columns for two names were scored: a prediction of the third column counted
    in no named class's precision but against the accuracy, silently."""
    from astromorph.exceptions import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="3 columns for 2 class names"):
        classification_report(np.full((2, 3), 1 / 3), [0, 1], ["a", "b"])
