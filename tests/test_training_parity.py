"""`load_onnx_weights` and each model's `architecture` / `from_architecture` on every kind of
network the training code can export (not only the shipped ones): random weights exported
to ONNX, the recorded architecture rebuilt, the weights read back, the same outputs.

Needs torch and the training/ subproject, not the real data; nothing trains.
"""
import importlib.util

import numpy as np
import pytest

pytestmark = [
    pytest.mark.training,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch"),
    pytest.mark.skipif(importlib.util.find_spec("astromorph_training") is None,
                       reason="needs the training/ subproject installed"),
    # export_onnx uses the TorchScript exporter on purpose (docs/training.md)
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]


def _randomised(module, seed):
    """``module`` with random weights and batch-norm statistics far from the defaults, so a
    normalisation read back wrongly (or left at its defaults) changes the outputs."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            elif name.endswith("running_mean"):
                tensor.copy_(0.3 * torch.randn(tensor.shape, generator=gen))
            elif tensor.ndim == 0:  # a calibration scalar (temperature, Platt a / b)
                tensor.copy_(0.5 + torch.rand((), generator=gen))
            else:
                tensor.copy_(0.2 * torch.randn(tensor.shape, generator=gen))
    return module.eval()


def _cases():
    from astromorph_training import embedding, gz2, morphology, radio, realbogus

    morph = [("morphology", {"network": "MorphologyNet", "widths": [16, 24, 24, 32],
                             "stem": stem, "classes": 5, "tta": tta})
             for stem, tta in (("conv-pool", 1), ("strided", 2), ("stride3", 8))]
    return [
        *[(morphology, *case, (3, 96 if case[1]["stem"] == "stride3" else 64)) for case in morph],
        (gz2, "morphology-gz2", {"network": "GZ2Net", "widths": [16, 24, 24, 32],
                                 "stem": "conv-pool", "tta": 4}, (3, 64)),
        (radio, "radio-morphology", {"network": "RadioNet", "options": {"stage4": 0},
                                     "members": 1}, (1, 128)),
        (radio, "radio-morphology", {"network": "RadioNet",
                                     "options": {"stage4": 64, "stage0": 8}, "members": 2},
         (1, 128)),
        (radio, "radio-morphology", {"network": "GroupNet",
                                     "options": {"kind": "d4", "widths": [2, 2, 2, 2, 2],
                                                 "first_pool": 4},
                                     "members": 1}, (1, 128)),
        (embedding, "embedding", {"network": "Encoder", "widths": [8, 16, 16, 32], "tta": 4,
                                  "stages": True, "features": 64, "dim": 12}, (3, 64)),
        (realbogus, "real-bogus", {"network": "RBNet", "members": 3}, (3, 63)),
    ]


@pytest.mark.parametrize("case", range(9))
def test_every_architecture_round_trips(case, tmp_path):
    import torch
    from astromorph_training._common import export_onnx, load_onnx_weights

    module_of, name, arch, (channels, size) = _cases()[case]
    trained = _randomised(module_of.from_architecture(arch), seed=case)
    assert module_of.architecture(trained) == arch  # what export writes into the card
    x = np.random.default_rng(case).random((3, channels, size, size), dtype=np.float32)
    export_onnx(trained, x[:2], tmp_path / "model.onnx")
    rebuilt = load_onnx_weights(module_of.from_architecture(arch), tmp_path / "model.onnx",
                                np.zeros((2, channels, size, size), np.float32))
    with torch.no_grad():
        want = trained(torch.from_numpy(x)).numpy()
        got = rebuilt(torch.from_numpy(x)).numpy()
    assert np.ptp(want) > 0
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_another_architecture_is_refused(tmp_path):
    """Weights of one network never load silently into another: more members, or another
    width, are refused naming what does not match."""
    from astromorph_training import radio, realbogus
    from astromorph_training._common import export_onnx, load_onnx_weights

    one = _randomised(realbogus.from_architecture({"network": "RBNet", "members": 1}), 0)
    x = np.zeros((2, 3, 63, 63), np.float32)
    export_onnx(one, x, tmp_path / "rb.onnx")
    with pytest.raises(ValueError, match="convolutions"):
        load_onnx_weights(realbogus.from_architecture({"network": "RBNet", "members": 2}),
                          tmp_path / "rb.onnx", x)
    arch = {"network": "RadioNet", "options": {"stage4": 0}, "members": 1}
    small = _randomised(radio.from_architecture(arch), 1)
    x = np.zeros((2, 1, 128, 128), np.float32)
    export_onnx(small, x, tmp_path / "radio.onnx")
    with pytest.raises(ValueError, match="shape|convolutions"):
        load_onnx_weights(radio.from_architecture(dict(arch, options={"stage4": 64})),
                          tmp_path / "radio.onnx", x)
