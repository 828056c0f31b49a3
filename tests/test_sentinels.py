"""Masking sentinels (ZTF's -3.4e38, +-1e30) are masked pixels on every path, exactly as NaN:
filled or left out, counted in `Flag.BLANK`, never fed to a stretch or a noise estimate."""
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from conftest import assert_scores
from synthetic_alerts import (RUBIN_SCHEMA, celestial_header, fits_bytes, rubin_alert, triplet,
                              write_avro, ztf_alert)

import astromorph
from astromorph import Flag
from astromorph import preprocessing as pp

pytestmark = pytest.mark.filterwarnings("ignore::astromorph.exceptions.AstromorphWarning")

SENTINELS = [-3.4028235e38, -1e30, 1e30]


def _masked(image, fill, where=np.s_[..., :20, :]):
    out = np.array(image, dtype=np.float32)
    out[where] = fill
    return out


def _galaxy(n=64, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:n, :n] - n // 2
    return (rng.normal(0.02, 0.01, (n, n)) + 2 * np.exp(-(x ** 2 + 2 * y ** 2) / 30)
            ).astype(np.float32)


def _radio(n=300, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 1.5e-4, (n, n))
    image[n // 2 - 5:n // 2 + 5, n // 2 - 10:n // 2 + 10] += 0.01
    return image


def _write_fits(path, data, scale):
    header = celestial_header(fits.Header(), scale, np.shape(data))
    fits.PrimaryHDU(np.asarray(data, np.float32), header=header).writeto(path)
    return path


# --- astromorph.preprocessing ------------------------------------------------------------

@pytest.mark.parametrize("fill", SENTINELS)
def test_sigma_clipped_rms_ignores_sentinels(fill):
    image = _radio()
    blank = _masked(image, fill, np.s_[:100])  # a third of the image
    rms = pp.sigma_clipped_rms(image[100:])
    assert pp.sigma_clipped_rms(blank) == pytest.approx(rms, rel=1e-6)
    assert pp.sigma_clipped_rms(_masked(image, np.nan, np.s_[:100])) == pytest.approx(rms, rel=1e-6)


@pytest.mark.parametrize("fill", SENTINELS)
def test_radio_functions_treat_sentinels_as_nan(fill):
    image = _radio()
    nan, sent = _masked(image, np.nan, np.s_[:100]), _masked(image, fill, np.s_[:100])
    assert pp.peak_significance(sent) == pytest.approx(pp.peak_significance(nan))
    np.testing.assert_array_equal(pp.first_cutout_to_uint8(sent), pp.first_cutout_to_uint8(nan))
    np.testing.assert_array_equal(pp.resample_to_first_grid(sent, 0.9),
                                  pp.resample_to_first_grid(nan, 0.9))
    np.testing.assert_array_equal(pp.preprocess_radio_image(sent, pixel_scale_arcsec=1.0),
                                  pp.preprocess_radio_image(nan, pixel_scale_arcsec=1.0))


@pytest.mark.parametrize("fill", SENTINELS)
def test_lupton_stretch_treats_sentinels_as_nan(fill):
    g = _galaxy()
    nan, sent = _masked(g, np.nan), _masked(g, fill)
    np.testing.assert_array_equal(pp.gri_to_rgb(sent, sent, sent), pp.gri_to_rgb(nan, nan, nan))
    np.testing.assert_array_equal(pp.single_band_to_rgb(sent), pp.single_band_to_rgb(nan))
    np.testing.assert_array_equal(pp.preprocess_gri(sent, g, g, minimum=0.01),
                                  pp.preprocess_gri(nan, g, g, minimum=0.01))


# --- predict_files and annotate_stamps ----------------------------------------------------

def _columns(table, prefix):
    return [c for c in table.colnames if c.startswith(f"{prefix}_p_")]


def _assert_same_rows(table, prefix, a, b):
    assert table[f"{prefix}_flags"][a] == table[f"{prefix}_flags"][b]
    for c in _columns(table, prefix):
        assert table[c][a] == pytest.approx(table[c][b], abs=1e-6), c


@pytest.mark.parametrize("fill", SENTINELS)
def test_predict_files_fits_stamps_flag_sentinels_as_blank(tmp_path, fill):
    cube = np.stack([_galaxy(seed=s) for s in range(3)])
    _write_fits(tmp_path / "opt_nan.fits", _masked(cube, np.nan), 0.396)
    _write_fits(tmp_path / "opt_sent.fits", _masked(cube, fill), 0.396)
    _write_fits(tmp_path / "rad_nan.fits", _masked(_radio(), np.nan, np.s_[:100]), 1.8)
    _write_fits(tmp_path / "rad_sent.fits", _masked(_radio(), fill, np.s_[:100]), 1.8)
    opt = astromorph.predict_files("morphology", sorted(tmp_path.glob("opt_*.fits")))
    rad = astromorph.predict_files("radio-morphology", sorted(tmp_path.glob("rad_*.fits")))
    for table, prefix in ((opt, "morph"), (rad, "radio")):
        assert all(f & Flag.BLANK and not f & Flag.NO_SOURCE for f in table[f"{prefix}_flags"])
        assert "NaN/inf/BLANK" in table["reason"][1]
        _assert_same_rows(table, prefix, 0, 1)


@pytest.mark.parametrize("fill", SENTINELS)
def test_annotate_stamps_flags_sentinels_as_blank(fill):
    optical = np.stack([_masked(_galaxy(), np.nan), _masked(_galaxy(), fill)])
    out = astromorph.annotate_stamps(Table({"image": optical}), model="morphology")
    assert out["morph_flags"][1] & Flag.BLANK
    _assert_same_rows(out, "morph", 0, 1)
    radio = np.stack([_masked(_radio(), np.nan, np.s_[:100]), _masked(_radio(), fill, np.s_[:100])])
    out = astromorph.annotate_stamps(Table({"image": radio}), model="radio-morphology")
    assert list(out["radio_flags"]) == [Flag.BLANK, Flag.BLANK]
    _assert_same_rows(out, "radio", 0, 1)


def test_alerts_flag_sentinels_as_blank(tmp_path):
    pytest.importorskip("fastavro")
    t = triplet()
    t[1, :20] = -3.4028235e38  # a ZTF reference cutout with masked pixels
    write_avro(tmp_path / "ztf.avro", [ztf_alert(1, t), ztf_alert(2)])
    write_avro(tmp_path / "rubin.avro", [rubin_alert(3, t, scale=1.0),
                                         rubin_alert(4, triplet(), scale=1.0)],
               schema=RUBIN_SCHEMA)
    out = astromorph.predict_files("real-bogus", [tmp_path / "ztf.avro", tmp_path / "rubin.avro"])
    assert [int(f) & Flag.BLANK for f in out["rb_flags"]] == [Flag.BLANK, 0, Flag.BLANK, 0]
    assert not np.ma.is_masked(out["rb_score"])


# --- annotate from images -----------------------------------------------------------------

@pytest.mark.parametrize("fill", SENTINELS)
@pytest.mark.parametrize("source", ["file", "array"])
def test_annotate_treats_sentinel_pixels_as_nan(tmp_path, fill, source):
    n = 200
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:n, :n]
    image = (rng.normal(0.02, 0.01, (n, n))
             + 2 * np.exp(-((xx - 100) ** 2 + 2 * (yy - 100) ** 2) / 20)).astype(np.float32)
    header = celestial_header(fits.Header(), 0.396, image.shape)
    cat = Table({"ra": [150.0, 150.001], "dec": [2.0, 2.0], "r90": [5.0, 3.0]})
    outs = []
    for name, value in (("nan", np.nan), ("sentinel", fill)):
        data = _masked(image, value, np.s_[:, :100])
        path = _write_fits(tmp_path / f"{name}.fits", data, 0.396)
        images = str(path) if source == "file" else (data, WCS(header))
        outs.append(astromorph.annotate(cat, images, model="morphology", size_col="r90"))
    nan, sent = outs
    assert all(f & Flag.BLANK for f in sent["morph_flags"])
    np.testing.assert_array_equal(sent["morph_flags"], nan["morph_flags"])
    for c in _columns(nan, "morph"):
        assert_scores(sent[c], nan[c], atol=1e-6, err_msg=c)


