"""CI smoke test of the training pipeline: every step of every model on a handful of images.

Runs ``python -m astromorph_training MODEL STEP --smoke`` in a subprocess with the real data
(skipped where ../shared/data or torch is absent). A smoke run never writes into models/.
"""
import hashlib
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA_DIR, REPO, check_parity_reference

pytestmark = [
    pytest.mark.training,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch"),
    pytest.mark.skipif(importlib.util.find_spec("astromorph_training") is None,
                       reason="needs the training/ subproject installed"),
    pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"no real data at {DATA_DIR}"),
]

MODELS = ["morphology", "radio-morphology", "real-bogus", "embedding", "morphology-gz2"]


def _models_state():
    state = {}
    for path in sorted((REPO / "models").rglob("*")):
        if path.is_file():
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def _cache_state():
    """Every path below the ``training/cache`` of the checkout the training package runs
    from (that of a smoke run in a subprocess), with its size and modification time."""
    from astromorph_training import _common

    cache = _common.repo_root() / "training" / "cache"
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in cache.rglob("*"))


@pytest.mark.parametrize("model", MODELS)
def test_smoke_pipeline(model, tmp_path):
    from astromorph_training.__main__ import MODULES

    if importlib.util.find_spec(f"astromorph_training.{MODULES[model]}") is None:
        pytest.skip(f"no training module for {model} yet")
    before, cache_before = _models_state(), _cache_state()
    # a fresh TMPDIR: smoke runs write below tempfile.gettempdir(), never into models/
    env = dict(os.environ, ASTROMORPH_DATA=str(DATA_DIR), PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path))
    # one model goes through the 'build' step (train, evaluate, export in one command)
    steps = ("build",) if model == "morphology-gz2" else ("train", "evaluate", "export")
    extra = {}
    if model == "real-bogus":
        # calibrate redoes train's calibration; evaluate also scores a fresh test draw;
        # compare scores the shipped model against this run, on fresh simulations
        steps = ("train", "calibrate", "evaluate", "export", "compare")
        extra = {"evaluate": ["--test-seed", "9"], "compare": ["--val-seed", "5"]}
    calibrations = []
    for step in steps:
        run = subprocess.run(
            [sys.executable, "-m", "astromorph_training", model, step, "--smoke",
             "--data-dir", str(DATA_DIR), "--out-dir", str(tmp_path)] + extra.get(step, []),
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{model} {step} --smoke failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        if model == "real-bogus" and step in ("train", "calibrate"):
            (path,) = tmp_path.rglob("checkpoints/real-bogus/calibration.json")
            calibrations.append(json.loads(path.read_text()))
        if step == "calibrate":  # the same fit and thresholds as at the end of train
            for key in ("platt_a", "platt_b", "threshold_snr_ge_5", "threshold_candidates",
                        "recommended_threshold", "epochs", "best_epoch"):
                assert calibrations[1][key] == calibrations[0][key], key
            assert calibrations[1]["recommended_threshold"] == calibrations[1]["threshold_candidates"]
        if step == "evaluate" and model == "real-bogus":
            (path,) = tmp_path.rglob("reports/real-bogus/metrics.json")
            fresh = json.loads(path.read_text())["held_out_simulations"]["fresh_draw"]
            assert fresh["seed"] == 9 and fresh["n"] == 24
            assert fresh["all_snr_3_to_1000"]["n"] == 24
            # ZTF's random-forest rb against braai's labels: the reference for rb_score's AUC
            alerts = json.loads(path.read_text())["real_ztf_alerts"]["all_209"]
            assert 0.5 < alerts["ztf_rf_rb_auc_vs_drb_ge_0.5"] <= 1
            low, high = alerts["ztf_rf_rb_auc_vs_drb_bootstrap_95"]
            assert low <= alerts["ztf_rf_rb_auc_vs_drb_ge_0.5"] <= high
        if step == "compare":  # JSON on stdout: the shipped model and this run
            out = json.loads(run.stdout)
            assert out["validation_set"] == "fresh, seed 5" and len(out) == 3
            for measures in list(out.values())[1:]:
                assert 0 <= measures["R_real_alerts_auc_vs_drb"] <= 1
                # a 24-triplet smoke set may hold candidates of one class only (AUC nan)
                assert math.isnan(measures["V1_candidates_auc"]) or 0 <= measures["V1_candidates_auc"] <= 1
                assert len(measures["V1_candidates_rates_at_threshold"]) == 2  # (FNR, FPR)
                assert "V1_candidates_balance_threshold" in measures
            # the run's paired bootstrap gain over the shipped model (`_paired_auc_gains`)
            gain = list(out.values())[-1]["R_minus_shipped_bootstrap_2.5_50_97.5"]
            assert len(gain) == 3 and (any(map(math.isnan, gain)) or sorted(gain) == gain)
            assert not any(k.startswith("R_minus_first") for k in list(out.values())[-1])
        if step == "build":
            for done in ("train", "evaluate", "export"):
                assert f"{model} {done} finished" in run.stderr, run.stderr[-3000:]
    assert _models_state() == before, "a smoke run changed files in models/"
    assert _cache_state() == cache_before, "a smoke run wrote into the checkout's training/cache"
    # export saved the torch outputs the exported file must reproduce (as the shipped ones do)
    (reference,) = tmp_path.rglob(f"reports/{model}/parity_reference.npz")
    (card,) = tmp_path.rglob(f"models/{model}/card.json")
    check_parity_reference(reference, card.parent)
    # the card's architecture with the weights read back from the exported file is the torch
    # model export saved the outputs of
    import torch
    from astromorph_training._common import shipped_torch_model

    with np.load(reference) as f:
        x, expected = f["input"].astype(np.float32), f["output"]
    with torch.no_grad():
        out = shipped_torch_model(model, root=card.parents[2])(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out.reshape(expected.shape), expected, atol=1e-5, rtol=1e-4)


def test_radio_smoke_neither_reads_nor_writes_the_checkout_cache(tmp_path, monkeypatch):
    """A --smoke radio-morphology run took its cache folder in the checkout's (git-ignored)
    training/cache whatever --out-dir, and trained on the first images of any data cache
    found there (here a planted one of blank images). Its cache folder is now below its
    temporary root, and it reads a few images of the data set's archive, building and
    reading no cache: nothing under the checkout's training/cache is read or written."""
    import argparse
    import tempfile

    import numpy as np
    from astromorph_training import _common, radio

    checkout = tmp_path / "checkout"
    cache = checkout / "training" / "cache" / radio.NAME
    cache.mkdir(parents=True)
    planted = cache / radio.CACHE_FILE
    split = np.array(["train", "valid", "test"])
    np.savez_compressed(planted, images=np.full((3, 300, 300), 7, np.uint8),
                        labels=np.zeros(3, np.int64), split=split, ra=np.zeros(3),
                        dec=np.zeros(3), source=np.array([""] * 3),
                        cv_split=np.array([split] * radio.CV_FOLDS))
    before = planted.read_bytes()
    monkeypatch.setattr(_common, "repo_root", lambda: checkout)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    args = argparse.Namespace(smoke=True, out_dir=str(tmp_path / "out"), data_dir=str(DATA_DIR),
                              first_dir=None)
    try:
        radio._first_dir(args)
    except SystemExit:
        pytest.skip("no FIRST radio galaxy data set (firstgalaxydata)")
    assert checkout not in radio._dirs(args)["cache"].parents
    data = radio.load_dataset(args)
    assert len(data["labels"]) > 3 and not (data["images"] == 7).all()
    assert set(data["split"]) == {"train", "valid", "test"}
    assert [p for p in checkout.rglob("*") if p.is_file()] == [planted]
    assert planted.read_bytes() == before


def test_radio_evaluate_exports_a_new_checkpoint_first(tmp_path):
    """A run retrained beside an exported model.onnx (as in the checkout, beside the shipped
    file) is exported again before evaluate scores it: evaluate never scores a stale file."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path))
    for args in (["build"], ["train", "--seed", "7"], ["evaluate"]):
        run = subprocess.run([sys.executable, "-m", "astromorph_training", "radio-morphology",
                              *args, "--smoke", "--data-dir", str(DATA_DIR)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{args}:\n{run.stderr[-3000:]}"
    assert "changed since" in run.stderr and "exporting the checkpoint first" in run.stderr


def test_real_bogus_data_parallel_smoke(tmp_path):
    """``--processes 2``: two gloo processes share every batch; rank 0 validates, checkpoints
    and logs each epoch once, and the parent calibrates from its checkpoint (here on a
    ``--recipe v5`` training set and in bfloat16 autocast, which the calibration records).
    ``--epochs 2 --cycles 2``: the second epoch restarts the learning-rate schedule."""
    env = dict(os.environ, ASTROMORPH_DATA=str(DATA_DIR), PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path))
    run = subprocess.run(
        [sys.executable, "-m", "astromorph_training", "real-bogus", "train", "--smoke",
         "--processes", "2", "--epochs", "2", "--cycles", "2", "--recipe", "v5", "--amp", "bf16", "--data-dir", str(DATA_DIR), "--out-dir", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "realbogus[0] INFO data ready" in run.stderr and "realbogus[1] INFO data ready" in run.stderr
    assert run.stderr.count('INFO epoch 0: {"epoch": 0') == 1
    assert "realbogus[1] INFO epoch 0:" not in run.stderr
    assert "calibration:" in run.stderr and '"processes": 2' in run.stderr
    assert '"recipe": "v5"' in run.stderr and '"amp": "bf16"' in run.stderr and '"cycles": 2' in run.stderr
    epochs = [json.loads(line.split("INFO epoch %d: " % e)[1]) for e in (0, 1)
              for line in run.stderr.splitlines() if "INFO epoch %d: " % e in line]
    assert len(epochs) == 2
    # each cycle's schedule starts afresh (one cycle would have annealed by the second epoch)
    assert epochs[0]["lr_first_step"] == epochs[1]["lr_first_step"] > 0


def test_real_bogus_average_smoke(tmp_path):
    """``average`` builds a run from earlier runs' final checkpoints: the weight average of a
    run with itself is that run (batch norm recomputed), the logit ensemble exports and
    evaluates like one network."""
    import torch

    env = dict(os.environ, ASTROMORPH_DATA=str(DATA_DIR), PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path))

    def step(*args):
        run = subprocess.run([sys.executable, "-m", "astromorph_training", "real-bogus", *args, "--smoke",
                              "--data-dir", str(DATA_DIR), "--out-dir", str(tmp_path)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{args}:\n{run.stderr[-3000:]}"
        return run.stderr

    step("train")
    (ckpt,) = tmp_path.rglob("checkpoints/real-bogus")
    last = torch.load(ckpt / "last.pt", weights_only=False)["model"]
    log = step("average", "--sources", str(tmp_path), str(tmp_path))
    assert "averaged weights (batch norm recomputed on 48 training simulations)" in log
    best = torch.load(ckpt / "best.pt", weights_only=False)["model"]
    for key, value in last.items():
        if "running" not in key and "num_batches" not in key:  # learned weights: unchanged
            torch.testing.assert_close(best[key], value)
    assert not torch.equal(best["1.running_mean"], last["1.running_mean"])  # recomputed
    calib = json.loads((ckpt / "calibration.json").read_text())
    assert calib["averaged"]["kind"] == "weights" and calib["averaged"]["bn_samples"] == 48  # the smoke training set
    step("average", "--ensemble", "--sources", str(tmp_path), str(tmp_path))
    assert len(torch.load(ckpt / "best.pt", weights_only=False)["ensemble"]) == 2
    step("evaluate")
    step("export")


def test_radio_average_smoke(tmp_path):
    """radio-morphology ``average``: two runs of different seeds (main split and CV fold 0)
    become one logit-averaging network that evaluates, exports and is carded as an ensemble."""
    import torch

    def step(folder, *args):
        env = dict(os.environ, ASTROMORPH_DATA=str(DATA_DIR), PYTHONUNBUFFERED="1",
                   TMPDIR=str(tmp_path / folder))
        (tmp_path / folder).mkdir(exist_ok=True)
        run = subprocess.run([sys.executable, "-m", "astromorph_training", "radio-morphology", *args,
                              "--smoke", "--data-dir", str(DATA_DIR)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{args}:\n{run.stderr[-3000:]}"
        return run.stderr

    def refused(*sources):
        run = subprocess.run([sys.executable, "-m", "astromorph_training", "radio-morphology", "average",
                              "--smoke", "--data-dir", str(DATA_DIR), "--sources", *sources],
                             cwd=tmp_path, env=dict(os.environ, TMPDIR=str(tmp_path / "x")),
                             capture_output=True, text=True, timeout=300)
        assert run.returncode != 0
        return run.stderr

    roots = []
    for seed in (0, 1):
        step(f"seed{seed}", "train", "--seed", str(seed))
        step(f"seed{seed}", "train", "--cv", "--folds", "0", "--seed", str(seed))
        roots.append(tmp_path / f"seed{seed}" / "astromorph-smoke" / "radio-morphology")
    log = step("ens", "average", "--sources", *map(str, roots))
    assert "main split: 2 networks" in log and "cv0: 2 networks" in log
    assert "CV test accuracy of the ensemble over 1 folds" in log
    (ckpt,) = (tmp_path / "ens").rglob("checkpoints/radio-morphology")
    best = torch.load(ckpt / "best.pt", weights_only=False)
    member = torch.load(roots[1] / "training/checkpoints/radio-morphology/best.pt", weights_only=False)
    assert len(best["ensemble"]) == 2
    for key, value in member["net"].items():
        assert torch.equal(best["ensemble"][1]["net"][key], value)
    # a source that is itself an ensemble is refused
    assert "single networks" in refused(str(roots[0]), str(ckpt.parents[2]))
    # and so are runs of another recipe
    step("other", "train", "--seed", "2", "--label-smoothing", "0")
    other = tmp_path / "other" / "astromorph-smoke" / "radio-morphology"
    assert "different recipes" in refused(str(roots[0]), str(other))
    step("ens", "export")
    step("ens", "evaluate")
    (card_path,) = (tmp_path / "ens").rglob("models/radio-morphology/card.json")
    card = json.loads(card_path.read_text())
    assert card["training"]["network"].startswith("mean logits of 2 x RadioNet")
    assert "average --sources runs/seed0 runs/seed1" in card["training"]["command"]
    assert card["metrics"]["cross_validation"]["command"].endswith("average --sources runs/seed0 runs/seed1")
    metrics = json.loads(next((tmp_path / "ens").rglob("reports/radio-morphology/metrics.json")).read_text())
    assert metrics["torch_onnx_max_abs_diff"] < 1e-4


def test_repo_root_of_an_installed_copy(tmp_path, monkeypatch):
    """``pip install ./training`` (as the docs and CI do) puts the package in site-packages:
    `repo_root` is then the checkout the command runs in, not a folder of the virtual
    environment (``export`` must write the repository's ``models/``)."""
    from astromorph_training import _common

    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "astromorph_training"
    monkeypatch.setattr(_common, "__file__", str(site / "_common.py"))
    _common._find_repo_root.cache_clear()
    try:
        monkeypatch.chdir(REPO / "docs")
        assert _common.repo_root() == REPO.resolve()
        monkeypatch.chdir(tmp_path)  # outside any checkout: the working directory
        assert _common.repo_root() == tmp_path.resolve()
        monkeypatch.setenv("ASTROMORPH_DATA", str(tmp_path / "nowhere"))
        with pytest.raises(SystemExit, match="nowhere"):
            _common.resolve_data_dir()
    finally:
        _common._find_repo_root.cache_clear()


def test_resume_refuses_another_recipe():
    """A checkpoint is continued only under the options it was trained with (epochs and
    threads may change); anything else needs --restart."""
    import argparse

    from astromorph_training._common import check_resume

    stored = {"seed": "0", "lr": "0.002", "label_smoothing": "0.1"}
    check_resume("last.pt", stored, argparse.Namespace(seed=0, lr=0.002, label_smoothing=0.1,
                                                       epochs=90), ("seed", "lr", "label_smoothing"))
    check_resume("last.pt", {}, argparse.Namespace(seed=5), ("seed",))  # older checkpoints
    with pytest.raises(SystemExit, match="--label-smoothing 0.1, this run asks for 0.0"):
        check_resume("last.pt", stored, argparse.Namespace(seed=0, lr=0.002, label_smoothing=0.0),
                     ("seed", "lr", "label_smoothing"))
    check_resume("last.pt", stored, argparse.Namespace(seed=0), ("seed",), trained=90, epochs=90)
    check_resume("last.pt", stored, argparse.Namespace(seed=0), ("seed",), trained=40, epochs=90)
    with pytest.raises(SystemExit, match="already trained 90 epochs, more than this run's "
                                         "--epochs 60: pass --restart"):
        check_resume("last.pt", stored, argparse.Namespace(seed=0), ("seed",), trained=90, epochs=60)


def test_real_bogus_resume_checks_the_recipe():
    """real-bogus continues a checkpoint only under its recipe (--recipe, --n-train, --lr,
    --seed...) and learning-rate cycle length; --epochs may grow by whole cycles."""
    from types import SimpleNamespace

    from astromorph_training import realbogus

    def args(**kw):
        base = dict(seed=0, lr=2e-3, batch_size=128, n_train=4096, n_val=8000, recipe="v3",
                    amp="fp32", cycles=2)
        return SimpleNamespace(**{**base, **kw})

    ck = {"epoch": 29, "recipe": realbogus._recipe(args(), 30)}
    realbogus._check_resume("last.pt", ck, args(), 30)  # a finished run, kept
    realbogus._check_resume("last.pt", ck, args(cycles=3), 45)  # a third 15-epoch cycle
    realbogus._check_resume("last.pt", {"epoch": 3}, args(seed=9), 30)  # older checkpoints
    for changed, epochs, message in ((dict(recipe="v5"), 30, "--recipe v3, this run asks for v5"),
                                     (dict(n_train=8192), 30, "--n-train 4096"),
                                     (dict(lr=1e-3), 30, "--lr 0.002"),
                                     (dict(seed=1), 30, "--seed 0"),
                                     (dict(cycles=1), 30, r"cycle \(--epochs / --cycles\) 15, "
                                                          "this run asks for 30"),
                                     (dict(cycles=1), 15, "already trained 30 epochs")):
        with pytest.raises(SystemExit, match=message):
            realbogus._check_resume("last.pt", ck, args(**changed), epochs)


def test_gz2_resume_checks_the_recipe():
    """morphology-gz2 continues a checkpoint only with its options, training set and initial
    weights; checkpoints without a recorded recipe are checked on what they record."""
    from astromorph_training import gz2

    recipe = {"seed": "0", "lr": "0.002", "weight_decay": "0.05", "batch_size": "64",
              "ema_decay": "0.995", "dropout": "0.2", "n_train": "100", "n_pseudo": "0",
              "init_sha256": "abc"}
    state = {"epoch": 4, "recipe": recipe}
    gz2._check_resume("last.pt", state, recipe, 5)
    gz2._check_resume("last.pt", state, recipe, 60)
    with pytest.raises(SystemExit, match=r"initial weights \(--init\) of sha256 abc"):
        gz2._check_resume("last.pt", state, {**recipe, "init_sha256": "def"}, 5)
    with pytest.raises(SystemExit, match=r"--student-lr\) 0.002, this run asks for 0.0005"):
        gz2._check_resume("last.pt", state, {**recipe, "lr": "0.0005"}, 5)
    old = {"epoch": 4, "args": {"seed": "0", "lr": "0.002", "batch_size": "64"}, "n_train": 100,
           "n_pseudo": 0, "dropout": 0.2, "init_sha256": "abc"}
    gz2._check_resume("last.pt", old, {**recipe, "lr": "0.0005"}, 5)  # lr not recorded as run
    with pytest.raises(SystemExit, match="--seed 0, this run asks for 3"):
        gz2._check_resume("last.pt", old, {**recipe, "seed": "3"}, 5)
    with pytest.raises(SystemExit, match="pseudo-labelled images"):
        gz2._check_resume("last.pt", old, {**recipe, "n_pseudo": "5000"}, 5)


def _tiny_ssl(tmp_path, epochs, *, method="simclr", lr=1e-3, restart=False, n=8):
    """``embedding.run_ssl`` on ``n`` random cutouts (a second or so per epoch)."""
    import numpy as np
    import torch

    from astromorph_training import embedding

    torch.manual_seed(0)
    pool = np.random.default_rng(0).integers(0, 255, (n, 3, 96, 96), dtype=np.uint8)
    m = embedding.build_method(method)
    tmp_path.mkdir(parents=True, exist_ok=True)
    hist = embedding.run_ssl(m, pool, epochs=epochs, batch_size=4, lr=lr, seed=0,
                             ckpt=tmp_path / "last.pt", restart=restart)
    return m, hist


def test_embedding_resume_checks_the_recipe(tmp_path):
    """embedding refuses to continue a checkpoint of another method, learning rate or
    training set (it used to start afresh over it)."""
    _tiny_ssl(tmp_path, 1)
    with pytest.raises(SystemExit, match="--method simclr, this run asks for byol"):
        _tiny_ssl(tmp_path, 2, method="byol")
    with pytest.raises(SystemExit, match="--lr 0.001, this run asks for 0.002"):
        _tiny_ssl(tmp_path, 2, lr=2e-3)
    with pytest.raises(SystemExit, match="training cutouts 8, this run asks for 12"):
        _tiny_ssl(tmp_path, 2, n=12)
    _tiny_ssl(tmp_path, 1, method="byol", restart=True)  # --restart: starts again


def _tiny_radio_fit(folder, epochs, **kw):
    """``radio._fit`` on 8 synthetic 300-pixel sources, 2 steps an epoch (a second)."""
    import numpy as np

    from astromorph_training import radio

    yy, xx = np.mgrid[:300, :300] - 150.0
    x = np.stack([(255 * np.exp(-(yy ** 2 + (xx - 5 * i) ** 2) / (2 * (4 + i) ** 2))).astype(np.uint8)
                  for i in range(8)])
    y = np.arange(8) % 4
    return radio._fit(x, y, x[:4], y[:4], folder, epochs=epochs, seed=0, batch_size=4, lr=2e-3,
                      weight_decay=5e-4, arch={"stage4": 0}, **kw)


def test_radio_resume_with_other_epochs_continues(tmp_path):
    """radio-morphology with another --epochs continues the checkpoint to the new total on a
    re-planned schedule (as morphology does), where it used to train afresh over it; an
    --epochs below the epochs trained is refused."""
    import torch

    first = _tiny_radio_fit(tmp_path / "a", 2)["history"]
    longer = _tiny_radio_fit(tmp_path / "a", 3)
    assert longer["history"][:2] == first
    assert longer["replanned"] == [{"at_epoch": 2, "epochs_before": 2, "epochs": 3}]
    fresh = _tiny_radio_fit(tmp_path / "b", 3)  # the schedule ends where a 3-epoch run's does
    assert longer["history"][-1]["lr"] == pytest.approx(fresh["history"][-1]["lr"], rel=1e-12)
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=False)["epochs"] == 3
    with pytest.raises(SystemExit, match="already trained 3 epochs, more than this run's --epochs 2"):
        _tiny_radio_fit(tmp_path / "a", 2)
    with pytest.raises(SystemExit, match="--mixup 0.0, this run asks for 0.2"):
        _tiny_radio_fit(tmp_path / "a", 3, mixup=0.2)


def test_embedding_keeps_a_finished_run(tmp_path):
    """A rerun of embedding train after a finished run keeps it (it used to train afresh
    over it with a warning), as the other models do; --restart trains again."""
    import torch

    first, hist = _tiny_ssl(tmp_path, 2)
    again, hist_again = _tiny_ssl(tmp_path, 2)
    assert hist_again == hist  # the same rows, timings included: nothing was trained
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.load(tmp_path / "last.pt", weights_only=False)["history"] == hist
    _, hist_restart = _tiny_ssl(tmp_path, 2, restart=True)
    assert [r["seconds"] for r in hist_restart] != [r["seconds"] for r in hist]


def _interrupt_after_first_save(monkeypatch, name="last.pt"):
    """Make the first save of ``name`` end the run as Ctrl-C would, once it is written."""
    from astromorph_training import _common

    save = _common.save_checkpoint

    def save_then_stop(obj, path, **kw):
        save(obj, path, **kw)
        if path.name == name:
            monkeypatch.setattr(_common, "save_checkpoint", save)
            raise KeyboardInterrupt

    monkeypatch.setattr(_common, "save_checkpoint", save_then_stop)


def test_radio_interrupted_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    """What --smoke never exercises: radio-morphology stopped after its first epoch and
    rerun ends with the weights of the uninterrupted run."""
    import torch

    _tiny_radio_fit(tmp_path / "whole", 2)
    _interrupt_after_first_save(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _tiny_radio_fit(tmp_path / "cut", 2)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["state"]["epoch"] == 1
    resumed = _tiny_radio_fit(tmp_path / "cut", 2)
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert [r["train_loss"] for r in resumed["history"]] == \
        [r["train_loss"] for r in whole["state"]["history"]]
    for key in ("net", "ema"):
        for name, value in whole[key].items():
            assert torch.equal(value, cut[key][name]), (key, name)


def test_embedding_interrupted_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    """embedding stopped after its first epoch and rerun ends with the uninterrupted run's
    weights (each epoch's data order and augmentation come from the seed and the epoch)."""
    import torch

    whole, hist = _tiny_ssl(tmp_path / "whole", 2)
    _interrupt_after_first_save(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _tiny_ssl(tmp_path / "cut", 2)
    resumed, hist_resumed = _tiny_ssl(tmp_path / "cut", 2)
    assert [r["loss"] for r in hist_resumed] == [r["loss"] for r in hist]
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_real_bogus_resume_appends_a_cycle(tmp_path):
    """real-bogus's training loop continued from a finished --epochs 1 run with --epochs 2
    --cycles 2: the first epoch is kept, the second starts a new learning-rate cycle, and
    the checkpoint records the recipe the next resume is checked against."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from astromorph_training import realbogus

    x = np.random.default_rng(0).random((32, 3, 63, 63)).astype(np.float16)
    info = {"label": np.arange(32) % 2}

    def run(epochs, cycles):
        args = SimpleNamespace(seed=0, smoke=False, out_dir=tmp_path, epochs=epochs,
                               cycles=cycles, batch_size=16, threads=1)
        realbogus._train_worker(0, args, 1, None,
                                data=(x, info, x[:8], {"label": info["label"][:8]}))
        last = tmp_path / "training" / "checkpoints" / "real-bogus" / "last.pt"
        return args, torch.load(last, weights_only=False)

    _, first = run(1, 1)
    args, ck = run(2, 2)
    assert ck["epoch"] == 1 and ck["history"][0] == first["history"][0]
    assert ck["history"][1]["lr_first_step"] == ck["history"][0]["lr_first_step"]  # new cycle
    realbogus._check_resume("last.pt", ck, args, 2)
    with pytest.raises(SystemExit, match="--epochs / --cycles\\) 1, this run asks for 2"):
        realbogus._check_resume("last.pt", ck, SimpleNamespace(**{**vars(args), "cycles": 1}), 2)


def test_card_train_command_repeats_the_run():
    """The morphology card's command is built from the options the checkpoint recorded:
    defaults give the bare command (the shipped card), others are spelled out."""
    from astromorph_training._common import train_command
    from astromorph_training.morphology import TRAIN_COMMAND_KEYS

    defaults = {"seed": "0", "epochs": "None", "widths": "None", "lr": "0.002", "threads": "None"}
    assert train_command("morphology", defaults, TRAIN_COMMAND_KEYS) == \
        "python -m astromorph_training morphology train"
    run = dict(defaults, seed="3", widths="[32, 48, 80, 160]", stem="conv-pool", lr="0.001")
    assert train_command("morphology", run, TRAIN_COMMAND_KEYS) == (
        "python -m astromorph_training morphology train --seed 3 --widths 32 48 80 160 "
        "--stem conv-pool --lr 0.001")


def test_checkpoints_are_saved_atomically(tmp_path):
    """A save interrupted part-way (a killed run) leaves the previous checkpoint loadable
    and no temporary file; no training module writes a checkpoint with a bare torch.save
    (which truncates the file before writing it)."""
    import re

    import torch

    from astromorph_training import _common

    path = tmp_path / "last.pt"
    _common.save_checkpoint({"epoch": 3}, path)

    class Interrupted:
        def __reduce__(self):
            raise KeyboardInterrupt("killed during the save")

    with pytest.raises(KeyboardInterrupt):
        _common.save_checkpoint({"epoch": 4, "x": Interrupted()}, path)
    assert torch.load(path, weights_only=False) == {"epoch": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    package = REPO / "training" / "astromorph_training"
    for module in package.glob("*.py"):
        if module.name != "_common.py":
            assert not re.search(r"torch\.save\(", module.read_text()), module.name


@pytest.mark.parametrize("model", MODELS)
def test_counts_must_be_positive(model, capsys):
    """``--epochs 0`` used to fall back to the default (a full run), ``--threads -1`` to fail
    inside torch with a traceback: both are refused by the parser, in one line."""
    from astromorph_training.__main__ import build_parser

    parser = build_parser(model)
    assert parser.parse_args([model, "train", "--epochs", "3", "--threads", "2"]).epochs == 3
    for bad in (["--epochs", "0"], ["--epochs", "-2"], ["--threads", "-1"], ["--threads", "0"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([model, "train", *bad])
        assert exc.value.code == 2
        assert f"argument {bad[0]}: must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("model", MODELS)
def test_smoke_root_ignores_out_dir(model, tmp_path, monkeypatch):
    """``--smoke`` writes below $TMPDIR/astromorph-smoke/MODEL/ whatever --out-dir says (the
    --help text): embedding's smoke runs used to write models/ and training/ into any
    --out-dir other than the repository itself, e.g. another checkout."""
    import argparse
    import importlib
    import tempfile

    from astromorph_training.__main__ import MODULES

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    module = importlib.import_module(f"astromorph_training.{MODULES[model]}")
    args = argparse.Namespace(smoke=True, out_dir=str(tmp_path / "checkout"))
    root = module._dirs(args)["root"] if hasattr(module, "_dirs") else module._root(args)
    assert Path(root) == tmp_path / "tmp" / "astromorph-smoke" / model


def test_gz2_smoke_never_initialises_from_the_out_dir(tmp_path):
    """``morphology-gz2 train --smoke`` (default ``--init morphology``) starts from its own
    smoke root's checkpoint, never the --out-dir repository's (it loaded
    ``<out-dir>/training/checkpoints/morphology/last.pt``: here an unreadable one)."""
    repo = tmp_path / "checkout"
    ckpt = repo / "training" / "checkpoints" / "morphology" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    env = dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-m", "astromorph_training", "morphology-gz2", "train",
                          "--smoke", "--data-dir", str(DATA_DIR), "--out-dir", str(repo)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "random initialisation" in run.stderr and str(ckpt) not in run.stderr


def test_each_model_offers_only_its_steps(capsys):
    """``morphology calibrate`` called morphology's ``calibrate`` helper with the command
    line arguments (TypeError traceback): optional steps are listed per model, and --help
    and the parser offer each model only the steps it has."""
    from astromorph_training.__main__ import EXTRA_STEPS, build_parser, steps_of

    assert steps_of("morphology") == ("train", "evaluate", "export", "build")
    assert steps_of("real-bogus")[-3:] == ("compare", "calibrate", "average")
    for model in MODELS:
        parser = build_parser(model)
        for step in ("compare", "calibrate", "average"):
            if step in EXTRA_STEPS.get(model, ()):
                assert parser.parse_args([model, step]).step == step
            else:
                with pytest.raises(SystemExit):
                    parser.parse_args([model, step])
                assert f"invalid choice: '{step}'" in capsys.readouterr().err


def test_command_line_errors_are_one_line(monkeypatch, capsys):
    """A wrong model, step or option value is one line on stderr (exit status 2), not the
    16-line usage; Ctrl-C during a step is one line (exit status 130), not a traceback."""
    from astromorph_training import __main__, morphology

    for argv in (["galaxy", "train"], ["morphology", "fit"], ["morphology", "train", "--epochs", "x"]):
        with pytest.raises(SystemExit) as exc:
            __main__.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error: argument" in err and "(see --help)" in err

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(morphology, "train", interrupted)
    with pytest.raises(SystemExit) as exc:
        __main__.main(["morphology", "train", "--smoke", "--data-dir", str(DATA_DIR)])
    assert exc.value.code == 130
    assert capsys.readouterr().err == ("morphology train: interrupted (rerun the same command: "
                                       "train resumes from its last saved epoch, except under "
                                       "--smoke)\n")


def _backups(folder, name="last.pt"):
    return sorted(folder.glob(f"{name}.*.bak"))


def test_restart_keeps_the_previous_checkpoints(tmp_path, caplog):
    """--restart set the previous last.pt aside, never overwrote it: the first epoch of the
    fresh run replaced it (and radio-morphology's best.pt) without a copy, so one mistyped
    --restart lost hours of training. Both are now renamed to ``<name>.<time>.bak``, logged
    with the new name; a second --restart keeps the first backup too."""
    import logging

    import torch

    _tiny_ssl(tmp_path / "e", 1)
    before = (tmp_path / "e" / "last.pt").read_bytes()
    with caplog.at_level(logging.WARNING):
        _tiny_ssl(tmp_path / "e", 1, restart=True)
    (kept,) = _backups(tmp_path / "e")
    assert kept.read_bytes() == before and str(kept) in caplog.text
    assert (tmp_path / "e" / "last.pt").read_bytes() != before  # the fresh run's
    _tiny_ssl(tmp_path / "e", 1, restart=True)
    assert len(_backups(tmp_path / "e")) == 2 and kept.read_bytes() == before

    _tiny_radio_fit(tmp_path / "r", 1)
    last, best = ((tmp_path / "r" / n).read_bytes() for n in ("last.pt", "best.pt"))
    _tiny_radio_fit(tmp_path / "r", 1, restart=True)
    assert [p.read_bytes() for p in _backups(tmp_path / "r")] == [last]
    assert [p.read_bytes() for p in _backups(tmp_path / "r", "best.pt")] == [best]
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=False)["state"]["epoch"] == 1


def test_morphology_restart_keeps_last_pt(tmp_path, monkeypatch):
    """``morphology train --restart`` (a smoke-size run outside --smoke, whose folder is a
    throwaway) keeps the previous last.pt; a rerun without --restart keeps a finished run."""
    import argparse

    from astromorph_training import morphology
    from astromorph_training.__main__ import build_parser

    load = morphology.load_dataset
    monkeypatch.setattr(morphology, "load_dataset",
                        lambda args: load(argparse.Namespace(**{**vars(args), "smoke": True})))
    args = build_parser("morphology").parse_args(
        ["morphology", "train", "--epochs", "1", "--data-dir", str(DATA_DIR),
         "--out-dir", str(tmp_path)])
    args.out_dir = tmp_path
    morphology.train(args)
    last = tmp_path / "training" / "checkpoints" / "morphology" / "last.pt"
    before = last.read_bytes()
    morphology.train(args)  # finished: kept as it is
    assert last.read_bytes() == before and not _backups(last.parent)
    # another network: refused in one line before its weights are loaded (it was a torch
    # size-mismatch traceback, the check coming after load_state_dict)
    with pytest.raises(SystemExit, match="has widths and stem"):
        morphology.train(argparse.Namespace(**{**vars(args), "widths": [8, 8, 8, 16]}))
    args.restart = True
    morphology.train(args)
    assert [p.read_bytes() for p in _backups(last.parent)] == [before]


def test_damaged_or_foreign_last_pt_is_one_line(tmp_path):
    """A truncated last.pt (a copy cut short, a full disk outside the atomic save) was a
    torch zip-reader traceback; a last.pt of another model a KeyError. Both now stop in one
    line naming the file and --restart (which keeps the file)."""
    import shutil

    _tiny_ssl(tmp_path / "e", 1)
    last = tmp_path / "e" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[:len(data) // 2])
    with pytest.raises(SystemExit) as exc:
        _tiny_ssl(tmp_path / "e", 2)
    message = exc.value.code
    assert "\n" not in message and str(last) in message and "--restart" in message
    _tiny_radio_fit(tmp_path / "r", 1)
    shutil.copy(tmp_path / "r" / "last.pt", last)
    with pytest.raises(SystemExit) as exc:
        _tiny_ssl(tmp_path / "e", 2)
    message = exc.value.code
    assert "\n" not in message and str(last) in message and "radio-morphology" in message
    assert "--restart" in message


def test_training_modules_read_checkpoints_in_one_place():
    """Every checkpoint is read through ``_common.load_checkpoint`` (one-line errors)."""
    import re

    for module in (REPO / "training" / "astromorph_training").glob("*.py"):
        if module.name != "_common.py":
            text = module.read_text()
            assert not re.search(r"\.load\((?!_state)[^)]*weights_only", text), module.name


@pytest.mark.parametrize("model", ["morphology", "morphology-gz2"])
def test_evaluate_records_the_checkpoints_seed(model, tmp_path):
    """``train --seed 3`` then ``evaluate`` without ``--seed``: the metrics recorded the
    evaluate command line's seed (0) as the training seed; now the checkpoint's."""
    env = dict(os.environ, ASTROMORPH_DATA=str(DATA_DIR), TMPDIR=str(tmp_path))
    for step, extra in (("train", ["--seed", "3"]), ("evaluate", [])):
        run = subprocess.run(
            [sys.executable, "-m", "astromorph_training", model, step, "--smoke",
             "--data-dir", str(DATA_DIR), *extra],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{model} {step} --smoke failed:\n{run.stderr[-3000:]}"
    (path,) = tmp_path.rglob(f"reports/{model}/metrics.json")
    assert json.loads(path.read_text())["training"]["seed"] == 3
