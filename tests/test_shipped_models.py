"""Every shipped model takes exactly what its own preprocessing makes from raw stamps."""
from pathlib import Path

import numpy as np
import pytest

import astromorph
from conftest import check_parity_reference
from astromorph._adapters import RawStamps, model_family, prepare

RNG = np.random.default_rng(0)


def raw_inputs(family):
    """Raw stamps of every kind the family accepts."""
    if family == "optical":
        yield RawStamps("colour", RNG.integers(0, 255, (2, 423, 423, 3), dtype=np.uint8))
        yield RawStamps("bands", RNG.normal(0, 0.05, (2, 3, 64, 64)).astype(np.float32),
                        bands=("g", "r", "i"))
        yield RawStamps("bands", RNG.normal(0, 0.05, (2, 1, 64, 64)).astype(">f4"))
    elif family == "radio":
        yield RawStamps("colour", RNG.integers(0, 255, (2, 300, 300, 3), dtype=np.uint8))
        yield RawStamps("bands", RNG.normal(0, 1.5e-4, (2, 1, 300, 300)), pixel_scale=1.8)
    elif family == "triplet":
        yield RawStamps("triplet", RNG.normal(100, 10, (2, 3, 63, 63)))
    else:  # pragma: no cover
        raise AssertionError(family)


@pytest.mark.parametrize("name", astromorph.list_models())
def test_preprocessing_feeds_the_model(name):
    model = astromorph.load_model(name, providers="cpu")
    for raw in raw_inputs(model_family(model.card)):
        x, flags = prepare(model, raw)
        c, h, w = model.input_shape
        # one plane for a single band where the card says Model.predict replicates it
        channels = (c, 1) if model.card["input"].get("single_band") == "replicate" else (c,)
        assert x.shape[0] == 2 and x.shape[2:] == (h, w) and x.shape[1] in channels, \
            (name, raw.kind, x.shape)
        if raw.kind == "bands" and raw.data.shape[1] == 1:
            assert x.shape[1] == channels[-1]
        assert x.dtype == np.float32 and np.isfinite(x).all()
        out = model.predict(x)
        for value in out.values():
            assert len(value) == 2 and np.isfinite(value).all()


@pytest.mark.parametrize("name", [n for n in astromorph.list_models()
                                  if astromorph.model_card(n).get("single_band_graph")])
def test_single_band_graph_equals_replicated_band(name):
    """Where a card lists a single-band graph, one band through it gives what the main file
    gives for the band copied into every channel (stated tolerance 1e-5, as at export)."""
    model = astromorph.load_model(name, providers="cpu")
    c, h, w = model.input_shape
    band = RNG.random((8, 1, h, w), dtype=np.float32)
    full = model.predict(np.repeat(band, c, axis=1))
    assert not model._single_band
    grey = model.predict(band)
    assert model._single_band
    for key in full:
        np.testing.assert_allclose(grey[key], full[key], atol=1e-5, rtol=0)


# ------------------------------------------------- training data path == inference preprocessing
def _training_module(name):
    pytest.importorskip("torch")
    import importlib
    import sys

    from conftest import REPO
    try:
        return importlib.import_module(f"astromorph_training.{name}")
    except ImportError:
        sys.path.insert(0, str(REPO / "training"))
        return importlib.import_module(f"astromorph_training.{name}")


def _jpeg_files(tmp_path, n, side, suffix):
    """Galaxy-like colour JPEGs (a blob on a noisy sky), written and read back as files."""
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:side, :side] - side / 2
    paths = []
    for i in range(n):
        r = np.hypot(yy * (1 + 0.3 * i), xx) / (8 + 6 * i)
        img = 200 * np.exp(-r)[..., None] * np.array([1.0, 0.8 - 0.1 * i, 0.6]) \
            + rng.normal(20, 6, (side, side, 3))
        path = tmp_path / f"g{i}{suffix}"
        pil.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def _inference_input(name, paths):
    """What `predict_files` feeds the shipped model for these picture files."""
    from astromorph._readers._pictures import read_picture

    model = astromorph.load_model(name, providers="cpu")
    raw = np.stack([read_picture(p)[0].data for p in paths])
    x, flags = prepare(model, RawStamps("colour", raw))
    assert not flags.any()
    return model, x


@pytest.mark.parametrize("name, side, suffix", [("morphology", 423, ".jpeg"),
                                                ("morphology-gz2", 424, ".jpg")])
def test_optical_training_stamps_are_the_inference_input(tmp_path, name, side, suffix):
    """The arrays the training code caches (``_preprocess_files``, shared by morphology and
    morphology-gz2) are what inference makes of the same files: the validation / test stamps
    exactly, and the centre of the 1.5x-field augmentation stamps to float16 rounding. A
    crop, size or stretch changed on the training side only fails here (the torch-vs-ONNX
    parity tests feed both networks the same array and cannot see it)."""
    morphology = _training_module("morphology")
    paths = _jpeg_files(tmp_path, 3, side, suffix)
    stamps, big = morphology._preprocess_files(paths)
    model, x = _inference_input(name, paths)
    np.testing.assert_allclose(stamps, x, atol=1e-6, rtol=0)
    o = (big.shape[-1] - x.shape[-1]) // 2
    np.testing.assert_allclose(big[:, :, o:o + x.shape[-1], o:o + x.shape[-1]].astype(np.float32),
                               x, atol=2e-3, rtol=0)