def test_annotate_integer_image_with_blank_keyword(tmp_path):
    n = 200
    rng = np.random.default_rng(2)
    data = np.round(rng.normal(20, 10, (n, n))).astype(np.int16)
    data[:, :100] = -32768
    header = celestial_header(fits.Header(), 0.396, data.shape)
    header.update({"BLANK": -32768, "BSCALE": 0.001, "BZERO": 0.0})
    hdu = fits.PrimaryHDU(data, header=header)
    hdu.header["BLANK"] = -32768
    hdu.writeto(tmp_path / "int.fits")
    cat = Table({"ra": [150.0], "dec": [2.0], "r90": [5.0]})
    out = astromorph.annotate(cat, str(tmp_path / "int.fits"), model="morphology", size_col="r90")
    assert out["morph_flags"][0] & Flag.BLANK and not np.ma.is_masked(out["morph_p_spiral"][0])


# --- alerts whose three cutouts differ in shape -------------------------------------------

@pytest.mark.parametrize("kind", ["ztf", "rubin"])
def test_alert_cutouts_of_different_shapes_are_flagged_alike(tmp_path, kind):
    """63x63, 62x63 and 61x61 cutouts cannot be aligned pixel for pixel: both alert readers
    flag the row BAD_INPUT (as annotate_stamps does) and the other alerts are scored."""
    pytest.importorskip("fastavro")
    t = triplet()
    odd = [t[0], np.ascontiguousarray(t[1, :, :62]), np.ascontiguousarray(t[2, :61, :61])]
    if kind == "ztf":
        raw = {k: fits_bytes(p, gz=True) for k, p in
               zip(("cutoutScience", "cutoutTemplate", "cutoutDifference"), odd)}
        records, schema = [ztf_alert(1, raw=raw), ztf_alert(2)], None
    else:
        bad = rubin_alert(1, t, scale=1.0)
        for key, plane in zip(("cutoutScience", "cutoutTemplate", "cutoutDifference"), odd):
            bad[key] = fits_bytes(plane, scale=1.0, extensions=True)
        records, schema = [bad, rubin_alert(2, triplet(), scale=1.0)], RUBIN_SCHEMA
    path = write_avro(tmp_path / "a.avro", records, **({"schema": schema} if schema else {}))
    out = astromorph.predict_files("real-bogus", path)
    assert list(out["source"]) == ["1", "2"]
    assert out["rb_flags"][0] == Flag.BAD_INPUT and np.ma.is_masked(out["rb_score"][0])
    assert "cutouts differ in shape (63x63, 62x63, 61x61)" in out["reason"][0]
    assert out["rb_flags"][1] == 0 and not np.ma.is_masked(out["rb_score"][1])


