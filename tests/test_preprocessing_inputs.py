"""Awkward but legal inputs to the public preprocessing functions: masked arrays (the mask
is honoured, masked pixels are no data like NaN), empty batches, and bad inputs that must
get typed errors rather than numpy's."""
import numpy as np
import pytest

from astromorph import preprocessing as pp
from astromorph.exceptions import InputError, InputShapeError, InvalidArgumentError
from astromorph.preprocessing._optical import CROP_FRACTION

rng = np.random.default_rng(1)
GALAXY = rng.normal(0.02, 0.05, (40, 40))
GALAXY[18:22, 18:22] += 3.0
RADIO = rng.normal(0, 1.5e-4, (300, 300))
RADIO[145:155, 140:160] += 0.01
TRIPLET = rng.normal(100, 10, (2, 3, 63, 63))


def _masked(image, where, junk):
    """``image`` as a masked array whose masked pixels hold ``junk``."""
    data = np.array(image, dtype=float)
    mask = np.zeros(data.shape, bool)
    mask[where] = True
    data[where] = junk
    return np.ma.masked_array(data, mask=mask)


def _nan(image, where):
    out = np.array(image, dtype=float)
    out[where] = np.nan
    return out


# (function, clean image, region masked)
MASKED_CASES = {
    "gri_to_rgb": (lambda x: pp.gri_to_rgb(x, x, x), GALAXY, np.s_[18:20, :]),
    "preprocess_gri": (lambda x: pp.preprocess_gri(x, x, x), GALAXY, np.s_[18:20, :]),
    "single_band_to_rgb": (pp.single_band_to_rgb, GALAXY, np.s_[18:20, :]),
    "preprocess_single_band": (pp.preprocess_single_band, GALAXY, np.s_[18:20, :]),
    "sigma_clipped_rms": (pp.sigma_clipped_rms, RADIO, np.s_[:150, :]),
    "peak_significance": (pp.peak_significance, RADIO, np.s_[140:160, :]),
    "first_cutout_to_uint8": (pp.first_cutout_to_uint8, RADIO, np.s_[140:150, :]),
    "preprocess_first_cutout": (pp.preprocess_first_cutout, RADIO, np.s_[140:150, :]),
    "preprocess_radio_image": (lambda x: pp.preprocess_radio_image(x, pixel_scale_arcsec=3.0),
                               RADIO, np.s_[140:150, :]),
    "resample_to_first_grid": (lambda x: pp.resample_to_first_grid(x, 3.0), RADIO,
                               np.s_[140:150, :]),
    "preprocess_triplet": (pp.preprocess_triplet, TRIPLET, np.s_[0, 1, :10]),
    "resample_triplet": (lambda x: pp.resample_triplet(x, 0.5), TRIPLET, np.s_[0, 1, :30]),
}


@pytest.mark.parametrize("name", sorted(MASKED_CASES))
def test_masked_pixels_are_no_data_like_nan(name):
    """A masked array is read with its mask: the masked pixels count as NaN, whatever
    values lie under the mask (before, ``np.asarray`` dropped the mask and a masked 1e5
    was scored as a bright source)."""
    func, image, where = MASKED_CASES[name]
    masked = _masked(image, where, 1e5)
    kept = masked.copy()
    got, expected = func(masked), func(_nan(image, where))
    for g, e in zip(*((got, expected) if isinstance(got, tuple) else ((got,), (expected,)))):
        np.testing.assert_array_equal(g, e)
    np.testing.assert_array_equal(masked.data, kept.data)  # the input is left alone
    np.testing.assert_array_equal(masked.mask, kept.mask)


def test_masked_array_without_masked_pixels_is_its_data():
    clean = np.ma.masked_array(GALAXY, mask=False)
    np.testing.assert_array_equal(pp.preprocess_gri(clean, clean, clean),
                                  pp.preprocess_gri(GALAXY, GALAXY, GALAXY))


def test_masked_float_colour_cutout_is_nan_where_masked():
    rgb = np.clip(rng.random((64, 64, 3)), 0, 1)
    masked = _masked(rgb, np.s_[:, :10], 7.0)  # junk above 1 under the mask: no error
    np.testing.assert_array_equal(pp.preprocess_colour_cutout(masked, crop_fraction=1.0),
                                  pp.preprocess_colour_cutout(_nan(rgb, np.s_[:, :10]),
                                                              crop_fraction=1.0))


