"""Tiny ONNX classifiers and their cards, built with onnx.helper.

Kept apart from ``conftest.py`` so that scripts run without pytest (``benchmarks/``) can
build them too; ``conftest`` re-exports every name here.
"""
import hashlib
import json
from pathlib import Path

import numpy as np

__all__ = ["sha256", "tiny_classifier_onnx", "make_card", "tiny_model_with_variants"]


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


def tiny_model_with_variants(folder, *, labels=("a", "b", "c"), spatial_int8=False):
    """Write a 3-channel tiny model into ``folder`` with an int8 variant (``spatial_int8``:
    a graph of its own, so that it gives other probabilities) and a single-band graph,
    and its ``card.json``; return the card."""
    tiny_classifier_onnx(folder / "model.onnx", channels=3, labels=labels)
    tiny_classifier_onnx(folder / "model.int8.onnx", channels=3, labels=labels,
                         spatial=spatial_int8)
    tiny_classifier_onnx(folder / "model.grey.onnx", channels=1, labels=labels)
    card = make_card(folder / "model.onnx", channels=3, labels=labels,
                     single_band="replicate",
                     variants={"int8": {"file": "model.int8.onnx",
                                        "sha256": sha256(folder / "model.int8.onnx")}},
                     single_band_graph={"file": "model.grey.onnx",
                                        "sha256": sha256(folder / "model.grey.onnx"),
                                        "input_shape": [1, 4, 4]})
    (folder / "card.json").write_text(json.dumps(card))
    return card