@pytest.mark.parametrize("fill", [1e30, -1e30])
def test_model_predict_refuses_sentinels_like_the_other_paths(fill):
    """1e30 in float64 is a sentinel for preprocessing, so Model.predict refuses it too."""
    model = astromorph.load_model("morphology")
    x = np.zeros((2, 3, 64, 64))
    x[1, 0, 0, 0] = fill
    with pytest.raises(astromorph.exceptions.InputError, match="row"):
        model.predict(x)


@pytest.mark.parametrize("fill", SENTINELS)
def test_float_colour_cutouts_treat_sentinels_as_nan(fill):
    rgb = np.random.default_rng(5).uniform(0, 1, (64, 64, 3))
    nan, sent = _masked(rgb, np.nan, np.s_[:10]), _masked(rgb, fill, np.s_[:10])
    for crop in (1.0, pp.optical.CROP_FRACTION):  # with and without the masked rows
        np.testing.assert_array_equal(pp.preprocess_colour_cutout(sent, crop_fraction=crop),
                                      pp.preprocess_colour_cutout(nan, crop_fraction=crop))


# --- triplet members at different pixel scales ---------------------------------------------

def _scaled_member_inputs(tmp_path, kind, scales):
    """A triplet whose three 63x63 members carry WCSs of ``scales`` (arcsec/px)."""
    t = triplet()
    keys = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
    if kind == "fits":
        hdus = [fits.PrimaryHDU()] + [
            fits.ImageHDU(p, celestial_header(fits.Header(), s, p.shape), name=n)
            for n, p, s in zip(("SCIENCE", "REFERENCE", "DIFFERENCE"), t, scales)]
        fits.HDUList(hdus).writeto(tmp_path / "t.fits")
        return astromorph.predict_files("real-bogus", tmp_path / "t.fits"), "reason"
    if kind == "rubin":
        pytest.importorskip("fastavro")
        rec = rubin_alert(1, t, scale=1.0)
        for key, plane, s in zip(keys, t, scales):
            rec[key] = fits_bytes(plane, scale=s, extensions=True)
        path = write_avro(tmp_path / "a.avro", [rec], schema=RUBIN_SCHEMA)
        return astromorph.predict_files("real-bogus", path), "reason"
    table = Table({k: [fits_bytes(p, scale=s)] for k, p, s in zip(keys, t, scales)})
    return astromorph.annotate_stamps(table, model="real-bogus"), "rb_reason"


