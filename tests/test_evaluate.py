"""`astromorph.evaluate_labels` and ``astromorph evaluate``: a model's columns scored against
the user's labels."""
import json

import numpy as np
import pytest
from astropy.table import MaskedColumn, Table

import astromorph
from astromorph.cli import main
from conftest import DATA_DIR, requires_data
from astromorph.exceptions import (InputError, InvalidArgumentError, InvalidArgumentTypeError,
                                   OutputExistsError)

CLASSES = ["elliptical", "spiral", "edge_on", "merger", "artifact"]


def _morph_table(true, pred, conf=0.9, flags=None):
    """A table as `annotate` writes for ``morphology``: the class ``pred`` of each row has
    probability ``conf``, the others share the rest; ``true`` the user's labels."""
    pred = np.asarray([CLASSES.index(p) for p in pred])
    probs = np.full((len(pred), 5), (1 - conf) / 4)
    probs[np.arange(len(pred)), pred] = conf
    t = Table({f"morph_p_{c}": MaskedColumn(probs[:, i].astype(np.float32))
               for i, c in enumerate(CLASSES)})
    t["morph_label"] = np.asarray(CLASSES)[pred]
    t["morph_flags"] = np.zeros(len(pred), np.int32) if flags is None else flags
    t["mine"] = true
    return t


def test_classifier_metrics_are_exact():
    true = ["elliptical"] * 4 + ["spiral"] * 3 + ["merger"] * 2
    pred = ["elliptical", "elliptical", "elliptical", "spiral",
            "spiral", "spiral", "elliptical", "merger", "artifact"]
    ev = astromorph.evaluate_labels(_morph_table(true, pred), "mine", model="morphology")
    m = ev.metrics
    cm = np.zeros((5, 5), int)
    cm[0, 0], cm[0, 1], cm[1, 1], cm[1, 0], cm[3, 3], cm[3, 4] = 3, 1, 2, 1, 1, 1
    assert m["confusion_matrix"] == cm.tolist()
    assert m["class_names"] == CLASSES
    assert (m["n_rows"], m["n_used"], m["n_unlabelled"], m["n_flagged"]) == (9, 9, 0, 0)
    assert m["accuracy"] == pytest.approx(6 / 9)
    assert m["macro_recall"] == pytest.approx((3 / 4 + 2 / 3 + 1 / 2) / 3)
    assert m["per_class"]["elliptical"] == {"recall": 0.75, "precision": 0.75, "support": 4}
    assert m["per_class"]["spiral"] == {"recall": 0.6667, "precision": 0.6667, "support": 3}
    assert m["per_class"]["artifact"] == {"recall": None, "precision": 0.0, "support": 0}
    assert m["per_class"]["edge_on"] == {"recall": None, "precision": None, "support": 0}
    # every confidence is 0.9 (float32), one bin: ECE = |accuracy - confidence|
    assert m["ece"] == pytest.approx(abs(6 / 9 - 0.9), abs=1e-6)
    json.dumps(m, allow_nan=False)  # JSON as it is
    assert "accuracy 0.667" in repr(ev) and "macro recall 0.639" in repr(ev)
    assert "spiral" in ev.summary() and "0.667" in ev.summary()


def test_labels_mapping_and_unknown_labels():
    true = ["E", "E", "S", "Sp", "merger"]
    pred = ["elliptical", "spiral", "spiral", "spiral", "merger"]
    t = _morph_table(true, pred)
    with pytest.raises(InputError, match=r"'E', 'S', 'Sp'.*elliptical, spiral, edge_on, "
                                         r"merger, artifact"):
        astromorph.evaluate_labels(t, "mine", model="morphology")
    with pytest.raises(InputError, match=r"'Sp' are not") as info:
        astromorph.evaluate_labels(t, "mine", model="morphology",
                                   labels={"E": "elliptical", "S": "spiral"})
    assert "'E'" not in str(info.value)
    ev = astromorph.evaluate_labels(t, "mine", model="morphology",
                                    labels={"E": "elliptical", "S": "spiral", "Sp": "spiral"})
    assert ev.metrics["per_class"]["elliptical"]["support"] == 2
    assert ev.metrics["per_class"]["spiral"]["support"] == 2
    assert ev.metrics["accuracy"] == pytest.approx(4 / 5)
    with pytest.raises(InvalidArgumentError, match="'Ellipse'"):  # a class of no model
        astromorph.evaluate_labels(t, "mine", model="morphology", labels={"E": "Ellipse"})
    with pytest.raises(InvalidArgumentTypeError, match="labels"):
        astromorph.evaluate_labels(t, "mine", model="morphology", labels=["E"])


def test_unlabelled_flagged_and_unscored_rows_are_left_out_and_counted():
    true = MaskedColumn(["elliptical", "spiral", "", "elliptical", "spiral", "spiral"],
                        mask=[False, True, False, False, False, False])
    pred = ["elliptical", "spiral", "spiral", "spiral", "elliptical", "spiral"]
    t = _morph_table(true, pred, flags=np.array([0, 0, 0, 2, 32, 0], np.int32))
    for c in CLASSES:  # row 4 has no output (BAD_INPUT)
        t[f"morph_p_{c}"].mask[4] = True
    ev = astromorph.evaluate_labels(t, "mine", model="morphology")
    m = ev.metrics
    assert (m["n_rows"], m["n_used"], m["n_unlabelled"], m["n_unscored"], m["n_flagged"]) \
        == (6, 2, 2, 1, 1)
    assert m["accuracy"] == 1.0  # rows 0 and 5
    kept = astromorph.evaluate_labels(t, "mine", model="morphology", keep_flagged=True).metrics
    assert (kept["n_used"], kept["n_flagged"], kept["n_unscored"]) == (3, 1, 1)
    assert kept["accuracy"] == pytest.approx(2 / 3)  # row 3: elliptical called spiral
    with pytest.raises(InputError, match=r"no row to score.*keep_flagged=True, --keep-flagged"):
        astromorph.evaluate_labels(t[3:5], "mine", model="morphology")


