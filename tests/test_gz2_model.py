"""The Galaxy Zoo 2 decision-tree model (``morphology-gz2``).

* the decision tree (written out here independently of the training code)
  holds in the real ``votes.csv`` and in the training module's tree layer;
* the shipped ONNX model: sha256 matches the card, the card describes the
  input and the 37 outputs, every output row is non-negative and satisfies
  the tree's sums for random and realistic inputs;
* table columns come out as ``gz2_Class1.1`` ... through
  `astromorph._adapters.result_columns` and `astromorph.predict_files`;
* torch checkpoint == shipped ONNX (skipped without torch or the checkpoint);
* the card's test RMSE (overall, per question, of the training-mean
  predictor, of grey input) and the morphology model's agreement with the vote
  fractions are reproduced from the raw JPEGs (skipped without the real data
  or torch).
"""
import csv
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import astromorph
from conftest import shipped_torch_module
from astromorph._adapters import result_columns
from astromorph._registry import models_dir
from astromorph.preprocessing import _optical as opt

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = models_dir() / "morphology-gz2"
CHECKPOINT = REPO / "training" / "checkpoints" / "morphology-gz2" / "best.pt"
DATA_DIR = Path(os.environ.get("ASTROMORPH_DATA", REPO.parent / "shared" / "data"))
VOTES = DATA_DIR / "gz2" / "votes.csv"

#: Kaggle Galaxy Zoo 2 tree: question -> (number of answers, parent answer or None).
TREE = {1: (3, None), 2: (2, "Class1.2"), 3: (2, "Class2.2"), 4: (2, "Class2.2"),
        5: (4, "Class2.2"), 6: (2, None), 7: (3, "Class1.1"), 8: (7, "Class6.1"),
        9: (3, "Class2.1"), 10: (3, "Class4.1"), 11: (6, "Class4.1")}
LABELS = [f"Class{q}.{a + 1}" for q, (n, _) in TREE.items() for a in range(n)]

requires_model = pytest.mark.skipif(not (MODEL_DIR / "model.onnx").is_file(),
                                    reason="models/morphology-gz2 not exported yet")


def assert_tree(f, atol=1e-5):
    """Non-negative and every question's answers sum to its parent's fraction."""
    f = np.asarray(f, dtype=np.float64)
    assert f.shape[1] == 37
    assert np.isfinite(f).all() and f.min() >= 0.0
    for q, (n, parent) in TREE.items():
        cols = [LABELS.index(f"Class{q}.{a + 1}") for a in range(n)]
        target = 1.0 if parent is None else f[:, LABELS.index(parent)]
        np.testing.assert_allclose(f[:, cols].sum(1), target, atol=atol, err_msg=f"Q{q}")


