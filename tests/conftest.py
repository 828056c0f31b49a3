"""Shared fixtures: tiny ONNX models built with onnx.helper, and synthetic data."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

import astromorph

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("ASTROMORPH_DATA", REPO.parent / "shared" / "data"))


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tiny_classifier_onnx(path, *, channels=2, size=4, labels=("a", "b"), spatial=False):
    """Write an ONNX graph: per-channel spatial mean -> softmax, output ``probabilities``.

    With ``channels == len(labels)`` the most probable class is the channel
    with the largest mean, which makes outputs easy to predict in tests.
    With ``spatial=True`` the logits are instead fixed random pixel weightings
    of the whole stamp (one full-size convolution), so that every stamp,
    single-band (replicated) ones included, gets its own probabilities.
    """
    import onnx
    from onnx import TensorProto, helper

    k = len(labels)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, size, size])
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", k])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
        helper.make_node("Softmax", ["mean"], ["probabilities"], axis=1),
    ]
    if spatial:
        w = np.random.default_rng(0).normal(0, 4.0 / size, (k, channels, size, size))
        weight = helper.make_tensor("w", TensorProto.FLOAT, list(w.shape),
                                    w.astype(np.float32).ravel().tolist())
        nodes = [helper.make_node("Conv", ["input", "w"], ["conv"]),
                 helper.make_node("Flatten", ["conv"], ["logits"], axis=1),
                 helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
        inits = [weight]
    elif channels != k:
        weight = helper.make_tensor("w", TensorProto.FLOAT, [channels, k],
                                    np.ones((channels, k), np.float32).ravel().tolist())
        nodes = [nodes[0], helper.make_node("MatMul", ["mean", "w"], ["logits"]),
                 helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
        inits = [axes, weight]
    else:
        inits = [axes]
    graph = helper.make_graph(nodes, "tiny", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_card(onnx_path, *, name="tiny", channels=2, size=4, labels=("a", "b"),
              single_band="invalid", **extra):
    card = {
        "name": name, "version": "0.0.1", "task": "classification",
        "summary": "test model: softmax of per-channel means",
        "column_prefix": "tiny",
        "input": {"name": "input", "shape": [channels, size, size], "dtype": "float32",
                  "channels": [f"c{i}" for i in range(channels)], "single_band": single_band,
                  "preprocessing": None, "normalisation": "none",
                  "angular_size": {"kind": "fixed", "pixel_scale_arcsec": 1.0, "size_pix": size}},
        "outputs": [{"name": "probabilities", "kind": "probabilities", "labels": list(labels)}],
        "training": {"data": "none (test fixture)"},
        "metrics": {},
        "sha256": sha256(onnx_path),
    }
    card.update(extra)
    return card


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A models directory holding one model, ``tiny``; registry pointed at it."""
    root = tmp_path / "models"
    d = root / "tiny"
    d.mkdir(parents=True)
    tiny_classifier_onnx(d / "model.onnx")
    (d / "card.json").write_text(json.dumps(make_card(d / "model.onnx")))
    return root


@pytest.fixture
def tiny_registry(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ASTROMORPH_MODELS_DIR", str(tiny_model_dir))
    astromorph.clear_session_cache()
    yield tiny_model_dir
    astromorph.clear_session_cache()


def check_parity_reference(path, model):
    """Run a ``parity_reference.npz`` written by ``astromorph_training`` ``export`` through the
    ONNX file it names (``model``: name or folder, loaded by `astromorph.load_model`, which
    checks the file against its card): the file must be the one the reference belongs to and
    reproduce the torch outputs within the tolerance stored there."""
    with np.load(path) as f:
        ref = {k: f[k] for k in f.files}
    loaded = astromorph.load_model(model, providers="cpu")
    assert str(ref["onnx_sha256"]) == loaded.sha256, \
        f"{path} belongs to another file than {model}'s: run `export` again"
    assert len(ref["input"]) >= 4 and np.ptp(ref["output"]) > 0  # a real comparison
    out = loaded.predict(ref["input"].astype(np.float32), progress=False)
    np.testing.assert_allclose(out[str(ref["output_name"])], ref["output"],
                               atol=float(ref["atol"]), rtol=float(ref["rtol"]))


def shipped_torch_module(name):
    """The training code's torch module of shipped model ``name`` with the weights read back
    from the shipped ONNX file (`astromorph_training._common.shipped_torch_model`): what the
    parity tests compare the file with where the training checkpoint is not there (CI)."""
    pytest.importorskip("torch")
    common = pytest.importorskip("astromorph_training._common")
    return common.shipped_torch_model(name)


def cuda_available():
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


requires_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"no real data at {DATA_DIR}")