@pytest.mark.parametrize("kind", ["fits", "rubin", "table"])
def test_triplet_members_of_different_pixel_scales_are_flagged(tmp_path, kind):
    """Science at 1"/px and a template of the same 63x63 pixels at 0.25"/px cover different
    fields: stacked pixel for pixel they are a misaligned triplet. Every reader flags the row
    BAD_INPUT, naming the scales, as it does for members of different shapes (the first
    member's scale was used for all three, and the row scored without a flag)."""
    out, reason = _scaled_member_inputs(tmp_path, kind, (1.0, 0.25, 1.0))
    assert out["rb_flags"][0] == Flag.BAD_INPUT and np.ma.is_masked(out["rb_score"][0])
    assert "differ in pixel scale (1, 0.25, 1 arcsec/pixel)" in out[reason][0]
    # equal scales (to within rounding of the WCS keywords) are one grid: scored, unflagged
    (tmp_path / "ok").mkdir()
    out, _ = _scaled_member_inputs(tmp_path / "ok", kind, (1.0, 1.0 + 1e-6, 1.0))
    assert out["rb_flags"][0] == 0 and not np.ma.is_masked(out["rb_score"][0])



# --- float64 pixels beyond the float32 range ------------------------------------------------

@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("fill", [1e300, -1e300])
def test_float64_pixels_beyond_float32_are_sentinels_without_warnings(tmp_path, fill):
    """A float64 FITS image or array holding values beyond float32's range (|x| >= 3.4e38) is
    read into float32 by every path: such pixels are masking sentinels like NaN, with no
    numpy 'overflow encountered in cast' RuntimeWarning reaching the user."""
    def write(name, data):
        header = celestial_header(fits.Header(), 0.396 if "opt" in name else 1.8, data.shape)
        fits.PrimaryHDU(np.asarray(data, np.float64), header=header).writeto(tmp_path / name)
        return tmp_path / name

    cube = np.stack([_galaxy(seed=s) for s in range(3)]).astype(np.float64)
    opt = astromorph.predict_files("morphology", [
        write("opt_nan.fits", _masked(cube, np.nan)),
        write("opt_big.fits", np.where(np.isnan(_masked(cube, np.nan)), fill, cube))])
    rad_nan = _masked(_radio(), np.nan, np.s_[:100]).astype(np.float64)
    rad = astromorph.predict_files("radio-morphology", [
        write("rad_nan.fits", rad_nan), write("rad_big.fits", np.where(np.isnan(rad_nan), fill,
                                                                       rad_nan))])
    for table, prefix in ((opt, "morph"), (rad, "radio")):
        assert all(f & Flag.BLANK for f in table[f"{prefix}_flags"])
        _assert_same_rows(table, prefix, 0, 1)
    t = triplet().astype(np.float64)
    t[1, :20] = fill
    rb = astromorph.predict_files("real-bogus", write("rb_big.fits", t))
    assert rb["rb_flags"][0] & Flag.BLANK and np.isfinite(rb["rb_score"][0])
    # annotate, from the file and from the array
    n = 200
    image = np.random.default_rng(1).normal(0.02, 0.01, (n, n))
    image[:, :100] = fill
    path = write("opt_image.fits", image)
    cat = Table({"ra": [150.0], "dec": [2.0], "r90": [5.0]})
    for images in (str(path), (image, WCS(fits.getheader(path)))):
        out = astromorph.annotate(cat, images, model="morphology", size_col="r90")
        assert out["morph_flags"][0] & Flag.BLANK and np.isfinite(out["morph_p_spiral"][0])
