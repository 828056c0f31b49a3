"""Shared fixtures: tiny ONNX models built with onnx.helper, and synthetic data."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

import astromorph
from tiny_models import make_card, tiny_classifier_onnx

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("ASTROMORPH_DATA", REPO.parent / "shared" / "data"))


def without_extend(blob):
    """The FITS bytes ``blob`` with its primary header's EXTEND card blanked (80 spaces),
    as a writer that gives no EXTEND card leaves it (astropy adds one to a file that has
    extensions); the layout is unchanged."""
    at = next(i for i in range(0, 2880, 80) if blob[i:i + 8] == b"EXTEND  ")
    return blob[:at] + b" " * 80 + blob[at + 80:]


def traced_peak(run):
    """``run()`` and the peak of the memory traced while it ran (bytes)."""
    import tracemalloc

    tracemalloc.start()
    try:
        out = run()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


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


def assert_scores(actual, expected, *, rtol=1e-7, atol=0.0, masked=None, err_msg=""):
    """Assert that ``actual`` (a model output: a column of a returned table, which can be
    masked) holds ``expected`` and is masked exactly where the test says.

    ``np.testing.assert_allclose`` and ``assert_array_equal`` skip masked elements: a column
    whose rows all came back unread (masked) passes any comparison, with a reference that
    is masked too (another run of the same code) as well. Here the masks are checked
    first: no element of ``actual``, nor of ``expected`` where it is a masked array, may be
    masked unless ``masked`` names it (row indices, a boolean array or a slice; masked rows
    of a 2-D output are masked whole). Then the values not masked are compared: exactly
    (as by ``assert_array_equal``, NaN equal to NaN) with ``rtol=0`` and ``atol=0``, else by
    ``assert_allclose`` with the tolerances given (numpy's defaults).
    """
    mask = np.ma.getmaskarray(actual)
    want = np.zeros(mask.shape, bool)
    if masked is not None:
        want[masked] = True
    np.testing.assert_array_equal(mask, want, err_msg=f"masked elements {err_msg}")
    if np.ma.isMaskedArray(expected):
        np.testing.assert_array_equal(
            np.broadcast_to(np.ma.getmaskarray(expected), want.shape), want,
            err_msg=f"masked elements of the expected values {err_msg}")
    keep = ~want
    data = np.ma.getdata(actual)[keep]
    ref = np.broadcast_to(np.ma.getdata(expected), want.shape)[keep]
    if rtol == 0 and atol == 0:
        np.testing.assert_array_equal(data, ref, err_msg=err_msg)
    else:
        np.testing.assert_allclose(data, ref, rtol=rtol, atol=atol, err_msg=err_msg)


def assert_same_values(out, ref, names):
    """The columns ``names`` of table ``out`` hold ``ref``'s values and masks, bit for bit
    (the values under the masks too)."""
    for name in names:
        np.testing.assert_array_equal(np.ma.getmaskarray(out[name]),
                                      np.ma.getmaskarray(ref[name]), err_msg=name)
        np.testing.assert_array_equal(np.ma.getdata(out[name]), np.ma.getdata(ref[name]),
                                      err_msg=name)


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