def test_embedding_training_stamps_are_the_inference_input(tmp_path):
    """The embedding's training and evaluation stamps of GZ1 cutouts equal the inference input;
    its 96-pixel training cache is the same field at the same scale (8-bit rounding)."""
    embedding = _training_module("embedding")
    paths = _jpeg_files(tmp_path, 3, 423, ".jpeg")
    _, x = _inference_input("embedding", paths)
    np.testing.assert_allclose(embedding.preprocess_files(paths, "gz1"), x, atol=1e-6, rtol=0)
    big = embedding._to_uint8(embedding.preprocess_files(paths, "gz1", size=embedding.CACHE_SIZE))
    np.testing.assert_allclose(embedding.centre(big), x, atol=1.0 / 255, rtol=0)


def test_radio_and_realbogus_training_use_the_inference_functions():
    """radio-morphology: the training augmentation at the identity gives the card's
    preprocessing function's output; real-bogus: simulations go through the card's function."""
    torch = pytest.importorskip("torch")

    from astromorph import preprocessing

    radio = _training_module("radio")
    realbogus = _training_module("realbogus")
    assert realbogus.preprocess_triplet is preprocessing.preprocess_triplet
    card = astromorph.model_card("radio-morphology")
    assert card["input"]["preprocessing"] == "astromorph.preprocessing.preprocess_dataset_image"
    images = RNG.integers(0, 256, (3, 300, 300), dtype=np.uint8)
    images[:, :100] = 0  # thresholded sky, as in the data set
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stamp = radio._stamp_from_full(torch.from_numpy(radio._full_field(images)),
                                       radio._identity_theta(len(images))).numpy()
    finally:
        torch.set_num_threads(threads)
    # compared before the square root (as train does); bilinear sampling in float32 next to
    # sharp pixel steps rounds to ~3e-5, far below one 8-bit level (3.9e-3)
    np.testing.assert_allclose(stamp ** 2, preprocessing.preprocess_dataset_image(images) ** 2,
                               atol=1e-4, rtol=0)


REPORTS = Path(__file__).resolve().parents[1] / "training" / "reports"


@pytest.mark.parametrize("name", astromorph.list_models())
def test_shipped_onnx_reproduces_the_trained_torch_model(name):
    """Torch/ONNX parity of the shipped weights without the (uncommitted) checkpoint: `export`
    saves the trained torch model's outputs on redistributable synthetic inputs
    (``training/reports/<name>/parity_reference.npz``, with the sha256 of the file they belong
    to); the shipped file must give the same, within the tolerance recorded there (1e-5
    absolute, 1e-4 relative: float32 round-off of two implementations of one graph). The
    training smoke test checks the same on the file its export writes."""
    path = REPORTS / name / "parity_reference.npz"
    if not path.is_file():
        pytest.skip(f"{name}: no parity reference (written by `export`; the checkpoint of the "
                    "shipped version was not kept, so it is written at the next export; "
                    "test_shipped_onnx_is_the_training_code_network checks parity meanwhile)")
    check_parity_reference(path, name)


def parity_inputs(family):
    """Network inputs as `export` makes them for its parity check: astromorph's preprocessing
    (the functions training imports) of redistributable synthetic raw stamps."""
    from astromorph.preprocessing import (preprocess_colour_cutout, preprocess_dataset_image,
                                          preprocess_triplet)
    from astromorph_training._common import parity_raw_inputs

    if family == "optical":
        return preprocess_colour_cutout(parity_raw_inputs("colour"))
    if family == "radio":
        return preprocess_dataset_image(parity_raw_inputs("radio"))
    return preprocess_triplet(parity_raw_inputs("triplet"))[0]


@pytest.mark.parametrize("name", astromorph.list_models())
def test_shipped_onnx_is_the_training_code_network(name):
    """Parity of each shipped file with the training code, without its checkpoint: the card's
    ``training.architecture`` built by the model's training module, with the weights read back
    from the shipped file (`astromorph_training._common.load_onnx_weights`), must give what
    astromorph gives with the file, on the same preprocessed inputs, within 1e-5 absolute and
    1e-4 relative (float32 round-off of two implementations of one graph; measured at most
    4.2e-7). A change to a network class, to a calibration wrapper or to the orientations
    averaged that the file does not have fails here (see the next test)."""
    pytest.importorskip("torch")
    common = pytest.importorskip("astromorph_training._common")
    module = common.shipped_torch_model(name)
    x = parity_inputs(model_family(astromorph.model_card(name)))
    diff = common.check_parity(module, x, name, atol=1e-5, rtol=1e-4)
    assert diff < 1e-5


def test_training_code_parity_can_fail():
    """The check above fails for an architecture the file does not have: another width is
    refused when the weights are read, and another number of averaged orientations (the same
    weights) gives other outputs."""
    pytest.importorskip("torch")
    common = pytest.importorskip("astromorph_training._common")
    from astromorph_training import gz2, morphology

    card = astromorph.model_card("morphology")
    arch = dict(card["training"]["architecture"], widths=[32, 48, 64, 128])
    with pytest.raises(ValueError, match="shape"):
        common.load_onnx_weights(morphology.from_architecture(arch),
                                 astromorph.load_model("morphology").path,
                                 np.zeros((2, 3, 64, 64), np.float32))
    card = astromorph.model_card("morphology-gz2")
    arch = dict(card["training"]["architecture"], tta=1)
    module = common.load_onnx_weights(gz2.from_architecture(arch),
                                      astromorph.load_model("morphology-gz2").path,
                                      np.zeros((2, 3, 64, 64), np.float32))
    with pytest.raises(AssertionError):
        common.check_parity(module, parity_inputs("optical"), "morphology-gz2", atol=1e-5,
                            rtol=1e-4)