@pytest.mark.parametrize("column, values, match", [
    ("rb_flags", ["0", "x"], r"column 'rb_flags' holds <U1 values, not numbers \(e.g. '0'\)"),
    ("rb_score", ["0.1", "a"], r"column 'rb_score' holds <U3 values, not numbers"),
    ("rb_score", np.zeros((2, 3)), r"column 'rb_score' holds arrays of shape \(3,\)"),
])
def test_output_columns_that_hold_no_numbers_are_an_input_error(column, values, match):
    """A flags or output column of text or arrays (another program's column of that name):
    an InputError naming it, not numpy's DTypePromotionError or a broadcasting ValueError."""
    t = Table({"rb_score": [0.1, 0.9], "rb_flags": [0, 0], "real": [0, 1]})
    t[column] = values
    with pytest.raises(InputError, match=match):
        astromorph.evaluate_labels(t, "real", model="real-bogus")


def _rb_table():
    rng = np.random.default_rng(5)
    score = (np.round(rng.random(40) * 8) / 8).astype(np.float32)  # many ties, exact
    real = rng.random(40) < 0.5
    t = Table({"rb_score": MaskedColumn(score), "rb_flags": np.zeros(40, np.int32),
               "is_real": real})
    t["rb_score"].mask[0] = True
    t["rb_flags"][1] = 2
    return t


def test_real_bogus_auc_and_rates():
    t = _rb_table()
    ev = astromorph.evaluate_labels(t, "is_real", model="real-bogus", threshold=0.5)  # a tie with scores
    m = ev.metrics
    s = np.asarray(t["rb_score"], float)[2:]
    y = np.asarray(t["is_real"])[2:]
    pos, neg = s[y][:, None], s[~y][None, :]  # every real-bogus pair, ties count half
    auc = ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (len(pos) * neg.size)
    assert m["roc_auc"] == pytest.approx(auc, rel=1e-12)
    assert (m["n_used"], m["n_unscored"], m["n_flagged"]) == (38, 1, 1)
    assert (m["n_real"], m["n_bogus"]) == (y.sum(), (~y).sum())
    rec = astromorph.model_card("real-bogus")["recommended_threshold"]
    for key, thr in (("recommended", rec), ("given", 0.5)):
        at = m["at_thresholds"][key]
        assert at["threshold"] == pytest.approx(thr)
        assert at["fnr"] == pytest.approx(np.mean(s[y] < thr))
        assert at["fpr"] == pytest.approx(np.mean(s[~y] >= thr))
    fpr, tpr = np.array(m["roc_curve"]["fpr"]), np.array(m["roc_curve"]["tpr"])
    assert len(fpr) == len(np.unique(s)) + 1  # one point per distinct score
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc)
    json.dumps(m, allow_nan=False)
    # the same labels as 0/1 and as text, one unlabelled
    t["as_int"] = MaskedColumn(t["is_real"].astype(int), mask=np.arange(40) == 5)
    t["as_text"] = np.where(t["is_real"], "Real", "bogus")
    assert astromorph.evaluate_labels(t, "as_int", model="real-bogus").metrics["n_unlabelled"] == 1
    assert astromorph.evaluate_labels(t, "as_text", model="real-bogus").metrics["roc_auc"] \
        == m["roc_auc"]
    t["as_text"][3] = "maybe"
    with pytest.raises(InputError, match="'maybe'"):
        astromorph.evaluate_labels(t, "as_text", model="real-bogus")
    with pytest.raises(InvalidArgumentError, match="1.5"):
        astromorph.evaluate_labels(t, "is_real", model="real-bogus", threshold=1.5)


@pytest.mark.parametrize("model, advice", [("embedding", "LabelHead"),
                                           ("morphology-gz2", "fractions")])
def test_models_without_classes_are_refused(model, advice):
    with pytest.raises(InvalidArgumentError, match=advice):
        astromorph.evaluate_labels(_rb_table(), "is_real", model=model)


def test_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    ev = astromorph.evaluate_labels(_morph_table(["spiral", "merger"], ["spiral", "spiral"]),
                                    "mine", model="morphology")
    fig = ev.plot(tmp_path / "cm.png")
    assert isinstance(fig, Figure)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "1\n100%" in texts and "1\n50%" not in texts  # counts and row recall
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert isinstance(ev.plot(kind="reliability"), Figure)
    with pytest.raises(OutputExistsError):
        ev.plot(tmp_path / "cm.png")
    with pytest.raises(InvalidArgumentError, match="'roc'"):
        ev.plot(kind="roc")
    rb = astromorph.evaluate_labels(_rb_table(), "is_real", model="real-bogus", threshold=0.5)
    fig = rb.plot(tmp_path / "roc.png")
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert any(lab.startswith("recommended 0.6632") for lab in labels)
    assert any(lab.startswith("given 0.5") for lab in labels)
    assert (tmp_path / "roc.png").stat().st_size > 0


def test_roc_markers_that_coincide_are_all_visible():
    """The ROC's 'given 0.5' marker (a 6-pt filled circle) lay hidden under the 6-pt filled
    square of 'target_fnr' where both thresholds were 0.5, while the legend listed both.
    Every threshold's marker is hollow now, each one drawn smaller than those drawn before
    it, so markers on one point show as rings, one inside another."""
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgba

    given = astromorph.evaluate_labels(_rb_table(), "is_real", model="real-bogus",
                                       threshold=0.5).metrics["at_thresholds"]["given"]
    rb = astromorph.evaluate_labels(_rb_table(), "is_real", model="real-bogus",
                                    threshold=0.5, target_fnr=given["fnr"])
    at = rb.metrics["at_thresholds"]
    assert at["target_fnr"]["threshold"] == 0.5  # the same point as 'given'
    ax = rb.plot(kind="roc").axes[0]
    marks = [line for line in ax.lines if line.get_label().split()[0] in at]
    assert [m.get_label().split()[0] for m in marks] == ["recommended", "given", "target_fnr"]
    sizes = [m.get_markersize() for m in marks]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    for m in marks:
        assert m.get_markerfacecolor() == "none"
        assert to_rgba(m.get_markeredgecolor())[3] == 1 and m.get_markeredgewidth() >= 1.5
        assert m.get_zorder() >= 2  # over the curve
    handles = ax.get_legend().legend_handles
    assert [h.get_markerfacecolor() for h in handles if h.get_marker() not in
            (None, "None", "")] == ["none"] * 3


