"""The numbers ``real-bogus calibrate`` and ``evaluate`` write (issue #5's bar), against brute
force.

* calibration: Platt scaling (a, b) against a grid of the NLL, the recommended threshold
  against a loop over every candidate score (detected candidates, ``snr_det >= 5``, only);
* the population blocks of ``metrics.json``: FNR / FPR at the card threshold with their
  Clopper-Pearson 95 % intervals (independently, from the binomial distribution), AUCs;
* the breakdowns by kind and S/N, the real-alert block against braai's ``drb >= 0.5``
  (agreement, ZTF's rf ``rb``) and its bootstrap AUC interval, stratified by class and
  reproduced by a loop on a small set with the documented seed.

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
    """On a small set, the interval is the 2.5 and 97.5 percentiles of the pair-counting AUC
    over 2000 resamples drawn as documented (seed 0; reals, then bogus, each from its own
    class): what a reader needs to reproduce the card's interval."""
    gen = np.random.default_rng(12)
    lab = gen.uniform(size=30) < 0.6
    s = np.round(np.where(lab, gen.uniform(0.2, 1, 30), gen.uniform(0, 0.8, 30)), 2)
    rng = np.random.default_rng(0)
    reals, bogus = list(np.flatnonzero(lab)), list(np.flatnonzero(~lab))
    r = rng.integers(0, len(reals), (2000, len(reals)))
    b = rng.integers(0, len(bogus), (2000, len(bogus)))
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



# ------------------------------------------- compare's paired bootstrap of the AUC gains
def _loop_draws(lab, n_boot):
    """The documented stratified draws, by hand: seed 0, reals then bogus, each from its class."""
    rng = np.random.default_rng(0)
    reals, bogus = list(np.flatnonzero(lab)), list(np.flatnonzero(~lab))
    r = rng.integers(0, len(reals), (n_boot, len(reals)))
    b = rng.integers(0, len(bogus), (n_boot, len(bogus)))
    return [[reals[j] for j in r[k]] + [bogus[j] for j in b[k]] for k in range(n_boot)]


def _loop_pct(values, q):
    """numpy's default (linear) percentile, by hand."""
    v = sorted(values)
    h = (len(v) - 1) * q / 100
    return v[int(h)] + (h - int(h)) * (v[min(int(h) + 1, len(v) - 1)] - v[int(h)])


def test_paired_auc_gains_against_a_loop_over_the_draws():
    """``compare``'s intervals: on each of the documented draws (the same for every model),
    the candidate's pair-counting AUC minus the shipped model's (and minus the first
    candidate's, for the later ones); then the 2.5, 50 and 97.5 percentiles of those."""
    gen = np.random.default_rng(5)
    n = 24
    lab = gen.uniform(size=n) < 0.6
    shipped = np.round(np.where(lab, gen.uniform(0.2, 1, n), gen.uniform(0, 0.8, n)), 2)
    cands = [np.round(np.where(lab, gen.uniform(lo, 1, n), gen.uniform(0, 0.7, n)), 2)
             for lo in (0.3, 0.1, 0.4)]
    n_boot = 400
    draws = _loop_draws(lab, n_boot)

    def loop_aucs(s):
        return [_loop_auc(s[rows], lab[rows]) for rows in draws]

    a_s, a_1 = loop_aucs(shipped), loop_aucs(cands[0])
    got = rb._paired_auc_gains(shipped, cands, lab, n_boot=n_boot)
    assert len(got) == 3
    for k, (c, g) in enumerate(zip(cands, got)):
        a_c = loop_aucs(c)
        want = {"R_minus_shipped_bootstrap_2.5_50_97.5":
                [_loop_pct([x - y for x, y in zip(a_c, a_s)], q) for q in (2.5, 50, 97.5)]}
        if k:
            want["R_minus_first_candidate_bootstrap_2.5_50_97.5"] = [
                _loop_pct([x - y for x, y in zip(a_c, a_1)], q) for q in (2.5, 50, 97.5)]
        assert list(g) == list(want)
        for key in want:
            assert g[key] == pytest.approx(want[key], abs=1e-12)
            assert g[key][0] < g[key][1] < g[key][2]  # not a degenerate interval
    # 2000 resamples unless told: the default is not the 400 above
    assert rb._paired_auc_gains(shipped, cands[:1], lab) != got[:1]