def test_masked_integer_colour_cutout_is_nan_where_masked():
    rgb = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    masked = np.ma.masked_array(rgb, mask=np.zeros(rgb.shape, bool))
    masked[:, :10] = np.ma.masked
    out = pp.preprocess_colour_cutout(masked, crop_fraction=1.0)
    assert np.isnan(out[:, :, :10]).all()
    np.testing.assert_allclose(out[:, :, 10:], pp.preprocess_colour_cutout(
        rgb, crop_fraction=1.0)[:, :, 10:], rtol=1e-6)


def test_masked_uint8_single_band_is_black_where_masked():
    """An 8-bit display band with masked pixels: they are black, as NaN is in a flux band."""
    grey = rng.integers(1, 256, (40, 40)).astype(np.uint8)
    masked = np.ma.masked_array(grey, mask=np.zeros(grey.shape, bool))
    masked[:5] = np.ma.masked
    out = pp.single_band_to_rgb(masked)
    assert out.dtype == np.uint8
    assert (out[:5] == 0).all()
    np.testing.assert_array_equal(out[5:], pp.single_band_to_rgb(grey)[5:])


def test_masked_integer_triplet_pixels_are_counted_as_invalid():
    counts = rng.integers(0, 1000, (3, 63, 63)).astype(np.int32)
    masked = np.ma.masked_array(counts, mask=np.zeros(counts.shape, bool))
    masked[2, :21] = np.ma.masked
    _, flag = pp.preprocess_triplet(masked)
    np.testing.assert_allclose(flag, [1 / 3])


@pytest.mark.parametrize("fill", [np.inf, -np.inf, 1e30, -3.4028235e38])
def test_dataset_image_invalid_pixels_are_nan_like_nan(fill):
    """An infinite or masking-sentinel pixel of a data-set image is missing like NaN (NaN in
    the output, which `Model.predict` names), not the brightest (+1e30 and +inf became 1.0)
    or faintest pixel of the stamp."""
    image = rng.uniform(0, 255, (300, 300))
    where = np.s_[150, 140:150]
    bad = image.copy()
    bad[where] = fill
    np.testing.assert_array_equal(pp.preprocess_dataset_image(bad),
                                  pp.preprocess_dataset_image(_nan(image, where)))


def test_masked_dataset_image_is_nan_where_masked():
    image = rng.integers(0, 256, (300, 300)).astype(np.uint8)
    masked = np.ma.masked_array(image, mask=np.zeros(image.shape, bool))
    masked[150, 140:150] = np.ma.masked
    np.testing.assert_array_equal(pp.preprocess_dataset_image(masked),
                                  pp.preprocess_dataset_image(_nan(image, np.s_[150, 140:150])))


@pytest.mark.parametrize("dtype", [bool, complex])
def test_dataset_image_refuses_non_real_data(dtype):
    with pytest.raises(InputError, match=np.dtype(dtype).name):
        pp.preprocess_dataset_image(np.ones((300, 300), dtype))


def test_radio_functions_take_empty_batches():
    empty = np.zeros((0, 300, 300))
    assert pp.peak_significance(empty).shape == (0,)
    assert pp.peak_significance(empty, rms=1.0).shape == (0,)
    assert pp.preprocess_radio_image(empty, pixel_scale_arcsec=3.0).shape == (0, 1, 128, 128)


@pytest.mark.parametrize("func", [pp.peak_significance, pp.first_cutout_to_uint8,
                                  pp.preprocess_first_cutout])
def test_rms_of_the_wrong_length_is_a_typed_error(func):
    with pytest.raises(InvalidArgumentError, match=r"rms.*\[1\.0, 2\.0\].*3 images"):
        func(np.stack([RADIO] * 3), rms=[1.0, 2.0])


@pytest.mark.parametrize("func", [pp.peak_significance, pp.first_cutout_to_uint8])
def test_several_rms_values_for_one_image_is_a_typed_error(func):
    with pytest.raises(InvalidArgumentError, match=r"rms.*\[1\.0, 2\.0\].*1 image"):
        func(RADIO, rms=[1.0, 2.0])


