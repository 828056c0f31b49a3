"""The numbers ``real-bogus calibrate`` and ``evaluate`` write (issue #5's bar), against brute force.

* calibration: Platt scaling (a, b) against a grid of the NLL, the recommended threshold
  against a loop over every candidate score (detected candidates, ``snr_det >= 5``, only);
* the population blocks of ``metrics.json``: FNR / FPR at the card threshold with their
  Clopper-Pearson 95 % intervals (independently, from the binomial distribution), AUCs;
* the breakdowns by kind and S/N, the real-alert block against braai's ``drb >= 0.5``
  (agreement, ZTF's rf ``rb``) and its bootstrap AUC interval, stratified by class and
  reproduced by a loop on a tiny set with the documented seed.

numpy / scipy only (no torch, no data): the functions are fed synthetic scores.
"""
import numpy as np
import pytest

rb = pytest.importorskip("astromorph_training.realbogus")


def _loop_auc(s, real):
    """AUC as the fraction of (real, bogus) pairs ordered right, ties half."""
    pos = [v for v, r in zip(s, real) if r]
    neg = [v for v, r in zip(s, real) if not r]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


# ---------------------------------------------------------------- bootstrap AUC interval
def test_auc_bootstrap_resamples_keep_both_classes(monkeypatch):
    """The AUC interval resamples within each class (the two-sample, stratified bootstrap),
    so every resample holds as many drb-real and drb-bogus alerts as the set: none is left
    without a class and dropped. Resampling all alerts together, the 43 held-out-sky alerts
    (4 drb-bogus) lost their bogus in about 1.5 % of the 2000 resamples, which NaN-skipping
    percentiles dropped without notice, narrowing the interval users read."""
    rng = np.random.default_rng(3)
    lab = np.zeros(43, bool)
    lab[:39] = True
    s = np.where(lab, rng.uniform(0.3, 1, 43), rng.uniform(0, 0.7, 43))
    seen = []
    real_auc = rb.roc_auc

    def counting(scores, real):
        real = np.asarray(real, bool)
        seen.append((int(real.sum()), int((~real).sum())))
        return real_auc(scores, real)

    monkeypatch.setattr(rb, "roc_auc", counting)
    lo, hi = rb._auc_interval(s, lab)
    assert len(seen) == 2000
    assert set(seen) == {(39, 4)}
    assert 0 <= lo <= real_auc(s, lab) <= hi <= 1


def test_auc_interval_is_the_documented_stratified_bootstrap_by_a_loop():
    """On a tiny set, the interval is the 2.5 and 97.5 percentiles of the pair-counting AUC
    over 2000 resamples drawn as documented (seed 0; reals, then bogus, each from its own
    class): what a reader needs to reproduce the card's interval."""
    s = np.array([0.9, 0.2, 0.55, 0.7, 0.1, 0.6, 0.3, 0.8, 0.45, 0.35, 0.65, 0.05])
    lab = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 0, 1], bool)
    rng = np.random.default_rng(0)
    reals, bogus = [0, 2, 3, 6, 7, 9, 11], [1, 4, 5, 8, 10]
    r = rng.integers(0, 7, (2000, 7))
    b = rng.integers(0, 5, (2000, 5))
    aucs = []
    for k in range(2000):
        rows = [reals[j] for j in r[k]] + [bogus[j] for j in b[k]]
        aucs.append(_loop_auc(s[rows], lab[rows]))
    aucs = sorted(aucs)

    def pct(q):  # numpy's default (linear) percentile, by hand
        h = (len(aucs) - 1) * q / 100
        return aucs[int(h)] + (h - int(h)) * (aucs[int(h) + 1] - aucs[int(h)])

    assert rb._auc_interval(s, lab) == pytest.approx([pct(2.5), pct(97.5)], abs=1e-12)
    assert rb._auc_interval(s, lab, n_boot=50) != rb._auc_interval(s, lab)


@pytest.mark.parametrize("lab", [np.ones(5, bool), np.zeros(5, bool)])
def test_auc_interval_of_one_class_is_nan(lab):
    """Without both classes there is no AUC and no interval: [nan, nan], not an error."""
    assert np.isnan(rb._auc_interval(np.linspace(0, 1, 5), lab)).all()