def test_paired_auc_gains_use_the_same_draws_for_every_model():
    """Paired: a candidate scoring exactly as the shipped model (or as the first candidate)
    gains exactly 0 on every draw; resampling each model on its own draws would not."""
    gen = np.random.default_rng(8)
    lab = gen.uniform(size=40) < 0.5
    shipped = gen.uniform(size=40)
    other = gen.uniform(size=40)
    g = rb._paired_auc_gains(shipped, [shipped.copy(), other, other.copy()], lab)
    assert g[0] == {"R_minus_shipped_bootstrap_2.5_50_97.5": [0.0, 0.0, 0.0]}
    assert g[2]["R_minus_first_candidate_bootstrap_2.5_50_97.5"] == pytest.approx(
        g[1]["R_minus_first_candidate_bootstrap_2.5_50_97.5"], abs=1e-12)
    assert g[2]["R_minus_shipped_bootstrap_2.5_50_97.5"] == pytest.approx(
        g[1]["R_minus_shipped_bootstrap_2.5_50_97.5"], abs=1e-12)
    lo, mid, hi = g[1]["R_minus_shipped_bootstrap_2.5_50_97.5"]
    assert lo < mid < hi and hi - lo > 0.05  # two unrelated scorings differ


@pytest.mark.parametrize("lab", [np.ones(6, bool), np.zeros(6, bool)])
def test_paired_auc_gains_of_one_class_are_nan(lab):
    """Without both drb classes there is no AUC, so no gain: every percentile is NaN."""
    s = np.linspace(0, 1, 6)
    g = rb._paired_auc_gains(s, [s[::-1], s ** 2], lab, n_boot=20)
    assert list(g[0]) == ["R_minus_shipped_bootstrap_2.5_50_97.5"]
    for key in ("R_minus_shipped_bootstrap_2.5_50_97.5",
                "R_minus_first_candidate_bootstrap_2.5_50_97.5"):
        assert len(g[1][key]) == 3 and np.isnan(g[1][key]).all()


# ---------------------------------------------------------------- brute-force references
def _loop_rates(s, real, t):
    """(FNR, FPR) at threshold t (a score >= t is real), by counting."""
    n_real = sum(1 for r in real if r)
    n_bogus = len(real) - n_real
    missed = sum(1 for v, r in zip(s, real) if r and not v >= t)
    kept = sum(1 for v, r in zip(s, real) if not r and v >= t)
    return missed / n_real, kept / n_bogus


def _loop_balance(s, real):
    """The exact minimum of max(FNR, FPR) over every threshold, and the lowest distinct score
    reaching it (every threshold in (previous score, that score] gives the same rates)."""
    best, arg = np.inf, None
    for t in sorted(set(s)) + [np.inf]:
        m = max(_loop_rates(s, real, t))
        if m < best:
            best, arg = m, t
    below = [v for v in s if v < arg]
    return best, arg, (max(below) if below else -np.inf)


def _clopper_pearson(k, n):
    """95 % Clopper-Pearson interval by solving the binomial tail equations (no beta
    quantiles): P(X >= k | low) = 0.025 and P(X <= k | high) = 0.025."""
    from scipy.optimize import brentq
    from scipy.stats import binom

    low = 0.0 if k == 0 else brentq(lambda p: binom.sf(k - 1, n, p) - 0.025, 1e-15, 1 - 1e-15,
                                    xtol=1e-14)
    high = 1.0 if k == n else brentq(lambda p: binom.cdf(k, n, p) - 0.025, 1e-15, 1 - 1e-15,
                                     xtol=1e-14)
    return low, high