def test_one_rms_value_in_a_list_for_one_image_is_that_value():
    np.testing.assert_array_equal(pp.first_cutout_to_uint8(RADIO, rms=[1.5e-4]),
                                  pp.first_cutout_to_uint8(RADIO, rms=1.5e-4))


@pytest.mark.parametrize("image", ["abc", np.zeros((300, 300), complex)])
def test_preprocess_radio_image_refuses_non_real_data(image):
    with pytest.raises(InputError, match="real numbers"):
        pp.preprocess_radio_image(image, pixel_scale_arcsec=3.0)


RAGGED = [[0.0, 1.0], [2.0]]


@pytest.mark.parametrize("func", [
    pp.single_band_to_rgb, pp.preprocess_single_band, lambda x: pp.gri_to_rgb(x, x, x),
    pp.sigma_clipped_rms, pp.peak_significance, pp.first_cutout_to_uint8,
    pp.preprocess_dataset_image, pp.preprocess_colour_cutout, pp.preprocess_triplet,
    lambda x: pp.resample_triplet(x, 1.0), lambda x: pp.resample_to_first_grid(x, 3.0)])
def test_stamps_of_unequal_shapes_are_an_input_shape_error(func):
    with pytest.raises(InputShapeError, match="unequal shapes"):
        func(RAGGED)


@pytest.mark.filterwarnings("error")
def test_float16_images_do_not_warn():
    """Half-precision images are checked for sentinels without an overflow warning (1e30
    is infinite in float16)."""
    rgb = rng.random((32, 32, 3)).astype(np.float16)
    expected = pp.preprocess_colour_cutout(rgb.astype(np.float32))
    np.testing.assert_array_equal(pp.preprocess_colour_cutout(rgb), expected)
    pp.single_band_to_rgb(GALAXY.astype(np.float16), minimum=0.01)


def test_radio_pixel_scale_must_be_one_number():
    with pytest.raises(InvalidArgumentError, match=r"pixel_scale_arcsec.*\[1\.0, 2\.0\]"):
        pp.preprocess_radio_image(RADIO, pixel_scale_arcsec=[1.0, 2.0])


def test_radio_resampling_takes_one_or_two_pixel_scales():
    """(scale_y, scale_x) for pixels that are not square, as for `resample_triplet`."""
    with pytest.raises(InvalidArgumentError, match=r"pixel_scale_arcsec.*\[1\.0, 2\.0, 3\.0\]"):
        pp.resample_to_first_grid(RADIO, [1.0, 2.0, 3.0])


def test_triplet_pixel_scale_takes_one_or_two_values():
    with pytest.raises(InvalidArgumentError, match=r"pixel_scale.*\[1\.0, 2\.0, 3\.0\]"):
        pp.resample_triplet(TRIPLET, [1.0, 2.0, 3.0])


def test_rms_in_a_unit_that_is_not_the_image_unit_is_a_typed_error():
    import astropy.units as u

    with pytest.raises(InvalidArgumentError, match="rms.*m.*Jy"):
        pp.first_cutout_to_uint8(RADIO * u.Jy, rms=1 * u.m)


def test_gri_shape_mismatch_names_the_shapes():
    with pytest.raises(InputShapeError, match=r"\(40, 40\).*\(40, 39\)"):
        pp.gri_to_rgb(GALAXY, GALAXY[:, :-1], GALAXY)


@pytest.mark.parametrize("stretch", ["log", ["sqrt"], None])
def test_dataset_image_unknown_stretch_names_the_choices(stretch):
    with pytest.raises(InvalidArgumentError, match=r"stretch must be 'sqrt' or 'linear'"):
        pp.preprocess_dataset_image(np.zeros((300, 300), np.uint8), stretch=stretch)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, bool, object])
@pytest.mark.parametrize("func", [
    pp.single_band_to_rgb, pp.preprocess_single_band, lambda x: pp.gri_to_rgb(x, x, x),
    lambda x: pp.preprocess_gri(x, x, x), pp.sigma_clipped_rms, pp.peak_significance,
    pp.first_cutout_to_uint8, pp.preprocess_first_cutout, pp.preprocess_dataset_image,
    lambda x: pp.preprocess_radio_image(x, pixel_scale_arcsec=1.8),
    lambda x: pp.resample_to_first_grid(x, 3.0), pp.preprocess_optical,
    lambda x: pp.preprocess_colour_cutout(np.repeat(x[..., None], 3, axis=-1)),
    pp.preprocess_triplet, lambda x: pp.resample_triplet(x, 1.0)])
