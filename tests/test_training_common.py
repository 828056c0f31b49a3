"""The shared helpers of the training subproject (``astromorph_training._common``), called
directly: what decides the numbers, cards and checkpoints of a run, found by mutation testing
to be unchecked by the pipeline tests.

Needs torch and the training/ subproject, not the real data.
"""
import argparse
import importlib.util
import os
import random

import numpy as np
import pytest

pytestmark = [
    pytest.mark.training,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch"),
    pytest.mark.skipif(importlib.util.find_spec("astromorph_training") is None,
                       reason="needs the training/ subproject installed"),
]


def test_changed_split_source_is_refused_without_new_split_args():
    """`check_split_source` called without ``args`` (no ``--new-split``) refuses other rows:
    the refusal is the default, not only what the command line's ``--new-split`` turns off."""
    from astromorph_training import _common

    expected = _common.split_fingerprint(["a", "b"])
    assert _common.check_split_source("labels.csv", expected, ["a", "b"]) == expected
    with pytest.raises(_common.SplitChanged, match="--new-split"):
        _common.check_split_source("labels.csv", expected, ["b", "a"])
    with pytest.raises(_common.SplitChanged):
        _common.check_split_source("labels.csv", expected, ["b", "a"],
                                   args=argparse.Namespace())


def test_restart_of_a_throwaway_run_trains_afresh(tmp_path):
    """``--restart`` of a ``--smoke`` run (``keep=False``) starts afresh: it returns no state
    even though last.pt is still there, and sets nothing aside in the throwaway folder."""
    from astromorph_training import _common

    last = tmp_path / "last.pt"
    _common.save_checkpoint({"epoch": 3}, last, model="embedding")
    assert _common.resume_checkpoint(last, model="embedding", restart=True, keep=False) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert _common.resume_checkpoint(last, model="embedding")["epoch"] == 3


def test_checkpoint_without_a_model_record_resumes(tmp_path):
    """A checkpoint saved without `MODEL_KEY` (written before the key existed) is resumed as
    the model asked for; only a checkpoint naming another model is refused."""
    from astromorph_training import _common

    last = tmp_path / "last.pt"
    _common.save_checkpoint({"epoch": 2}, last)
    assert _common.resume_checkpoint(last, model="morphology")["epoch"] == 2
    _common.save_checkpoint({"epoch": 2}, last, model="embedding")
    with pytest.raises(SystemExit, match="a embedding checkpoint, not one of morphology"):
        _common.resume_checkpoint(last, model="morphology")


def test_train_command_spells_out_tuple_options():
    """A recorded option kept as a tuple (``"(32, 48)"``) is spelled as separate values on the
    card's command line, as a list is; ``--widths (32, 48)`` would not parse."""
    from astromorph_training._common import train_command

    assert train_command("morphology", {"widths": "(32, 48, 80, 160)"}, ["widths"]) == \
        "python -m astromorph_training morphology train --widths 32 48 80 160"


def test_recorded_seed_of_a_checkpoint_or_of_its_options():
    """The seed evaluate records is read from a checkpoint's ``args`` or from such options
    themselves (gz2 passes its stored recipe); a record without one gives None."""
    from astromorph_training._common import recorded_seed

    assert recorded_seed({"args": {"seed": "3"}, "epoch": 1}) == 3
    assert recorded_seed({"seed": "4"}) == 4
    assert recorded_seed({"args": {}}) is None


def test_set_seed_seeds_python_numpy_and_torch():
    """`set_seed` makes Python's, numpy's global and torch's random streams repeat: a training
    run's draws from any of them are the same for the same ``--seed``."""
    import torch

    from astromorph_training._common import set_seed

    def draws():
        return random.random(), np.random.random(), float(torch.rand(1))

    set_seed(5)
    first = draws()
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    set_seed(5)
    assert draws() == first


def test_softmax_of_large_logits_is_finite():
    """Logits in the hundreds (an over-confident network before calibration) give finite
    probabilities, not NaN from exp overflow."""
    from astromorph_training._common import softmax

    p = softmax([[1000.0, 0.0], [0.0, -1000.0], [800.0, 800.0]])
    np.testing.assert_allclose(p, [[1, 0], [1, 0], [0.5, 0.5]], atol=1e-12)


def test_temperature_fit_survives_a_probability_that_underflows():
    """One image whose true class gets probability 0 in float64 (a logit gap of 2000) does not
    make the negative log-likelihood infinite at every temperature, which left the fit
    wherever the optimiser started: the temperature is that of the other images."""
    from scipy.special import softmax as reference

    from astromorph_training._common import fit_temperature

    rng = np.random.default_rng(4)
    z = rng.normal(0, 2, (300, 3))
    y = np.array([rng.choice(3, p=p) for p in reference(z / 0.5, axis=1)])
    t = fit_temperature(z, y)
    z_out, y_out = np.vstack([z, [[2000.0, 0.0, 0.0]]]), np.append(y, 1)
    assert fit_temperature(z_out, y_out) == pytest.approx(t, rel=1e-3)


def test_error_gallery_shows_the_most_confident_errors_first(tmp_path, monkeypatch):
    """The gallery shows at most ``n`` misclassifications, most confident first, each titled
    true -> predicted (probability)."""
    import matplotlib

    matplotlib.use("Agg")
    from astromorph_training import _common

    shown = {}
    monkeypatch.setattr(_common, "save_figure",
                        lambda fig, path, dpi: shown.setdefault(
                            "titles", [ax.get_title() for ax in fig.axes if ax.get_title()]))
    labels = np.zeros(6, int)
    confidence = np.array([0.6, 0.9, 0.7, 0.95, 0.8, 0.3])  # class 1, wrong but for the last
    probs = np.stack([1 - confidence, confidence], axis=1)
    images = np.zeros((6, 1, 4, 4), np.float32)
    _common.plot_error_gallery(images, probs, labels, ["a", "b"], tmp_path / "g.png", n=3)
    assert shown["titles"] == ["a -> b (0.95)", "a -> b (0.90)", "a -> b (0.80)"]


def test_written_card_names_its_file_and_is_readable_by_all(tmp_path):
    """`write_card` records the model's name, the sha256 and size of its model.onnx, and
    leaves the card readable by every user (it ships in the wheel), not mkstemp's 0600."""
    import hashlib
    import json

    from astromorph_training import _common

    folder = _common.model_dir("morphology", tmp_path)
    (folder / "model.onnx").write_bytes(b"not really onnx")
    path = _common.write_card("morphology", {"name": "other", "task": "x"}, root=tmp_path)
    card = json.loads(path.read_text())
    assert card["name"] == "morphology" and card["task"] == "x"
    assert card["sha256"] == hashlib.sha256(b"not really onnx").hexdigest()
    assert card["file_size_bytes"] == len(b"not really onnx")
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.onnx"]


def test_exported_graph_runs_any_batch_size(tmp_path):
    """`export_onnx` gives the inputs and outputs a dynamic batch axis, and `run_onnx` runs
    every row, in batches that do not divide the input, and an empty input."""
    import onnx
    import torch

    from astromorph_training import _common

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    path = _common.export_onnx(module, np.zeros((2, 1, 2, 2), np.float32), tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    assert [v.type.tensor_type.shape.dim[0].dim_param for v in (*graph.input, *graph.output)] \
        == ["batch", "batch"]
    x = np.random.default_rng(0).random((7, 1, 2, 2), dtype=np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_common.run_onnx(path, x, batch=3), expected, atol=1e-6)
    empty = _common.run_onnx(path, x[:0])
    assert empty.shape == (0, 2) and empty.dtype == np.float32