def _simulated_info(rng, n):
    """Labels, kinds, injected S/N, detection S/N and host flags as the cached sets hold
    them, with S/N exactly 5 and bin edges present, and scores with overlapping classes."""
    kinds = rng.integers(0, len(rb.KIND_NAMES), n)
    label = np.array([1 if rb.KIND_NAMES[k] in rb.sim.REAL_KINDS else 0 for k in kinds])
    snr = np.exp(rng.uniform(np.log(3), np.log(999), n))
    snr[::7] = 5.0
    snr[3::11] = 10.0
    snr_det = np.where(label == 1, snr * rng.uniform(0.5, 1.3, n), rng.uniform(0, 12, n))
    snr_det[1::6] = 5.0
    snr_det[2::13] = 4.0
    host = rng.uniform(size=n) < 0.5
    z = rng.normal(np.where(label == 1, 1.5, -1.5), 1.6)
    z[snr < 8] -= 1.0  # faint reals score lower, so the populations' thresholds differ
    return z, {"label": label, "kind": kinds, "snr": snr, "snr_det": snr_det, "host": host}


# ---------------------------------------------------------------- calibration
def test_platt_scaling_is_the_least_nll_fit():
    """(a, b) minimise the mean NLL of sigmoid(a z + b): the same to 1e-4 as a gradient fit
    with the analytic gradient, and no point of a grid around it does better."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(5)
    z = rng.normal(0, 2, 3000)
    y = (rng.uniform(size=3000) < 1 / (1 + np.exp(-(1.7 * z - 0.4)))).astype(int)
    a, b = rb.fit_platt(z, y)

    def nll(p):
        t = p[0] * z + p[1]
        return np.mean(np.log1p(np.exp(-np.abs(t))) + np.maximum(t, 0) - y * t)

    def grad(p):
        r = 1 / (1 + np.exp(-(p[0] * z + p[1]))) - y
        return np.array([np.mean(r * z), np.mean(r)])

    ref = minimize(nll, [0.0, 0.0], jac=grad, method="BFGS", options={"gtol": 1e-12}).x
    assert (a, b) == pytest.approx(tuple(ref), abs=1e-4)
    grid = [(a + da, b + db) for da in (-1e-3, 0, 1e-3) for db in (-1e-3, 0, 1e-3)]
    assert nll((a, b)) <= min(nll(p) for p in grid) + 1e-12


def test_recommended_threshold_balances_the_detected_candidates_by_a_loop():
    """calibrate's recommended threshold reaches the exact minimum of max(FNR, FPR) over every
    threshold on the validation candidates of either class detected at snr_det >= 5 (5 itself
    included), found by a loop over all their scores, and is the lowest such threshold; the
    S/N >= 5 threshold likewise on reals of injected S/N >= 5 against all bogus. Every rate
    and count calibration.json records is recounted."""
    from astromorph._evaluate import expected_calibration_error as ece

    rng = np.random.default_rng(11)
    z, info = _simulated_info(rng, 900)
    c = rb._calibration(z, info)
    y = info["label"]
    a, b = rb.fit_platt(z, y)
    assert (c["platt_a"], c["platt_b"]) == (a, b)
    p = 1 / (1 + np.exp(-(a * z + b)))
    det = info["snr_det"] >= 5
    ok = (y == 0) | (info["snr"] >= 5)
    for key, sel in (("recommended_threshold", det), ("threshold_candidates", det),
                     ("threshold_snr_ge_5", ok), ("threshold_all_snr", np.ones(len(y), bool))):
        s, lab = list(p[sel]), list(y[sel] == 1)
        best, arg, below = _loop_balance(s, lab)
        assert max(_loop_rates(s, lab, c[key])) == best, key
        assert below < c[key] <= arg, key
    thr = c["recommended_threshold"]
    # the three populations give three thresholds here, so a mix-up shows
    assert len({thr, c["threshold_snr_ge_5"], c["threshold_all_snr"]}) == 3
    assert c["threshold_rule"] == "candidates"
    for key, sel in (("all", np.ones(len(y), bool)), ("snr_ge_5", ok), ("candidates", det)):
        assert tuple(c[f"val_rates_at_recommended_{key}"]) == pytest.approx(
            _loop_rates(list(p[sel]), list(y[sel] == 1), thr), abs=1e-15)
    assert (c["n_val"], c["n_val_candidates"]) == (900, int(det.sum()))
    sz = 1 / (1 + np.exp(-z))
    assert c["val_ece_uncalibrated"] == pytest.approx(ece(np.stack([1 - sz, sz], 1), y))
    assert c["val_ece_calibrated"] == pytest.approx(ece(np.stack([1 - p, p], 1), y))
    assert c["val_ece_calibrated"] != pytest.approx(c["val_ece_uncalibrated"])


# ---------------------------------------------------------------- held-out population blocks
@pytest.mark.parametrize("k, n", [(0, 1), (0, 40), (1, 49), (7, 300), (299, 300), (12, 12)])
def test_binomial_interval_is_clopper_pearson(k, n):
    """The 95 % intervals of FNR / FPR are exact (Clopper-Pearson) binomial intervals."""
    assert rb._binomial_interval(k, n) == pytest.approx(list(_clopper_pearson(k, n)), abs=1e-9)


def test_binomial_interval_of_no_rows_is_nan():
    """A population without rows of a class has no rate: [nan, nan]."""
    assert np.isnan(rb._binomial_interval(0, 0)).all()


def test_population_blocks_against_loops():
    """Every number of the three population blocks of metrics.json, recounted: sizes,
    AUC (pair counting), FNR / FPR at the card threshold and at 0.5, their Clopper-Pearson
    intervals from the counted errors (1 missed real of 49 included, where a truncated
    k = FNR * n gives 0), the oracle balance point (exact loop), ECE before and after Platt."""
    from astromorph._evaluate import expected_calibration_error as ece

    rng = np.random.default_rng(2)
    z, info = _simulated_info(rng, 700)
    p = 1 / (1 + np.exp(-(1.3 * z - 0.2)))
    # a fourth population: 49 reals, one missed at the threshold, and 30 bogus
    z2 = np.r_[np.full(48, 3.0), -3.0, np.linspace(-4, 2, 30)]
    info2 = {"label": np.r_[np.ones(49, int), np.zeros(30, int)], "snr": np.full(79, 20.0),
             "snr_det": np.full(79, 20.0)}
    y = info["label"]
    thr = 0.61
    blocks = rb._population_blocks(p, z, info, thr)
    blocks2 = rb._population_blocks(1 / (1 + np.exp(-(1.3 * z2 - 0.2))), z2, info2, thr)
    cases = [(blocks["all_snr_3_to_1000"], np.ones(len(y), bool), p, z, y),
             (blocks["real_snr_ge_5"], (y == 0) | (info["snr"] >= 5), p, z, y),
             (blocks["candidates_detected_snr_det_ge_5"], info["snr_det"] >= 5, p, z, y),
             (blocks2["all_snr_3_to_1000"], np.ones(79, bool),
              1 / (1 + np.exp(-(1.3 * z2 - 0.2))), z2, info2["label"])]
    for m, sel, pp, zz, yy in cases:
        s, lab = list(pp[sel]), list(yy[sel] == 1)
        n_real = sum(lab)
        assert (m["n"], m["n_real"], m["n_bogus"]) == (len(s), n_real, len(s) - n_real)
        assert m["roc_auc"] == pytest.approx(_loop_auc(s, lab), abs=1e-12)
        fnr, fpr = _loop_rates(s, lab, thr)
        assert (m["fnr_at_recommended"], m["fpr_at_recommended"]) == pytest.approx((fnr, fpr))
        assert (m["fnr_at_0.5"], m["fpr_at_0.5"]) == pytest.approx(_loop_rates(s, lab, 0.5))
        missed = sum(1 for v, r in zip(s, lab) if r and v < thr)
        kept = sum(1 for v, r in zip(s, lab) if not r and v >= thr)
        assert m["fnr_at_recommended_95"] == pytest.approx(
            list(_clopper_pearson(missed, n_real)), abs=1e-9)
        assert m["fpr_at_recommended_95"] == pytest.approx(
            list(_clopper_pearson(kept, len(s) - n_real)), abs=1e-9)
        best, arg, below = _loop_balance(s, lab)
        assert m["max_fnr_fpr_at_oracle"] == best
        assert below < m["equal_error_threshold_oracle"] <= arg
        ys, sz = yy[sel], 1 / (1 + np.exp(-zz[sel]))
        assert m["ece_calibrated"] == pytest.approx(ece(np.stack([1 - pp[sel], pp[sel]], 1), ys))
        assert m["ece_uncalibrated"] == pytest.approx(ece(np.stack([1 - sz, sz], 1), ys))
    assert blocks2["all_snr_3_to_1000"]["fnr_at_recommended_95"][0] > 0  # 1 of 49 missed
    sizes = [blocks[k]["n"] for k in ("all_snr_3_to_1000", "real_snr_ge_5",
                                      "candidates_detected_snr_det_ge_5")]
    assert len(set(sizes)) == 3


# ---------------------------------------------------------------- breakdowns by kind and S/N
def test_simulation_breakdowns_against_loops():
    """Per-kind error rates, missed reals per injected-S/N bin (lo <= snr < hi) and per
    measured-S/N bin of the detected reals (snr_det >= 5), and the host / no-host FNR of reals
    of S/N >= 5, recounted; scores equal to the threshold count as real (kept)."""
    rng = np.random.default_rng(8)
    z, info = _simulated_info(rng, 1500)
    thr = 0.58
    p = 1 / (1 + np.exp(-z))
    p[::9] = thr  # on the threshold: real, neither a missed real nor a rejected bogus
    out = rb._simulation_breakdowns(p, info, thr)
    y, snr, snr_det = info["label"], info["snr"], info["snr_det"]
    for k, name in enumerate(rb.KIND_NAMES):
        rows = [i for i in range(len(y)) if info["kind"][i] == k]
        real = bool(y[rows[0]])
        wrong = sum(1 for i in rows if (p[i] < thr if real else p[i] >= thr))
        assert out["per_kind_at_recommended"][name] == {
            "label": "real" if real else "bogus", "n": len(rows),
            ("fnr" if real else "fpr"): pytest.approx(wrong / len(rows))}
    edges = [3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100, 200, 1000]
    md = out["missed_detection_vs_snr"]
    assert [(d["snr_lo"], d["snr_hi"]) for d in md] == list(zip(edges[:-1], edges[1:]))
    det_bins = []
    for d, lo, hi in zip(md, edges[:-1], edges[1:]):
        rows = [i for i in range(len(y)) if y[i] == 1 and lo <= snr[i] < hi]
        assert d["n"] == len(rows)
        if rows:
            assert d["missed_at_recommended"] == pytest.approx(
                sum(p[i] < thr for i in rows) / len(rows))
            assert d["missed_at_0.5"] == pytest.approx(sum(p[i] < 0.5 for i in rows) / len(rows))
        else:
            assert d["missed_at_recommended"] is None and d["missed_at_0.5"] is None
        rows = [i for i in range(len(y)) if y[i] == 1 and snr_det[i] >= 5 and lo <= snr_det[i] < hi]
        if rows:
            det_bins.append({"snr_det_lo": lo, "snr_det_hi": hi, "n": len(rows),
                             "missed_at_recommended": pytest.approx(
                                 sum(p[i] < thr for i in rows) / len(rows))})
    assert out["candidates_missed_vs_detection_snr"] == det_bins
    assert any(d["missed_at_recommended"] != d["missed_at_0.5"] for d in md if d["n"])
    for host, key in ((True, "with"), (False, "without")):
        rows = [i for i in range(len(y)) if y[i] == 1 and info["host"][i] == host and snr[i] >= 5]
        assert out[f"fnr_snr_ge_5_{key}_host_galaxy"] == pytest.approx(
            sum(p[i] < thr for i in rows) / len(rows))


def test_simulation_bins_are_the_committed_reports():
    """The S/N bins are those of the committed metrics.json, so versions compare bin by bin."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "training/reports/real-bogus/metrics.json"
    if not path.is_file():
        pytest.skip("no committed real-bogus metrics.json")
    md = json.loads(path.read_text())["held_out_simulations"]["missed_detection_vs_snr"]
    edges = [md[0]["snr_lo"]] + [d["snr_hi"] for d in md]
    assert tuple(edges) == rb.SNR_EDGES


