"""`astromorph._adapters.prepare` for the optical family: which planes are g, r and i, and
the flags it sets (BLANK strictly past its threshold, BAD_INPUT for a band without a valid
pixel, EXTRAPOLATED by the field's width on the cropped stamp). Each test here failed on a
hand-made mutant of `_adapters.py` that the rest of the suite let through."""
import numpy as np
import pytest

import astromorph
from astromorph import Flag
from astromorph import preprocessing as pp
from astromorph._adapters import BLANK_THRESHOLD, RawStamps, prepare


@pytest.fixture(scope="module")
def morphology():
    return astromorph.load_model("morphology", providers="cpu")


def _bands(n=2, size=64, seed=0):
    """``(n, 3, size, size)`` float32 g, r, i flux stamps: a galaxy on noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] - size // 2
    galaxy = 2 * np.exp(-(x ** 2 + 2 * y ** 2) / 30)
    return (rng.normal(0.02, 0.01, (n, 3, size, size))
            + galaxy * np.array([0.5, 1.0, 1.4])[:, None, None]).astype(np.float32)


def _bit(flags, flag):
    return (np.asarray(flags) & int(flag)) != 0


def test_blank_is_strictly_past_the_threshold(morphology):
    """`Flag.BLANK` for more than `BLANK_THRESHOLD` of the pixels invalid: exactly 5 per
    cent (20 of each band's 400) is not blank, 21 is."""
    assert BLANK_THRESHOLD == 0.05
    data = _bands(n=2, size=20)
    data[0, :, 0, :] = np.nan  # 20 pixels of each band
    data[1, :, 0, :] = np.nan
    data[1, :, 1, 0] = np.nan  # 21
    raw = RawStamps("bands", data, bands=tuple("gri"))
    _, flags = prepare(morphology, raw)
    assert list(_bit(flags, Flag.BLANK)) == [False, True]
    # judged on the three bands together (plane -1), the measure the reasons word
    assert raw.blank is not None
    assert raw.blank.row(1) == pytest.approx((63 / 1200, -1, False))


def test_a_band_without_a_valid_pixel_is_bad_input(morphology):
    """One band with no valid pixel (g all NaN here) leaves nothing to score: BAD_INPUT, even
    though r and i are clean."""
    data = _bands(n=2)
    data[1, 0] = np.nan
    _, flags = prepare(morphology, RawStamps("bands", data, bands=tuple("gri")))
    assert list(_bit(flags, Flag.BAD_INPUT)) == [False, True]


def test_named_bands_are_taken_by_name_in_any_case_and_order(morphology):
    """Planes named I, g, R (any case, any order) are i, g and r; unnamed planes are g, r, i
    in that order."""
    data = _bands(n=1)
    g, r, i = data[:, 0], data[:, 1], data[:, 2]
    ref = pp.preprocess_gri(g, r, i)
    shuffled = np.stack([i, g, r], 1)
    x, _ = prepare(morphology, RawStamps("bands", shuffled, bands=("I", "g", "R")))
    np.testing.assert_array_equal(x, ref)
    x, _ = prepare(morphology, RawStamps("bands", data))
    np.testing.assert_array_equal(x, ref)
    assert not np.array_equal(pp.preprocess_gri(i, r, g), ref)  # the order shows


@pytest.mark.parametrize("kind", ["bands", "colour"])
def test_extrapolated_by_the_field_on_the_stamp(morphology, kind):
    """`Flag.EXTRAPOLATED` when the network's field (the kept crop of the stamp's shorter
    side) is fewer than half its 64 pixels: 32 pixels with ``crop_fraction=1`` are not, 31
    are; 64 pixels with the card's crop fraction (0.35, 22.4 pixels) are."""
    def flagged(size, crop_fraction):
        if kind == "bands":
            raw = RawStamps("bands", _bands(n=1, size=size), bands=tuple("gri"))
        else:
            raw = RawStamps("colour", np.random.default_rng(size).integers(
                0, 256, (1, size, size, 3)).astype(np.uint8))
        _, flags = prepare(morphology, raw, crop_fraction=crop_fraction)
        return bool(_bit(flags, Flag.EXTRAPOLATED)[0])

    assert not flagged(32, 1.0)
    assert flagged(31, 1.0)
    assert not flagged(64, 1.0)
    assert flagged(64, None)


@pytest.mark.parametrize("name, words", [
    ("morphology", None),  # the galaxy models' field follows the galaxy
    ("radio-morphology", "128 px at 1.8 arcsec/px, 230.4 arcsec across"),
    ("real-bogus", "63 px at 1 arcsec/px, 63 arcsec across")])
def test_fixed_field_in_words(name, words):
    """The field a card fixes, in the words the size options' refusals quote: pixels,
    pixel scale and their product (a 128-pixel FIRST stamp at 1.8"/px spans 230.4")."""
    from astromorph._adapters import fixed_field

    assert fixed_field(astromorph.load_model(name, providers="cpu").card) == words


def test_float_colour_pictures_are_filled_and_flagged(morphology):
    """Float display values with NaN (a table's masked cells) are filled with the picture's
    median before the network sees them, and flagged BLANK past the threshold: finite input."""
    pic = np.random.default_rng(3).uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    pic[1, :20] = np.nan
    x, flags = prepare(morphology, RawStamps("colour", pic))
    assert np.isfinite(x).all()
    assert list(_bit(flags, Flag.BLANK)) == [False, True]