def test_non_real_pixels_are_an_input_dtype_error(func, dtype):
    """Complex (whose imaginary part would be lost), boolean and object pixels are refused by
    every preprocessing function with the same typed error as `Model.predict`'s:
    `InputDTypeError` (an `InputError` and a `TypeError`), naming the dtype."""
    from astromorph.exceptions import InputDTypeError

    image = np.ones((3, 63, 63), dtype)
    with pytest.raises(InputDTypeError, match=f"dtype {np.dtype(dtype)}"):
        func(image)


@pytest.mark.parametrize("func", [
    pp.preprocess_single_band, lambda x: pp.preprocess_gri(x, x, x), pp.preprocess_optical,
    lambda x: pp.preprocess_colour_cutout(np.repeat(x[..., None], 3, axis=-1)),
    lambda x: pp.preprocess_colour_cutout(np.repeat(x[..., None], 3, axis=-1).astype(np.uint8))])
@pytest.mark.parametrize("shape", [(2, 0, 0), (2, 40, 0), (0, 40)])
def test_optical_images_without_pixels_are_a_shape_error(func, shape):
    """Images with no pixels along an axis are an InputShapeError naming their shape (was an
    InvalidArgumentError about an internal ``n_in`` argument); an empty batch is no error."""
    h, w = shape[-2:]
    with pytest.raises(InputShapeError, match=rf"at least one pixel.* got {h}x{w} pixels"):
        func(np.zeros(shape))
    assert func(np.zeros((0, 40, 40))).shape == (0, 3, 64, 64)


# --- tests that kill mutations which survived the suite (see the commit messages) ---------

@pytest.mark.parametrize("masked", [False, True])
def test_integer_colour_cutout_one_past_8_bits_is_refused(masked):
    """256 is no 8-bit value: cast to uint8 it would wrap to 0 (black), silently."""
    rgb = np.full((8, 8, 3), 200, np.int16)
    rgb[3, 3, 0] = 256
    if masked:  # a masked integer cutout with a masked pixel takes another path
        rgb = np.ma.masked_array(rgb, mask=np.zeros(rgb.shape, bool))
        rgb[0, 0] = np.ma.masked
    with pytest.raises(InputError, match="0-255"):
        pp.preprocess_colour_cutout(rgb)
    rgb[3, 3, 0] = 255  # the largest 8-bit value is one
    assert np.isfinite(pp.preprocess_colour_cutout(rgb, crop_fraction=0.5)).all()



@pytest.mark.parametrize("masked", [False, True])
def test_integer_colour_cutout_below_zero_is_refused(masked):
    """-1 is no 8-bit value either: cast to uint8 it would wrap to 255 (white), silently."""
    rgb = np.full((8, 8, 3), 200, np.int16)
    rgb[3, 3, 2] = -1
    if masked:
        rgb = np.ma.masked_array(rgb, mask=np.zeros(rgb.shape, bool))
        rgb[0, 0] = np.ma.masked
    with pytest.raises(InputError, match="-1 to 200"):
        pp.preprocess_colour_cutout(rgb)
    rgb[3, 3, 2] = 0
    assert np.isfinite(pp.preprocess_colour_cutout(rgb, crop_fraction=0.5)).all()


def test_non_square_cutout_is_cropped_about_each_axis_centre():
    """A 90 x 50 cutout: the rows and the columns each get their own centred window (exact
    area weights of `area_resample` for their own length), as the float64 products give."""
    img = np.random.default_rng(5).integers(0, 256, (90, 50, 3)).astype(np.uint8)
    out = pp.preprocess_colour_cutout(img, size=16, crop_fraction=0.4)
    rows = pp.area_resample(90, 16, crop_fraction=0.4)
    cols = pp.area_resample(50, 16, crop_fraction=0.4)
    ref = np.einsum("ah,hwc,bw->cab", rows, img / 255.0, cols)
    assert out.shape == (3, 16, 16)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)

