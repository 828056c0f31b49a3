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


def test_empty_astromorph_data_means_the_default_folder(tmp_path, monkeypatch):
    """``ASTROMORPH_DATA=""`` (set but empty, as ``export ASTROMORPH_DATA=`` leaves it) and an
    empty ``--data-dir`` resolve to the default ``../shared/data`` beside the repository, not
    to the working directory (``Path("")`` is ``.``)."""
    from astromorph_training import _common

    (tmp_path / "repo").mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setattr(_common, "repo_root", lambda: tmp_path / "repo")
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setenv("ASTROMORPH_DATA", "")
    default = (tmp_path / "shared" / "data").resolve()
    assert _common.resolve_data_dir() == default
    assert _common.resolve_data_dir("") == default
    monkeypatch.setenv("ASTROMORPH_DATA", str(tmp_path / "elsewhere"))
    assert _common.resolve_data_dir() == (tmp_path / "elsewhere").resolve()


def test_onnx_file_with_a_weight_the_module_does_not_take_is_refused(tmp_path):
    """`load_onnx_weights` reads back a small exported network (a convolution with its batch
    normalisation folded in, and a linear layer), but refuses the same file with one more
    initializer that no module weight takes: the file and the module are not the same
    network, even though every module weight was set."""
    import onnx
    import torch
    from onnx import numpy_helper

    from astromorph_training import _common

    def network():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, bias=False), torch.nn.BatchNorm2d(2),
                                   torch.nn.Flatten(), torch.nn.Linear(8, 2)).eval()

    torch.manual_seed(0)
    trained = network()
    example = np.zeros((2, 1, 4, 4), np.float32)
    path = _common.export_onnx(trained, example, tmp_path / "m.onnx")
    x = torch.from_numpy(np.random.default_rng(0).random((3, 1, 4, 4), dtype=np.float32))
    torch.manual_seed(1)
    with torch.no_grad():
        np.testing.assert_allclose(_common.load_onnx_weights(network(), path, example)(x),
                                   trained(x), atol=1e-6)
    model = onnx.load(str(path))
    model.graph.initializer.append(numpy_helper.from_array(np.ones(2, np.float32), "extra"))
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "extra.onnx"))
    with pytest.raises(ValueError, match=r"in the file only \['extra'\], in the module only \[\]"):
        _common.load_onnx_weights(network(), tmp_path / "extra.onnx", example)


def test_check_parity_defaults_to_the_documented_tolerance(monkeypatch):
    """Without ``atol``/``rtol``, `check_parity` holds the torch module and the ONNX file to
    the tolerance docs/training.md states for the export and shipped-model parity checks
    (1e-5 absolute, 1e-4 relative; `write_parity_reference`'s defaults): a difference of
    5e-6 passes, 5e-5 on an output of 0 or 5e-4 on an output of 1 fails."""
    import re
    from pathlib import Path

    import astromorph
    import torch

    from astromorph_training import _common

    docs = (Path(__file__).parents[1] / "docs" / "training.md").read_text()
    stated = set(re.findall(r"tolerance (\S+) absolute, (\S+) relative", docs))
    assert stated == {("1e-5", "1e-4")}
    module = torch.nn.Linear(2, 2)
    with torch.no_grad():
        module.weight.zero_()
        module.bias.copy_(torch.tensor([0.0, 1.0]))
    x = np.zeros((3, 2), np.float32)

    class File:
        """What `astromorph.load_model` gives: the module's outputs, off by ``delta``."""
        output_names = ["y"]
        delta = np.zeros(2, np.float32)

        def predict(self, x, progress):
            return {"y": np.tile(np.float32([0.0, 1.0]) + self.delta, (len(x), 1))}

    file = File()
    monkeypatch.setattr(astromorph, "load_model", lambda name, providers: file)
    file.delta = np.float32([5e-6, 0.0])
    assert _common.check_parity(module, x, "m") == pytest.approx(5e-6, rel=1e-3)
    for delta in ([5e-5, 0.0], [0.0, 5e-4]):  # past atol; past atol + rtol * 1
        file.delta = np.float32(delta)
        with pytest.raises(AssertionError):
            _common.check_parity(module, x, "m")
        _common.check_parity(module, x, "m", atol=1e-3, rtol=1e-3)