def test_command_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    t = _morph_table(["E", "S", "S", "M"], ["elliptical", "spiral", "merger", "merger"])
    t.write(tmp_path / "t.ecsv")
    out, fig = tmp_path / "m.json", tmp_path / "cm.png"
    args = ["evaluate", str(tmp_path / "t.ecsv"), "--truth", "mine", "-m", "morphology",
            "--map", "E=elliptical", "--map", "S=spiral", "--map", "M=merger",
            "-o", str(out), "--plot", str(fig)]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "accuracy 0.750" in printed.out and f"wrote metrics to {out}" in printed.err
    assert json.loads(out.read_text())["accuracy"] == 0.75
    assert fig.read_bytes()[:4] == b"\x89PNG"
    out.write_text("keep")
    assert main(args) == 2  # refused before any work
    assert "exists" in capsys.readouterr().err and out.read_text() == "keep"
    assert main(args + ["--overwrite", "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert json.loads(out.read_text())["n_used"] == 4
    assert main(["evaluate", str(tmp_path / "t.ecsv"), "--truth", "nope", "-m",
                 "morphology"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope'" in err
    assert main(["evaluate", str(tmp_path / "t.ecsv"), "--truth", "mine", "-m",
                 "real-bogus", "--threshold", "1.5"]) == 2
    assert "--threshold must be in [0, 1], got 1.5" in capsys.readouterr().err
    # a figure kind the model has not: refused before the table is read (it is no table)
    (tmp_path / "not_a_table.ecsv").write_text("garbage")
    assert main(["evaluate", str(tmp_path / "not_a_table.ecsv"), "--truth", "mine", "-m",
                 "real-bogus", "--plot", str(tmp_path / "x.png"), "--plot-kind",
                 "confusion"]) == 2
    assert "--plot-kind confusion does not apply to model 'real-bogus'" in \
        capsys.readouterr().err


@requires_data
def test_real_alerts_reproduce_the_card():
    """The 209 real ZTF alerts scored through annotate_stamps and evaluate_labels against braai
    (drb >= 0.5) give the card's AUC: the user-facing path and `evaluate` agree. The 17 alerts
    with masked pixels (flag BLANK, still scored, as the card's number includes them) count
    as flagged and are used only with keep_flagged."""
    card = astromorph.model_card("real-bogus")["metrics"]["real_alerts_209"]
    with np.load(DATA_DIR / "ztf_alerts" / "ztf_triplets.npz", allow_pickle=True) as f:
        stamps, meta = f["X"], [json.loads(str(m)) for m in f["meta"]]
    table = Table({"stamps": stamps, "braai": [m["drb"] >= 0.5 for m in meta]})
    out = astromorph.annotate_stamps(table, model="real-bogus", progress=False)
    kept = astromorph.evaluate_labels(out, "braai", model="real-bogus", keep_flagged=True)
    assert kept.metrics["n_used"] == card["n"] == 209
    assert kept.metrics["roc_auc"] == pytest.approx(card["roc_auc_vs_drb_ge_0.5"], abs=1e-6)
    clean = astromorph.evaluate_labels(out, "braai", model="real-bogus")
    assert clean.metrics["n_flagged"] == np.count_nonzero(out["rb_flags"]) > 0
    assert clean.metrics["n_used"] == 209 - clean.metrics["n_flagged"]


def test_a_big_table_keeps_the_metrics_small():
    """A million scored rows: the ROC curve in the metrics (and in the JSON of ``-o``) is
    thinned to a bounded number of points; the AUC is still the exact one."""
    rng = np.random.default_rng(2)
    n = 1_000_000
    real = rng.random(n) < 0.3
    score = 1 / (1 + np.exp(-rng.normal(1.5 * real - 1, 1)))  # continuous: no ties
    t = Table({"rb_score": score, "rb_flags": np.zeros(n, np.int32), "is_real": real})
    m = astromorph.evaluate_labels(t, "is_real", model="real-bogus").metrics
    curve = m["roc_curve"]
    assert 2 < len(curve["fpr"]) == len(curve["tpr"]) == len(curve["thresholds"]) <= 1001
    assert (curve["fpr"][0], curve["tpr"][0], curve["thresholds"][0]) == (0, 0, None)
    assert (curve["fpr"][-1], curve["tpr"][-1]) == (1, 1)
    assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["thresholds"][1:]) < 0)
    ranks = np.argsort(np.argsort(score))
    auc = (ranks[real].sum() - real.sum() * (real.sum() - 1) / 2) / (real.sum() * (~real).sum())
    assert m["roc_auc"] == pytest.approx(auc, rel=1e-9)
    assert np.trapezoid(curve["tpr"], curve["fpr"]) == pytest.approx(auc, abs=1e-3)
    assert len(json.dumps(m)) < 100_000


def test_class_ids_as_floats_objects_and_numpy_keys():
    """Integer class ids with gaps come back as floats with NaN (CSV, pandas): they match a
    ``labels`` mapping with int, numpy or float keys; NaN in an object column is unlabelled."""
    pred = ["elliptical", "spiral", "spiral", "merger", "elliptical"]
    ids = np.array([0, 1, np.nan, 3, 1])
    t = _morph_table(ids, pred)
    for keys in ([0, 1, 3], [np.int64(0), np.int64(1), np.int64(3)], [0.0, 1.0, 3.0],
                 [b"0", b"1", b"3"]):
        ev = astromorph.evaluate_labels(t, "mine", model="morphology",
                                        labels=dict(zip(keys, ["elliptical", "spiral",
                                                               "merger"])))
        assert (ev.metrics["n_used"], ev.metrics["n_unlabelled"]) == (4, 1)
        assert ev.metrics["accuracy"] == 0.75  # the last row: spiral called elliptical
    with pytest.raises(InputError, match=r"truth values '0', '1', '3' are not"):
        astromorph.evaluate_labels(t, "mine", model="morphology")
    t["masked"] = MaskedColumn([0, 1, 0.5, 3, 1], mask=[0, 0, 1, 0, 0])  # 0.5: masked
    assert astromorph.evaluate_labels(t, "masked", model="morphology", labels={
        0: "elliptical", 1: "spiral", 3: "merger"}).metrics["accuracy"] == 0.75
    t["obj"] = np.array(["spiral", np.nan, None, "merger", "spiral"], dtype=object)
    m = astromorph.evaluate_labels(t, "obj", model="morphology").metrics
    assert (m["n_used"], m["n_unlabelled"], m["accuracy"]) == (3, 2, 1 / 3)
    t["rb_score"], t["is_real"] = np.linspace(0, 1, 5), np.array([0, 1, np.nan, 1, 0.0])
    rb = astromorph.evaluate_labels(t, "is_real", model="real-bogus").metrics
    assert (rb["n_real"], rb["n_bogus"], rb["roc_auc"]) == (2, 2, 0.5)


def test_class_names_in_another_case_or_padded():
    """' Spiral', 'ELLIPTICAL' are the classes spiral and elliptical, as 'Real' is real; a
    mapping's keys and classes are matched the same way."""
    t = _morph_table([" Spiral", "ELLIPTICAL ", "Merger", "e"],
                     ["spiral", "elliptical", "spiral", "elliptical"])
    m = astromorph.evaluate_labels(t, "mine", model="morphology", labels={"E": "Elliptical"})
    assert m.metrics["accuracy"] == 0.75
    assert m.metrics["per_class"]["elliptical"]["support"] == 2
    with pytest.raises(InputError, match=r"truth values 'e' are not"):
        astromorph.evaluate_labels(t, "mine", model="morphology")
    radio = Table({f"radio_p_{c}": [p] for c, p in zip(["FRI", "FRII", "compact", "bent"],
                                                         [0.7, 0.1, 0.1, 0.1])})
    radio["mine"] = ["fri"]
    assert astromorph.evaluate_labels(radio, "mine", model="radio-morphology").metrics[
        "per_class"]["FRI"]["support"] == 1


def test_a_second_run_added_with_a_suffix(tmp_path, capsys):
    """`annotate_stamps(..., on_conflict="suffix")` adds a second run's columns as
    ``rb_score_2``, ``rb_flags_2``: ``suffix="_2"`` (``--suffix``) scores those."""
    rng = np.random.default_rng(3)
    t = Table({"stamps": rng.normal(size=(12, 3, 63, 63)).astype(np.float32),
               "y": np.arange(12) % 2 == 0})
    first = astromorph.annotate_stamps(t, model="real-bogus", progress=False)
    first["rb_score"] = 1 - first["rb_score"]  # not the second run's scores
    both = astromorph.annotate_stamps(first, model="real-bogus", on_conflict="suffix",
                                      progress=False)
    second = astromorph.evaluate_labels(both, "y", model="real-bogus", suffix="_2").metrics
    alone = astromorph.evaluate_labels(astromorph.annotate_stamps(t, model="real-bogus",
                                                                  progress=False),
                                       "y", model="real-bogus").metrics
    assert second["roc_auc"] == alone["roc_auc"] != astromorph.evaluate_labels(
        both, "y", model="real-bogus").metrics["roc_auc"]
    with pytest.raises(InputError, match="'rb_score_3'.*suffix"):
        astromorph.evaluate_labels(both, "y", model="real-bogus", suffix="_3")
    with pytest.raises(InvalidArgumentTypeError, match="suffix"):
        astromorph.evaluate_labels(both, "y", model="real-bogus", suffix=2)
    both.remove_column("stamps")
    both.write(tmp_path / "both.ecsv")
    assert main(["evaluate", str(tmp_path / "both.ecsv"), "--truth", "y", "-m", "real-bogus",
                 "--suffix", "_2", "-o", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["roc_auc"] == alone["roc_auc"]


def test_labels_keys_equal_but_for_case_are_refused():
    t = _morph_table(["S", "s"], ["spiral", "spiral"])
    with pytest.raises(InvalidArgumentError, match=r"'S' to 'spiral' and 's' to 'edge_on'"):
        astromorph.evaluate_labels(t, "mine", model="morphology",
                                   labels={"S": "spiral", "s": "edge_on"})
    ev = astromorph.evaluate_labels(t, "mine", model="morphology",
                                    labels={"S": "spiral", "s": "Spiral"})  # the same class
    assert ev.metrics["accuracy"] == 1.0


def test_unknown_flags_count_as_flagged():
    """A masked or NaN flag says nothing about the row: it is left out as flagged (used with
    keep_flagged), never taken as clean, and reading it gives no numpy cast warning."""
    import warnings

    t = _morph_table(["spiral"] * 4, ["spiral"] * 4)
    t["morph_flags"] = MaskedColumn([0.0, np.nan, 0.0, 2.0], mask=[False, False, True, False])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev = astromorph.evaluate_labels(t, "mine", model="morphology")
    assert ev.metrics["n_flagged"] == 3 and ev.metrics["n_used"] == 1
    kept = astromorph.evaluate_labels(t, "mine", model="morphology", keep_flagged=True)
    assert kept.metrics["n_used"] == 4


def test_threshold_for_a_target_false_negative_rate(tmp_path, capsys):
    """target_fnr (--target-fnr) gives the highest threshold that rejects at most that
    fraction of the reals, and the rates there: with reals scoring 0.1, 0.2, ..., 1.0 and a
    target of 0.2, two reals (0.1, 0.2) may go, so the threshold is 0.3."""
    scores = np.r_[np.arange(1, 11) / 10, np.arange(1, 11) / 20]  # reals, then bogus
    t = Table({"rb_score": scores, "rb_flags": np.zeros(20, np.int32),
               "is_real": np.r_[np.ones(10, bool), np.zeros(10, bool)]})
    src = tmp_path / "rb.ecsv"
    t.write(src)
    ev = astromorph.evaluate_labels(t, "is_real", model="real-bogus", target_fnr=0.2)
    at = ev.metrics["at_thresholds"]["target_fnr"]
    assert at["threshold"] == pytest.approx(0.3) and at["target"] == 0.2
    assert at["fnr"] == pytest.approx(0.2)
    assert at["fpr"] == pytest.approx(0.5)  # the bogus 0.30, 0.35, ..., 0.50
    zero = astromorph.evaluate_labels(t, "is_real", model="real-bogus", target_fnr=0)
    assert zero.metrics["at_thresholds"]["target_fnr"]["threshold"] == pytest.approx(0.1)
    assert zero.metrics["at_thresholds"]["target_fnr"]["fnr"] == 0
    # tied real scores: the threshold may reject fewer than allowed, never more
    t["rb_score"][:4] = 0.5
    tied = astromorph.evaluate_labels(t, "is_real", model="real-bogus", target_fnr=0.25)
    assert tied.metrics["at_thresholds"]["target_fnr"]["fnr"] <= 0.25
    for bad in (1, -0.1, 1.5):
        with pytest.raises(InvalidArgumentError, match="target_fnr"):
            astromorph.evaluate_labels(t, "is_real", model="real-bogus", target_fnr=bad)
    with pytest.raises(InvalidArgumentError, match="scores"):
        astromorph.evaluate_labels(_morph_table(["spiral"], ["spiral"]), "mine",
                                   model="morphology", target_fnr=0.1)
    assert main(["evaluate", str(src), "--truth", "is_real", "-m", "real-bogus",
                 "--target-fnr", "0.2"]) == 0
    assert "target_fnr threshold 0.3" in capsys.readouterr().out
    assert main(["evaluate", str(src), "--truth", "is_real", "-m", "real-bogus",
                 "--target-fnr", "1"]) == 2
    assert "--target-fnr must be in [0, 1), got 1" in capsys.readouterr().err


def test_class_ids_as_floats_in_an_object_column():
    """``t["mine"] = [0.0, 1.0, None, 3.0]`` makes an object column: its floats are class ids
    as they are in a float column, matched by ``labels={0: ...}``; real-bogus 1.0/0.0 too."""
    pred = ["elliptical", "spiral", "spiral", "merger"]
    t = _morph_table(np.array([0.0, np.float32(1), None, 3], dtype=object), pred)
    m = astromorph.evaluate_labels(t, "mine", model="morphology", labels={
        0: "elliptical", 1: "spiral", 3: "merger"}).metrics
    assert (m["n_used"], m["n_unlabelled"], m["accuracy"]) == (3, 1, 1.0)
    with pytest.raises(InputError, match=r"truth values '0', '1', '3' are not"):
        astromorph.evaluate_labels(t, "mine", model="morphology")


def test_a_score_or_vote_fraction_as_truth_is_refused_with_what_to_do():
    """A braai ``drb`` score or a Galaxy Zoo vote fraction is no label: the error says so and
    how to cut it into labels, instead of asking for a labels= mapping of each value."""
    t = Table({"rb_score": [0.1, 0.9, 0.6], "drb": [0.02, 0.97, 1.0]})
    with pytest.raises(InputError, match=r"truth values '0.02', '0.97' are not real .* "
                                         r"scores or fractions.*t\['drb'\] >= 0.5"):
        astromorph.evaluate_labels(t, "drb", model="real-bogus")
    g = _morph_table(np.array([0.8, 0.1, 1.0]), ["spiral", "elliptical", "spiral"])
    with pytest.raises(InputError, match=r"scores or fractions.*t\['mine'\] >= 0.5"):
        astromorph.evaluate_labels(g, "mine", model="morphology")
    g["ids"] = np.array([0, 1, 7])  # integers: the mapping is the advice
    with pytest.raises(InputError, match=r"labels=\{your label: class\}") as err:
        astromorph.evaluate_labels(g, "ids", model="morphology", labels={0: "elliptical"})
    assert "fractions" not in str(err.value)


def test_a_target_fnr_without_real_rows_is_reported_as_unknown():
    """Only bogus rows: no threshold keeps a fraction of the reals; the metrics say so
    (``None``, null in JSON) rather than leave out the threshold asked for."""
    t = Table({"rb_score": [0.1, 0.9, 0.6], "is_real": [0, 0, 0]})
    ev = astromorph.evaluate_labels(t, "is_real", model="real-bogus", target_fnr=0.02)
    assert ev.metrics["at_thresholds"]["target_fnr"] == {
        "threshold": None, "fnr": None, "fpr": None, "target": 0.02}
    assert "target_fnr threshold - (no real row)" in ev.summary()
    ev.plot()


def test_plots_say_what_they_show():
    """The figures named the model but not its version; the confusion matrix's shade had no
    colour bar saying what it is, and with many classes the figure grew without bound (37
    classes: 46 inches) with 9-point counts in every cell; the reliability diagram's legend
    covered its bars and gave no number of rows per bin. Now all of that is said, the
    confusion matrix stays at most 17 inches a side and its tick labels do not overlap."""
    pytest.importorskip("matplotlib")
    from astromorph._evaluate import confusion_matrix_figure

    ev = astromorph.evaluate_labels(_morph_table(["spiral", "merger"], ["spiral", "spiral"]),
                                    "mine", model="morphology")
    version = astromorph.model_card("morphology")["version"]
    for kind in ("confusion", "reliability"):
        fig = ev.plot(kind=kind)
        assert fig.axes[0].get_title().startswith(f"morphology v{version}: 2 labelled rows")
        assert fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()
    fig.draw_without_rendering()  # the reliability diagram: its legend below the axes
    ax = fig.axes[0]
    assert ax.get_legend().get_window_extent().y1 <= ax.get_window_extent().y0
    assert [t.get_text() for t in ax.texts] == ["2"]  # the rows of its one bin
    cm = ev.plot()
    assert "fraction" in cm.axes[1].get_ylabel()  # the colour bar
    names = [f"Class{i}.{j}" for i in range(1, 14) for j in range(1, 4)][:37]
    fig = confusion_matrix_figure(np.eye(37, dtype=int) * 5 + 1, names, title="37")
    assert max(fig.get_size_inches()) <= 17
    assert not fig.axes[0].texts  # no counts in cells too small for them
    fig.draw_without_rendering()
    for ticks, lo, hi in ((fig.axes[0].get_xticklabels(), "x0", "x1"),
                          (fig.axes[0].get_yticklabels(), "y0", "y1")):
        boxes = sorted((getattr(b, lo), getattr(b, hi)) for b in
                       (t.get_window_extent() for t in ticks))
        assert len(boxes) == 37
        assert all(a[1] <= b[0] + 0.5 for a, b in zip(boxes, boxes[1:])), boxes


def test_confusion_matrix_cells_sit_under_their_class_names():
    """Row i of the matrix (true class i) is drawn against the i-th y tick label and column
    j (predicted class j) against the j-th x tick label, whatever the counts."""
    pytest.importorskip("matplotlib")
    from astromorph._evaluate import confusion_matrix_figure

    names = ["elliptical", "spiral", "edge_on", "merger"]
    cm = np.arange(16).reshape(4, 4) * 3 + 1  # no two cells alike
    ax = confusion_matrix_figure(cm, names).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert list(ax.get_xticks()) == list(ax.get_yticks()) == [0, 1, 2, 3]
    at = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text().split("\n")[0]
          for t in ax.texts}
    assert at == {(i, j): str(cm[i, j]) for i in range(4) for j in range(4)}
    assert ax.yaxis_inverted()  # the first class on top


def test_reliability_points_at_the_axis_limits_are_drawn_whole():
    """A bin of accuracy 1 (or 0) has its marker on the top (bottom) edge of the axes: it was
    clipped to half a circle. A figure made without a title began with an empty line."""
    pytest.importorskip("matplotlib")
    from astromorph._evaluate import reliability_figure

    probs = np.array([[0.9, 0.1], [0.95, 0.05], [0.3, 0.7], [0.6, 0.4]])
    fig = reliability_figure(probs, np.array([0, 0, 1, 1]))
    ax = fig.axes[0]
    model = next(line for line in ax.lines if line.get_label() == "model")
    assert 1.0 in model.get_ydata() and 0.0 in model.get_ydata()
    assert not model.get_clip_on()
    assert ax.get_title() == "ECE = 0.263"  # (0.1 + 0.05 + 0.3 + 0.6) / 4
    assert reliability_figure(probs, np.array([0, 0, 1, 1]), title="t").axes[0].get_title() \
        == "t\nECE = 0.263"


def test_quiet_command_line_without_output_still_prints_the_metrics(tmp_path, capsys):
    """``-q`` drops status lines, not a command's result: ``predict -q`` and ``annotate -q``
    without ``-o`` print their table, but ``evaluate -q`` without ``-o`` printed nothing at
    all (the run was lost). It now prints the metrics; with ``-o`` they go to the file."""
    t = _morph_table(["E", "S"], ["elliptical", "spiral"])
    t.write(tmp_path / "t.ecsv")
    args = ["evaluate", str(tmp_path / "t.ecsv"), "--truth", "mine", "-m", "morphology",
            "--map", "E=elliptical", "--map", "S=spiral", "-q"]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "accuracy 1.000" in printed.out and printed.err == ""
    assert main(args + ["-o", str(tmp_path / "m.json")]) == 0
    assert capsys.readouterr().out == ""


def test_a_float32_score_equal_to_the_threshold_is_real_as_in_the_table():
    """``table["rb_score"] >= threshold`` (docs/predict.md) compares a float32 column at
    float32 precision: the score float32(0.7) (0.69999999) passes 0.7. The rates were
    computed in float64, where it failed: the metrics disagreed with the rows selected."""
    s = np.array([0.7, 0.7, 0.3, 0.9], np.float32)
    t = Table({"rb_score": s, "rb_flags": np.zeros(4, np.int32),
               "is_real": [True, False, False, True]})
    kept = np.asarray(t["rb_score"] >= 0.7)
    assert kept.tolist() == [True, True, False, True]
    at = astromorph.evaluate_labels(t, "is_real", model="real-bogus",
                                    threshold=0.7).metrics["at_thresholds"]["given"]
    assert (at["threshold"], at["fnr"], at["fpr"]) == (0.7, 0.0, 0.5)


def test_a_votable_null_label_is_unlabelled(tmp_path):
    """A VOTable of labels whose null text is declared (``<VALUES null="N/A"/>``) gave
    its null cells to `evaluate_labels` as the label "N/A" (astropy masks null numbers, not
    null text): "truth values 'N/A' are not classes". They are now unlabelled rows, as a
    masked or empty label is."""
    from astropy.io.votable import from_table, writeto

    true = ["elliptical", "N/A", "spiral", "", "spiral"]
    pred = ["elliptical", "spiral", "spiral", "merger", "elliptical"]
    vot = from_table(_morph_table(true, pred))
    vot.get_first_table().get_field_by_id("mine").values.null = "N/A"
    writeto(vot, str(tmp_path / "labels.vot"))
    ev = astromorph.evaluate_labels(tmp_path / "labels.vot", "mine", model="morphology")
    assert (ev.metrics["n_rows"], ev.metrics["n_unlabelled"]) == (5, 2)
    assert ev.metrics["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("real, undefined", [(1, "fpr"), (0, "tpr")])
def test_one_class_only_has_no_roc_curve(real, undefined):
    """With only real (or only bogus) rows the false (true) positive rate has no rows to be a
    fraction of: the metrics held 0 at every point (a curve along an axis, drawn invisibly
    on it, under a legend entry "model" with nothing to show). The undefined rate is now
    None (null in JSON) and the ROC figure says why it has no curve."""
    pytest.importorskip("matplotlib")
    t = Table({"rb_score": np.float32([0.1, 0.9, 0.6, 0.3]), "is_real": [real] * 4})
    ev = astromorph.evaluate_labels(t, "is_real", model="real-bogus")
    curve = ev.metrics["roc_curve"]
    assert curve[undefined] == [None] * len(curve["thresholds"])
    other = curve["tpr" if undefined == "fpr" else "fpr"]
    assert other[0] == 0 and other[-1] == 1
    json.dumps(ev.metrics, allow_nan=False)
    ax = ev.plot(kind="roc").axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["chance"]
    what = "real" if real else "bogus"
    assert any(f"all 4 labelled rows are {what}" in text.get_text() for text in ax.texts)


def test_a_score_column_as_truth_is_refused_in_a_short_message():
    """``--truth drb`` on 209 real alerts listed 20 scores of 18 digits each (a 1,000
    character line) before the advice; scores are shown by three and a count."""
    rng = np.random.default_rng(0)
    t = Table({"rb_score": rng.random(200), "drb": rng.random(200)})
    with pytest.raises(InputError, match=r"200 distinct values such as .*t\['drb'\] >= 0.5") \
            as err:
        astromorph.evaluate_labels(t, "drb", model="real-bogus")
    assert len(str(err.value)) < 400, str(err.value)


def test_a_label_of_no_model_class_is_left_out(tmp_path, capsys):
    """A label of the user's that is no class of the model (an irregular) is left out when
    mapped to None (``--map Irr=``), and counted; unmapped it is still refused."""
    t = _morph_table(["E", "Irr", "S", "irr", "S"],
                     ["elliptical", "spiral", "spiral", "merger", "elliptical"])
    with pytest.raises(InputError, match="'Irr', 'irr'"):
        astromorph.evaluate_labels(t, "mine", model="morphology",
                                   labels={"E": "elliptical", "S": "spiral"})
    ev = astromorph.evaluate_labels(t, "mine", model="morphology",
                                    labels={"E": "elliptical", "S": "spiral", "Irr": None})
    m = ev.metrics
    assert (m["n_rows"], m["n_used"], m["n_no_class"], m["n_unlabelled"]) == (5, 3, 2, 0)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert "2 of no class" in repr(ev)
    # real-bogus: an "unsure" vetting is left out the same way
    r = Table({"rb_score": np.float32([0.9, 0.2, 0.5]), "vet": ["real", "bogus", "unsure"]})
    ev = astromorph.evaluate_labels(r, "vet", model="real-bogus", labels={"unsure": None})
    assert (ev.metrics["n_used"], ev.metrics["n_no_class"], ev.metrics["roc_auc"]) == (2, 1, 1)
    with pytest.raises(InputError, match="1 a label mapped to None"):
        astromorph.evaluate_labels(r[2:], "vet", model="real-bogus", labels={"unsure": None})
    t.write(tmp_path / "t.ecsv")
    out = tmp_path / "m.json"
    assert main(["evaluate", str(tmp_path / "t.ecsv"), "--truth", "mine", "-m", "morphology",
                 "--map", "E=elliptical", "--map", "S=spiral", "--map", "Irr=",
                 "-o", str(out)]) == 0
    assert json.loads(out.read_text())["n_no_class"] == 2
    assert "2 of no class" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "t.ecsv"), "--truth", "mine", "-m", "morphology",
                 "--map", "=spiral"]) == 2
    assert "--map takes YOUR_LABEL=MODEL_CLASS" in capsys.readouterr().err


def test_score_ece_is_that_of_the_top_label_of_score_and_one_minus_score():
    """The ECE of a real-bogus score, written out: confidence max(s, 1 - s), the call real
    where s > 0.5 (a tie, 0.5, bogus), 15 equal bins."""
    t = _rb_table()
    m = astromorph.evaluate_labels(t, "is_real", model="real-bogus").metrics
    s = np.asarray(t["rb_score"], float)[2:]
    y = np.asarray(t["is_real"])[2:]
    conf = np.maximum(s, 1 - s)
    right = (s > 0.5) == y
    ece = 0.0
    for b in range(15):
        sel = (conf >= b / 15) & ((conf < (b + 1) / 15) | (b == 14))
        if sel.any():
            ece += sel.mean() * abs(right[sel].mean() - conf[sel].mean())
    assert m["ece"] == pytest.approx(ece, abs=1e-12)


def test_tied_probabilities_predict_the_first_class():
    """Tied top probabilities: the first class is the prediction (confusion matrix,
    accuracy), as the docstring says."""
    from astromorph._evaluate import classification_report

    probs = [[0.5, 0.5, 0.0], [0.2, 0.4, 0.4], [0.3, 0.3, 0.3]]
    r = classification_report(probs, [0, 1, 0], ["a", "b", "c"])
    assert r["confusion_matrix"] == [[2, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert r["accuracy"] == 1.0


def test_nan_outputs_are_unscored_rows_not_an_error():
    """A NaN probability or score that is not masked (a CSV round trip, another program's
    column) is a row without output: left out and counted as unscored, not a refusal of the
    whole table by the measures."""
    t = _morph_table(["elliptical", "spiral", "spiral"], ["elliptical", "spiral", "merger"])
    t["morph_p_spiral"][2] = np.nan
    m = astromorph.evaluate_labels(t, "mine", model="morphology").metrics
    assert (m["n_used"], m["n_unscored"], m["accuracy"]) == (2, 1, 1.0)
    r = Table({"rb_score": [0.9, np.nan, 0.2, 0.4], "is_real": [1, 1, 0, 1]})
    m = astromorph.evaluate_labels(r, "is_real", model="real-bogus", threshold=0.5).metrics
    assert (m["n_used"], m["n_unscored"], m["n_real"], m["roc_auc"]) == (3, 1, 2, 1.0)
    assert m["at_thresholds"]["given"]["fnr"] == 0.5


def test_an_unlabelled_row_without_output_is_counted_once_as_unlabelled():
    """``n_unscored`` counts labelled rows only: an unlabelled row with no output was also
    counted as unscored, so the counts added up to more than the table."""
    true = MaskedColumn(["elliptical", "spiral", "spiral"], mask=[False, True, False])
    t = _morph_table(true, ["elliptical", "spiral", "spiral"])
    for c in CLASSES:
        t[f"morph_p_{c}"].mask[1] = True
    m = astromorph.evaluate_labels(t, "mine", model="morphology").metrics
    assert (m["n_rows"], m["n_used"], m["n_unlabelled"], m["n_unscored"]) == (3, 2, 1, 0)


def test_a_roc_curve_of_a_few_thousand_scores_is_thinned_too():
    """Between 1001 and ~2000 distinct scores the curve was also to be thinned to at most
    1001 points (the first and last kept, each point one of the full curve's)."""
    from astromorph._evaluate import roc_curve

    rng = np.random.default_rng(3)
    real = rng.random(1500) < 0.4
    score = rng.random(1500)
    t = Table({"rb_score": score, "is_real": real})
    curve = astromorph.evaluate_labels(t, "is_real", model="real-bogus").metrics["roc_curve"]
    assert len(curve["fpr"]) == len(curve["tpr"]) == len(curve["thresholds"]) == 1001
    fpr, tpr, cuts = roc_curve(score, real)
    full = dict(zip(cuts[1:].tolist(), zip(fpr[1:].tolist(), tpr[1:].tolist())))
    assert (curve["fpr"][0], curve["tpr"][0], curve["thresholds"][0]) == (0, 0, None)
    assert curve["thresholds"][-1] == cuts[-1] and (curve["fpr"][-1], curve["tpr"][-1]) == (1, 1)
    for f, tp, c in zip(curve["fpr"][1:], curve["tpr"][1:], curve["thresholds"][1:]):
        assert full[c] == (f, tp)


def test_classifier_metrics_are_those_of_the_columns_as_written():
    """Probabilities that do not add up to 1 (float32 rounding, a column of another
    program) are scored as written: the ECE is that of the table's confidences, not of
    rescaled ones."""
    from astromorph._evaluate import expected_calibration_error

    t = _morph_table(["elliptical", "spiral", "spiral", "merger"],
                     ["elliptical", "spiral", "merger", "merger"], conf=0.6)
    t["morph_p_artifact"] = 0.0  # the rows add up to 0.9
    m = astromorph.evaluate_labels(t, "mine", model="morphology").metrics
    probs = np.stack([np.asarray(t[f"morph_p_{c}"], float) for c in CLASSES], 1)
    y = [0, 1, 1, 3]
    assert m["ece"] == expected_calibration_error(probs, y)
    assert m["ece"] == pytest.approx(abs(0.75 - 0.6), abs=1e-6)


def test_real_bogus_metrics_against_brute_force_on_random_tables():
    """`evaluate_labels` of random score tables (ties, flagged, unlabelled and unscored
    rows) against the measures written out: counts, the AUC over every real-bogus pair
    (ties half), the rates at the thresholds, the target-FNR threshold, the ECE."""
    rng = np.random.default_rng(21)
    rec = astromorph.model_card("real-bogus")["recommended_threshold"]
    for _ in range(15):
        n = int(rng.integers(5, 80))
        score = (rng.integers(0, 11, n) / 10).astype(np.float32)
        real = rng.random(n) < 0.5
        real[:2] = [True, False]
        flags = np.where(rng.random(n) < 0.15, 4, 0).astype(np.int32)
        flags[:2] = 0
        truth = MaskedColumn(real.astype(int), mask=rng.random(n) < 0.1)
        truth.mask[:2] = False
        t = Table({"rb_score": MaskedColumn(score, mask=rng.random(n) < 0.1),
                   "rb_flags": flags, "is_real": truth})
        t["rb_score"].mask[:2] = False
        m = astromorph.evaluate_labels(t, "is_real", model="real-bogus", threshold=0.3,
                                       target_fnr=0.1).metrics
        labelled, scored = ~truth.mask, ~t["rb_score"].mask
        used = labelled & scored & (flags == 0)
        assert (m["n_rows"], m["n_used"], m["n_unlabelled"], m["n_unscored"],
                m["n_flagged"]) == (n, used.sum(), (~labelled).sum(),
                                    (labelled & ~scored).sum(),
                                    (labelled & scored & (flags != 0)).sum())
        s, y = score[used].astype(float), real[used]
        wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in s[y] for b in s[~y])
        assert m["roc_auc"] == pytest.approx(wins / (y.sum() * (~y).sum()), abs=1e-12)
        assert (m["n_real"], m["n_bogus"]) == (y.sum(), (~y).sum())
        for key, thr in (("recommended", rec), ("given", 0.3)):
            at = m["at_thresholds"][key]
            thr32 = np.float32(thr)  # compared at the column's precision
            assert at["fnr"] == pytest.approx(np.mean(s[y] < thr32), abs=1e-15)
            assert at["fpr"] == pytest.approx(np.mean(s[~y] >= thr32), abs=1e-15)
        cut = m["at_thresholds"]["target_fnr"]["threshold"]
        ok = [c for c in np.r_[s[y], np.inf] if np.sum(s[y] < c) <= 0.1 * y.sum()]
        assert cut == max(ok)
        conf, right = np.maximum(s, 1 - s), (s > 0.5) == y
        ece = sum(np.mean(sel) * abs(right[sel].mean() - conf[sel].mean())
                  for b in range(15)
                  for sel in [(conf >= b / 15) & ((conf < (b + 1) / 15) | (b == 14))]
                  if sel.any())
        assert m["ece"] == pytest.approx(ece, abs=1e-12)