def test_float_colour_cutout_a_little_above_one_is_refused():
    """Display values are in [0, 1]; 1.05 is not one (a rounding tolerance of 1e-6 aside)."""
    rgb = np.full((8, 8, 3), 0.5)
    rgb[2, 2, 1] = 1.05
    with pytest.raises(InputError, match="1.05"):
        pp.preprocess_colour_cutout(rgb)
    rgb[2, 2, 1] = 1.0 + 1e-4  # past the tolerance, if only just
    with pytest.raises(InputError, match="1.0001"):
        pp.preprocess_colour_cutout(rgb)
    rgb[2, 2, 1] = 1.0 + 1e-7
    assert np.isfinite(pp.preprocess_colour_cutout(rgb)).all()


def test_cutout_of_the_stamp_size_is_still_cropped():
    """A 64 x 64 cutout with the default crop fraction is cropped to its central 35 per cent
    and resampled back to 64 x 64, not passed through whole (only crop_fraction=1 is)."""
    img = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    w = pp.area_resample(64, 64, crop_fraction=CROP_FRACTION)
    ref = np.einsum("ih,hwc,jw->cij", w, img / 255.0, w)
    np.testing.assert_allclose(pp.preprocess_colour_cutout(img), ref, atol=1e-6)
    np.testing.assert_allclose(pp.preprocess_colour_cutout(img, crop_fraction=1.0),
                               np.moveaxis(img / 255.0, -1, 0), atol=1e-7)


def test_float_colour_cutout_above_one_is_refused_beside_missing_pixels():
    """A NaN (or a sentinel, made NaN) does not hide values above 1 from the range check."""
    rgb = np.full((8, 8, 3), 0.5)
    rgb[0, 0, 0] = np.nan
    rgb[1, 1, 1] = -3.4028235e38
    rgb[4, 4, 2] = 200.0  # an 8-bit value in a float cutout
    with pytest.raises(InputError, match="200"):
        pp.preprocess_colour_cutout(rgb)


def test_triplet_with_mostly_constant_stamp_is_scaled_by_its_standard_deviation():
    """A stamp with more than half its pixels equal (MAD 0: padding, a saturated core) is
    scaled by its standard deviation, as documented, not by 1."""
    x = TRIPLET[:1].copy()
    x[0, 1, :40] = 100.0  # 2520 of 3969 pixels: the median and the MAD's are 100 and 0
    out, _ = pp.preprocess_triplet(x)
    stamp = x[0, 1]
    np.testing.assert_allclose(out[0, 1], np.arcsinh((stamp - 100.0) / (3 * stamp.std())),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("junk", [np.nan, np.inf, -3.4028235e38])
def test_preprocess_triplet_leaves_the_callers_array_alone(junk):
    """Native float64 triplets are not written to (invalid pixels made NaN in a copy)."""
    x = TRIPLET.copy()
    x[0, 0, :3] = junk
    before = x.copy()
    pp.preprocess_triplet(x)
    np.testing.assert_array_equal(x, before)


def test_resample_triplet_even_output_is_centred_on_pixel_size_over_2():
    """The centre of the output's central pixel, ``size // 2``, is put on the candidate:
    for an even ``size`` too (not between two pixels)."""
    x = np.zeros((1, 3, 63, 63))
    x[0, :, 31, 31] = 1.0
    out, _ = pp.resample_triplet(x, 1.0, size=64)
    assert out[0, 0, 32, 32] == pytest.approx(1.0)
    assert np.nansum(out[0, 0]) == pytest.approx(1.0)


def test_resample_triplet_keeps_pixels_exactly_min_cover_on_the_stamp():
    """Only pixels with less than ``min_cover`` of their area on the stamp are NaN: shifted by
    half a pixel, the last row and column are half on it, and kept at min_cover=0.5."""
    x = np.ones((1, 3, 63, 63))
    out, cov = pp.resample_triplet(x, 1.0, centre=(31.5, 31.5))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, 1.0)
    assert cov[0] == pytest.approx((62.5 / 63) ** 2)


def test_resample_triplet_coverage_is_in_output_pixel_areas():
    """With model pixels of 2": the covered fraction of each output pixel is its overlap over
    2", so the 63" stamp covers a quarter of the 126" field, and the two pixels a quarter on
    it either side are NaN (less than min_cover)."""
    x = np.ones((1, 3, 63, 63))
    out, cov = pp.resample_triplet(x, 1.0, model_pixel_scale=2.0)
    assert cov[0] == pytest.approx(0.25)
    finite = np.flatnonzero(np.isfinite(out[0, 0, 31]))
    np.testing.assert_array_equal(finite, np.arange(16, 47))