# ---------------------------------------------------------------- real alerts against braai
def test_real_alert_block_against_loops():
    """The real-alert measures against braai's drb >= 0.5 (drb of exactly 0.5 is real):
    counts, AUCs of rb_score and of ZTF's rf rb (pair counting), Spearman (Pearson of
    average ranks), agreement at 0.5 and at the card threshold (scores equal to either
    count as real) and the bootstrap intervals, each of its own score."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(21)
    n = 60
    drb = rng.uniform(size=n)
    drb[:6] = 0.5
    score = np.clip(drb + rng.normal(0, 0.3, n), 0, 1)
    rfrb = np.clip(drb + rng.normal(0, 0.25, n), 0, 1)
    thr = 0.66
    score[6:10], score[10:14], rfrb[14:20] = thr, 0.5, 0.5
    drb[10:14] = 0.8  # drb-real scored 0.5: agree at 0.5 only if 0.5 counts as real
    rfrb[20:24], drb[20:24] = 0.6, 0.9  # rf rb between 0.5 and thr, drb-real
    m = rb._real_alert_block(score, drb, rfrb, thr)
    dl = [d >= 0.5 for d in drb]
    assert (m["n"], m["n_drb_real"], m["n_drb_bogus"]) == (n, sum(dl), n - sum(dl))
    assert m["roc_auc_vs_drb_ge_0.5"] == pytest.approx(_loop_auc(score, dl), abs=1e-12)
    assert m["ztf_rf_rb_auc_vs_drb_ge_0.5"] == pytest.approx(_loop_auc(rfrb, dl), abs=1e-12)
    rf_real = [v >= 0.5 for v in rfrb]
    assert m["roc_auc_vs_ztf_rf_rb_ge_0.5"] == pytest.approx(_loop_auc(score, rf_real), abs=1e-12)
    assert m["braai_drb_auc_vs_rf_rb_ge_0.5"] == pytest.approx(_loop_auc(drb, rf_real), abs=1e-12)
    assert m["spearman_vs_drb"] == pytest.approx(
        np.corrcoef(rankdata(score), rankdata(drb))[0, 1], abs=1e-12)
    agree = [(v >= t) == d for t in (0.5, thr) for v, d in zip(score, dl)]
    assert m["agreement_at_0.5"] == pytest.approx(sum(agree[:n]) / n)
    assert m["agreement_at_recommended"] == pytest.approx(sum(agree[n:]) / n)
    assert m["ztf_rf_rb_agreement_at_0.5"] == pytest.approx(
        sum((v >= 0.5) == d for v, d in zip(rfrb, dl)) / n)
    assert m["roc_auc_vs_drb_bootstrap_95"] == rb._auc_interval(score, np.array(dl))
    assert m["ztf_rf_rb_auc_vs_drb_bootstrap_95"] == rb._auc_interval(rfrb, np.array(dl))
    assert m["roc_auc_vs_drb_bootstrap_95"] != m["ztf_rf_rb_auc_vs_drb_bootstrap_95"]
