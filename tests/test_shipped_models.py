"""Every shipped model takes exactly what its own preprocessing makes from raw stamps."""
import numpy as np
import pytest

import astromorph
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