def test_resample_triplet_gives_masking_sentinels_no_weight():
    """A masking sentinel (-3.4e38) is an invalid pixel like NaN: the output is the mean of
    the valid pixels it overlaps, not a huge number."""
    x = np.full((1, 3, 189, 189), 5.0)
    x[0, :, 94, 94] = -3.4028235e38  # one of the 9 pixels under output pixel (31, 31)
    out, _ = pp.resample_triplet(x, 1 / 3)
    np.testing.assert_allclose(out, 5.0)


def test_resample_triplet_nan_centre_axis_is_that_axis_default_on_a_non_square_stamp():
    """NaN along one axis of ``centre`` stands for ``n // 2`` of that axis (rows: 20 of 40,
    columns: 30 of 60), not of the other."""
    x = rng.normal(0, 1, (1, 3, 40, 60))
    ref, ref_cov = pp.resample_triplet(x, 0.5)
    for centre in [(np.nan, 30.0), (20.0, np.nan), (np.nan, np.nan)]:
        out, cov = pp.resample_triplet(x, 0.5, centre=centre)
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(cov, ref_cov)


@pytest.mark.parametrize("centre", [(np.inf, 10.0), (10.0, -np.inf)])
def test_resample_triplet_infinite_centre_is_refused(centre):
    """An infinite centre is no pixel position (NaN is: the default): a typed error naming it,
    not a triplet of NaN."""
    with pytest.raises(InvalidArgumentError, match="centre"):
        pp.resample_triplet(TRIPLET, 1.0, centre=centre)


def test_resample_triplet_on_stamp_is_the_covered_square():
    """The pixels `_resample_triplet` says lie on the stamp (which BLANK counts over) are those
    on it along both axes: for a clean DES-like stamp, exactly the finite ones."""
    from astromorph.preprocessing import _triplet

    x = rng.normal(0, 1, (2, 3, 51, 51))
    out, cov, on_stamp = _triplet._resample_triplet(x, 0.27, size=63, model_pixel_scale=1.0,
                                                     min_cover=0.5, centre=[(25, 25), (20, 27)])
    np.testing.assert_array_equal(on_stamp, np.isfinite(out[:, 0]))
    assert 0 < on_stamp.mean() < 0.1


def test_preprocess_optical_takes_a_batch_of_colour_cutouts():
    """(N, H, W, 3) is a batch of colour cutouts, as (H, W, 3) is one."""
    rgb = rng.integers(0, 256, (2, 40, 40, 3)).astype(np.uint8)
    np.testing.assert_array_equal(pp.preprocess_optical(rgb), pp.preprocess_colour_cutout(rgb))


def test_single_band_with_three_different_minima_is_refused():
    """One band is stretched once: three different minima cannot all apply (the first alone
    would be used, silently)."""
    with pytest.raises(InvalidArgumentError, match="one minimum"):
        pp.single_band_to_rgb(GALAXY, minimum=(0.0, 0.1, 0.0))
    np.testing.assert_array_equal(pp.single_band_to_rgb(GALAXY, minimum=(0.1, 0.1, 0.1)),
                                  pp.single_band_to_rgb(GALAXY, minimum=0.1))


def test_preprocess_optical_keeps_the_mask_of_a_masked_array():
    """Masked pixels given through preprocess_optical are no data there too (NaN in a colour
    cutout, 0 in a flux band), whatever junk they hold."""
    rgb = rng.uniform(0, 1, (40, 40, 3))
    masked = _masked(rgb, (slice(None), slice(0, 10)), 0.9)
    out = pp.preprocess_optical(masked, crop_fraction=1.0)
    np.testing.assert_array_equal(out, pp.preprocess_colour_cutout(masked, crop_fraction=1.0))
    assert np.isnan(out[:, :, :10]).all()
    band = _masked(GALAXY, (slice(0, 5),), 1e3)
    np.testing.assert_array_equal(pp.preprocess_optical(band),
                                  pp.preprocess_optical(_nan(GALAXY, (slice(0, 5),))))