def jpeg_like(size=424, seed=0, q=0.5):
    """An SDSS-like 8-bit colour cutout: an inclined exponential disc plus sky noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    u, v = 0.8 * xx + 0.6 * yy, (-0.6 * xx + 0.8 * yy) / q
    profile = np.exp(-np.hypot(u, v) / (size / 20))
    g, r, i = (p * profile + 0.01 * rng.standard_normal((size, size)) for p in (2.0, 4.0, 5.5))
    return opt.gri_to_rgb(g, r, i)


def _training_module():
    pytest.importorskip("torch")
    try:
        from astromorph_training import gz2
    except ImportError:
        sys.path.insert(0, str(REPO / "training"))
        from astromorph_training import gz2
    return gz2


# ------------------------------------------------------------------------ the tree
@pytest.mark.skipif(not VOTES.is_file(), reason="no GZ2 vote fractions")
def test_tree_holds_in_votes_csv():
    with open(VOTES, newline="") as fh:
        rows = list(csv.DictReader(fh))
    f = np.array([[float(r[c]) for c in LABELS] for r in rows])
    assert len(f) == 3234
    assert_tree(f, atol=1e-5)


def test_training_tree_layer():
    gz2 = _training_module()
    import torch

    assert list(gz2.LABELS) == LABELS and len(gz2.NAMES) == 37
    z = torch.randn(50, 37) * 10
    assert_tree(gz2.DecisionTree()(z).numpy(), atol=1e-6)
    viol = gz2.tree_violation(gz2.DecisionTree()(z).numpy())
    assert viol["min_value"] >= 0 and viol["max_sum_error"] < 1e-6


# ----------------------------------------------------------------------- shipped model
@requires_model
def test_sha256_and_size():
    card = json.loads((MODEL_DIR / "card.json").read_text())
    digest = hashlib.sha256((MODEL_DIR / "model.onnx").read_bytes()).hexdigest()
    assert card["sha256"] == digest
    assert (MODEL_DIR / "model.onnx").stat().st_size < 20e6


@requires_model
def test_card():
    card = json.loads((MODEL_DIR / "card.json").read_text())
    assert card["name"] == "morphology-gz2" and card["column_prefix"] == "gz2"
    spec = card["input"]
    assert spec["shape"] == [3, opt.STAMP_SIZE, opt.STAMP_SIZE]
    assert spec["family"] == "optical" and spec["single_band"] == "replicate"
    assert spec["preprocessing"] == "astromorph.preprocessing.preprocess_optical"
    assert spec["preprocessing_options"]["crop_fraction"] == opt.CROP_FRACTION
    size = spec["angular_size"]
    assert size["kind"] == "petrosian"
    # Kaggle GZ2 cutouts: 424 px at 0.02 petroR90_r per pixel, the network sees the central 0.45
    assert size["cutout_size_per_petro_r90"] == pytest.approx(424 * 0.02, abs=1e-4)
    assert size["stamp_size_per_petro_r90"] == pytest.approx(opt.CROP_FRACTION * 424 * 0.02,
                                                            abs=1e-4)
    (out,) = card["outputs"]
    assert out["name"] == "fractions" and out["kind"] == "values"
    assert out["labels"] == LABELS
    assert len(out["names"]) == 37 and len(set(out["names"])) == 37
    assert out["names"][:3] == ["smooth", "features_or_disk", "star_or_artifact"]
    assert out["names"][LABELS.index("Class2.1")] == "edge_on_yes"
    for entry in out["questions"]:
        q = int(entry["question"][1:])
        assert len(entry["answers"]) == TREE[q][0]
        assert entry["sum_equals"] == (TREE[q][1] or 1.0)
    assert "Willett" in card["training"]["terms"] and "SDSS" in card["training"]["terms"]
    assert card["metrics"]["split"] == "test" and "rmse" in card["metrics"]


@requires_model
def test_tree_property_on_shipped_onnx():
    model = astromorph.load_model("morphology-gz2", providers="cpu")
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.uniform(0, 1, (16, 3, 64, 64)),                       # noise stamps
        rng.normal(0.5, 3.0, (8, 3, 64, 64)),                     # far outside [0, 1]
        np.zeros((2, 3, 64, 64)), np.ones((2, 3, 64, 64)),        # blank and saturated
        opt.preprocess_colour_cutout(np.stack([jpeg_like(seed=s, q=0.2 + 0.2 * s)
                                               for s in range(4)])),
    ]).astype(np.float32)
    from astromorph.exceptions import InputRangeWarning

    with pytest.warns(InputRangeWarning, match="from row 16 on"):  # the stamps beyond [0, 1]
        f = np.asarray(model.predict(x, progress=False, batch_size=16)["fractions"])
    assert f.shape == (len(x), 37) and f.dtype == np.float32
    assert_tree(f, atol=1e-5)
    # single-band network input (N, H, W) is replicated by the model
    grey = model.predict(x[:4].mean(1), progress=False)["fractions"]
    assert_tree(grey, atol=1e-5)


@requires_model
def test_result_columns_named_by_labels():
    model = astromorph.load_model("morphology-gz2", providers="cpu")
    x = opt.preprocess_colour_cutout(np.stack([jpeg_like(seed=s) for s in range(3)]))
    pred = model.predict(x, progress=False)
    valid = np.array([True, False, True, True])
    table = result_columns(model, pred, np.zeros(4, np.int32), valid)
    expected = [f"gz2_{lab}" for lab in LABELS]
    assert table.colnames == expected + ["gz2_flags"]
    assert table["gz2_Class1.1"].mask.tolist() == [False, True, False, False]
    f = np.stack([np.asarray(table[c])[valid] for c in expected], axis=1)
    np.testing.assert_allclose(f, pred["fractions"], atol=0)


@requires_model
def test_predict_files_on_a_jpeg(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    paths = []
    for s in range(2):
        p = tmp_path / f"galaxy{s}.jpg"
        pil.fromarray(jpeg_like(seed=s)).save(p, quality=95)
        paths.append(p)
    real = sorted((DATA_DIR / "gz2" / "images").glob("*.jpg"))[:2]
    table = astromorph.predict_files("morphology-gz2", [str(p) for p in paths + real],
                                     progress=False)
    assert len(table) == 2 + len(real)
    cols = [f"gz2_{lab}" for lab in LABELS]
    assert all(c in table.colnames for c in cols) and "gz2_flags" in table.colnames
    assert_tree(np.stack([np.asarray(table[c]) for c in cols], axis=1), atol=1e-5)


@requires_model
def test_torch_onnx_parity():
    """Raw cutouts -> preprocessing -> torch checkpoint vs shipped ONNX (atol 1e-5); without
    the checkpoint (CI), the card's architecture with the shipped file's weights."""
    gz2 = _training_module()
    import torch

    if CHECKPOINT.is_file():
        net, _ = gz2._load_net(CHECKPOINT)  # EMA weights, widths from the checkpoint
        card = json.loads((MODEL_DIR / "card.json").read_text())
        module = gz2.DeployedGZ2(net.eval(), card["outputs"][0]["orientations_averaged"]).eval()
    else:
        module = shipped_torch_module("morphology-gz2")
    rng = np.random.default_rng(0)
    raw = np.concatenate([np.stack([jpeg_like(seed=s, q=0.3 + 0.2 * s) for s in range(4)]),
                          rng.integers(0, 256, (4, 424, 424, 3), dtype=np.uint8)])
    images = sorted((DATA_DIR / "gz2" / "images").glob("*.jpg"))[:8]
    if images:
        raw = np.concatenate([raw, gz2._gz1.load_jpegs(images)])
    x = opt.preprocess_colour_cutout(raw)
    model = astromorph.load_model("morphology-gz2", providers="cpu")
    onnx_f = np.asarray(model.predict(x, progress=False)["fractions"])
    with torch.no_grad():
        torch_f = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_f, torch_f, atol=1e-5)


@pytest.fixture(scope="module")
def gz2_test_predictions():
    """The GZ2 test split from its raw JPEGs, predicted once for every test of the card's
    numbers: the shipped ONNX's fractions on the stamps and on their channel mean (grey
    input, as `evaluate` makes it), the training split's mean fractions, and the
    ``morphology`` model's probabilities for the same galaxies at its own field of view."""
    if not (MODEL_DIR / "model.onnx").is_file():
        pytest.skip("models/morphology-gz2 not exported yet")
    if not VOTES.is_file():
        pytest.skip(f"no GZ2 data at {DATA_DIR}")
    gz2 = _training_module()
    ids, y = gz2.read_votes(DATA_DIR)
    train, _, test = gz2.split_indices(len(ids))
    files = gz2.image_paths(DATA_DIR, ids[test])
    raw = [gz2._gz1.load_jpegs(files[k:k + 128]) for k in range(0, len(files), 128)]
    x = np.concatenate([opt.preprocess_colour_cutout(r) for r in raw])
    model = astromorph.load_model("morphology-gz2", providers="cpu")
    out = {"y": y[test], "train_mean": y[train].mean(0),
           "fractions": np.asarray(model.predict(x, progress=False)["fractions"]),
           "grey": np.asarray(model.predict(np.repeat(x.mean(axis=1, keepdims=True), 3, axis=1),
                                            progress=False)["fractions"])}
    if (MODEL_DIR.parent / "morphology" / "model.onnx").is_file():
        x1 = np.concatenate([opt.preprocess_colour_cutout(r, crop_fraction=gz2.GZ1_EQUIVALENT_CROP)
                             for r in raw])
        out["morphology"] = np.asarray(astromorph.load_model("morphology", providers="cpu")
                                       .predict(x1, progress=False)["probabilities"])
    return out


def test_card_rmse_reproduced(gz2_test_predictions):
    """The card's test RMSE, from the raw JPEGs of the held-out test split."""
    card = json.loads((MODEL_DIR / "card.json").read_text())
    if "rmse" not in card["metrics"]:
        pytest.skip("card has no metrics yet")
    f, y = gz2_test_predictions["fractions"], gz2_test_predictions["y"]
    assert len(y) == card["metrics"]["n"]
    rmse = float(np.sqrt(np.mean((f - y) ** 2)))
    assert rmse == pytest.approx(card["metrics"]["rmse"], abs=1e-4)


def test_card_test_metrics_reproduced(gz2_test_predictions):
    """The card's other test-split numbers, as `evaluate` computes them (`rmse_report`,
    `_morphology_comparison`), rounded to the card's 4 decimals: RMSE per question, of
    the training-mean predictor and of grey input, and the correlations of the
    ``morphology`` model's probabilities with the true and predicted vote fractions."""
    from scipy.stats import pearsonr, spearmanr

    gz2 = _training_module()
    m = json.loads((MODEL_DIR / "card.json").read_text())["metrics"]
    if "rmse_per_question" not in m:
        pytest.skip("card has no metrics yet")
    f, y = gz2_test_predictions["fractions"], gz2_test_predictions["y"]
    rep = gz2.rmse_report(f, y)
    assert {q: round(v, 4) for q, v in rep["per_question"].items()} == m["rmse_per_question"]
    trivial = gz2.rmse_report(np.broadcast_to(gz2_test_predictions["train_mean"], y.shape), y)
    assert round(trivial["rmse"], 4) == m["rmse_training_mean_predictor"]
    assert round(gz2.rmse_report(gz2_test_predictions["grey"], y)["rmse"], 4) == m["rmse_greyscale_input"]
    if "morphology" not in gz2_test_predictions or not m.get("morphology_model_agreement"):
        return
    p = gz2_test_predictions["morphology"]
    labels = list(astromorph.load_model("morphology").labels)
    col = {c: gz2.LABELS.index(c) for c in ("Class1.1", "Class1.2", "Class2.1", "Class4.1")}
    e, el, sp = labels.index("edge_on"), labels.index("elliptical"), labels.index("spiral")
    pairs = {"p_edge_on_vs_true_Class2.1": (p[:, e], y[:, col["Class2.1"]]),
             "p_edge_on_vs_pred_Class2.1": (p[:, e], f[:, col["Class2.1"]]),
             "p_elliptical_vs_true_Class1.1": (p[:, el], y[:, col["Class1.1"]]),
             "p_elliptical_vs_pred_Class1.1": (p[:, el], f[:, col["Class1.1"]]),
             "p_spiral_vs_true_Class4.1": (p[:, sp], y[:, col["Class4.1"]]),
             "p_spiral+edge_on_vs_true_Class1.2": (p[:, sp] + p[:, e], y[:, col["Class1.2"]])}
    got = {k: {"pearson": round(float(pearsonr(a, b)[0]), 4), "spearman": round(float(spearmanr(a, b)[0]), 4)}
           for k, (a, b) in pairs.items()}
    assert got == m["morphology_model_agreement"]


def test_initialisation_text_gives_the_rebuild_commands():
    """The card names the morphology recipe the backbone started from, 1.x or 2.x."""
    gz2 = _training_module()
    from astromorph_training import morphology

    state = {"init": "training/checkpoints/morphology/last.pt", "init_sha256": "ab" * 32,
             "epochs": 60, "widths": list(morphology.WIDTHS_1X)}  # no "stem": a 1.x checkpoint
    text = gz2._initialisation_text(state)
    assert morphology.RECIPE_1X in text and "--init DIR/training/checkpoints/morphology/last.pt" in text
    state.update(widths=[32, 48, 64, 128], stem="strided")
    text = gz2._initialisation_text(state)
    assert "--stem strided --widths 32 48 64 128" in text and "conv-pool" not in text
    assert gz2._initialisation_text({"epochs": 60}) == "random"
    net = gz2.GZ2Net(widths=(32, 48, 64, 128), stem="strided")
    assert net.backbone.features[3].stride == (2, 2)
