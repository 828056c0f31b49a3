"""Radio preprocessing details that the wider radio tests leave open: the FIRST grid of
pixels that are FIRST's along one axis only, the grid's extent on a small image, the
centring of non-square FIRST cutouts, the order of the edge strips and the unit range of
the network input; and the boundaries that mutation testing found unpinned (a zero pixel
scale, a zero threshold, a pixel exactly at the clipping width, the rings' outer edge and
8-bit step, binning by more than one pixel, the window the noise is measured on)."""
import re

import numpy as np
import pytest

from astromorph.exceptions import InvalidArgumentError
from astromorph.preprocessing import _radio as radio


@pytest.mark.parametrize("scales", [(1.8, 0.9), (0.9, 1.8)])
def test_pixels_of_first_scale_along_one_axis_only_are_resampled_along_the_other(scales):
    """Pixels of 1.8" by 0.9": only the 0.9" axis needs resampling, but it does need it. A
    ramp holding each pixel's own offset from the centre in arcsec along that axis reads
    back the FIRST grid's offsets, (k - 149.5) * 1.8" (cutting the image to 300 pixels as
    for FIRST's own grid would read 0.9" steps: a source squashed by two along that axis)."""
    scale_y, scale_x = scales
    ny, nx = (300, 600) if scale_x < 1.8 else (600, 300)
    yy, xx = np.mgrid[:ny, :nx].astype(np.float64)
    arcsec = ((xx - (nx - 1) / 2) * scale_x if scale_x < 1.8 else (yy - (ny - 1) / 2) * scale_y)
    out = radio.resample_to_first_grid(arcsec, (scale_y, scale_x))
    grid = (np.arange(300) - 149.5) * radio.FIRST_PIXEL_SCALE_ARCSEC
    want = np.broadcast_to(grid if scale_x < 1.8 else grid[:, None], (300, 300))
    inside = np.isfinite(out)
    assert inside.mean() > 0.99
    np.testing.assert_allclose(out[inside], want[inside], atol=1e-9)


@pytest.mark.parametrize("scale", [0.9, (0.9, 0.6)])
def test_cubic_sampling_is_nan_outside_a_small_image_as_the_bilinear_grid(scale):
    """On an image smaller than the FIRST grid's 540" the grid points outside the image
    are NaN (empty sky for `first_cutout_to_uint8`) in `_sample_on_first_grid` and
    `_sample_beam_limited`, the same points as `resample_to_first_grid` leaves NaN, not
    the edge pixels' values repeated outwards (a bright edge smeared over the field). The
    grid points beyond the last pixel centre but within the last pixel (302 rows of 0.9":
    the grid's rows at 2k - 148.5, one at 301.5; 303 columns of 0.6": one at 302.5) are
    outside too: nothing there to interpolate from."""
    image = np.random.default_rng(3).normal(1.0, 0.1, (302, 303))
    cubic = radio._sample_on_first_grid(image, scale)
    bilinear = radio.resample_to_first_grid(image, scale)
    assert 0.05 < np.isnan(bilinear).mean() < 0.95
    np.testing.assert_array_equal(np.isnan(cubic), np.isnan(bilinear))
    limited = radio._sample_beam_limited(image[None], scale)[0]
    np.testing.assert_array_equal(np.isnan(limited), np.isnan(bilinear))


@pytest.mark.parametrize("shape", [(281, 341), (341, 281), (320, 301)])
def test_non_square_first_cutout_is_centred_on_each_axis(shape):
    """A cutout at 1.8" that is not 300 x 300 (and not square) is cut or padded about its
    centre pixel ``(ny // 2, nx // 2)``, each axis by its own size: a lone bright pixel
    there is the brightest pixel (255) of the data-set window at ``(150, 150)``, the pixel
    one row above it one row above that and the one two columns right two columns right
    (rows and columns not swapped)."""
    ny, nx = shape
    image = np.zeros(shape)
    image[ny // 2, nx // 2] = 10.0
    image[ny // 2 + 1, nx // 2] = 5.0
    image[ny // 2, nx // 2 + 2] = 2.5
    out = radio.first_cutout_to_uint8(image, rms=1.0)
    assert out.shape == (300, 300)
    # threshold 3: (5 - 3) / (10 - 3) * 255 = 72.9; 2.5 is below it
    assert out[150, 150] == 255 and out[151, 150] == 72 and out.sum(dtype=int) == 255 + 72
    again = radio.first_cutout_to_uint8(image, rms=0.1)  # threshold 0.3: all three above
    assert (again[150, 150], again[151, 150], again[150, 152]) == (255, 123, 57)
    assert again.sum(dtype=int) == 255 + 123 + 57


@pytest.mark.parametrize("strip", range(4))
def test_edge_levels_measure_each_named_strip(strip):
    """`_edge_levels` gives each of the four edge strips' background in the order of
    `_EDGE_NAMES` (bottom: the first rows, top: the last, left: the first columns, right:
    the last): a 3-sigma pedestal on one strip's part outside the corners (half of it) reads 0.85 in
    that strip's place and near 0 in the other three (a strip read twice, or two swapped,
    misses a pedestal along one edge, which `Flag.OUT_OF_DISTRIBUTION` is to catch)."""
    w = radio._EDGE_STRIP_PIXELS
    window = np.random.default_rng(strip).normal(0.0, 1.0, (1, 300, 300))
    part = [(slice(0, w), slice(w, -w)), (slice(-w, None), slice(w, -w)),
            (slice(w, -w), slice(0, w)), (slice(w, -w), slice(-w, None))][strip]
    window[(0,) + part] += 3.0
    levels = radio._edge_levels(window)[0]
    assert radio._EDGE_NAMES[strip] == ("bottom", "top", "left", "right")[strip]
    assert levels[strip] > 0.5
    others = np.delete(levels, strip)
    assert np.all(np.abs(others) < 0.2), levels


def test_dataset_image_input_outside_0_255_is_clipped_to_the_unit_range():
    """Float data-set images outside 0-255 (an 8-bit image rescaled, an interpolated one
    that overshoots) give network input in ``[0, 1]``, as documented: below 0 reads 0 (not
    the NaN of the square root of a negative number) and above 255 reads 1."""
    image = np.full((300, 300), 100.0)
    image[150, 150], image[150, 151], image[149, 150] = 400.0, -30.0, 255.0
    for stretch in ("sqrt", "linear"):
        out = radio.preprocess_dataset_image(image, stretch=stretch)[0]
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
        assert out[150 - 86, 150 - 86] == 1.0 and out[150 - 86, 151 - 86] == 0.0
        assert out[149 - 86, 150 - 86] == 1.0


def test_minor_axis_above_the_major_is_taken_as_the_major():
    """A header whose BMIN exceeds its BMAJ (3" x 6") is read as a circular beam of the
    major axis (`_beam_axes`: the minor axis is at most the major), so the 3" beam is
    smoothed to FIRST's as a 3" x 3" beam is, not left alone as a 6" minor axis would have
    it, nor given an area factor from the 6"."""
    image = np.random.default_rng(5).normal(0.0, 1.0, (1, 120, 120))
    image[0, 60, 60] += 50.0
    out, smoothed = radio.smooth_to_first_beam(image, [[3.0, 6.0, 20.0]])
    want, want_smoothed = radio.smooth_to_first_beam(image, [[3.0, 3.0, 0.0]])
    assert smoothed.tolist() == want_smoothed.tolist() == [True]
    np.testing.assert_array_equal(out, want)


def test_zero_pixel_scale_is_refused():
    """A pixel scale of zero is no scale (`to_arcsec` requires values above zero): an
    `InvalidArgumentError` naming it, not a division by zero on the way to the grid."""
    with pytest.raises(InvalidArgumentError, match="pixel_scale_arcsec"):
        radio.resample_to_first_grid(np.zeros((20, 20)), 0.0)
    with pytest.raises(InvalidArgumentError, match="pixel_scale_arcsec"):
        radio.smooth_to_first_beam(np.zeros((1, 20, 20)), [[2.0, 2.0, 0.0]],
                                   pixel_scale_arcsec=(1.0, 0.0))


def test_zero_threshold_is_allowed():
    """``threshold_sigma=0`` (documented minimum 0) clips at zero: every pixel above zero
    is scaled, the brightest to 255, and those at or below zero read 0."""
    image = np.zeros((300, 300))
    image[150, 150], image[150, 151], image[151, 150] = 2.0, 1.0, -1.0
    out = radio.first_cutout_to_uint8(image, rms=1.0, threshold_sigma=0)
    assert (out[150, 150], out[150, 151], out[151, 150]) == (255, 127, 0)
    assert out.sum(dtype=int) == 255 + 127


def test_clipped_background_keeps_pixels_exactly_at_the_clipping_width():
    """`background_significance` keeps the pixels ``abs(x - centre) <= 3 * rms``, the edge
    included (as the plain clipping loop does): with 20 % of the pixels at -5, 35 % at 0 and
    45 % at 3 and rms 1, the first clipping about the median 0 keeps the 0s and the 3s,
    whose median is 3; dropping the pixels exactly 3 away would leave 0."""
    values = np.repeat([-5.0, 0.0, 3.0], [18000, 31500, 40500])
    image = np.random.default_rng(3).permutation(values).reshape(300, 300)
    assert radio.background_significance(image, rms=1.0) == 3.0


def _ring_window(fill=0.0):
    return np.full((1, 300, 300), fill)


def test_rings_end_inside_the_window():
    """The rings of `_ring_levels` reach to 150 pixels from the centre, exclusive: the
    window's first row and column (150 pixels from the centre pixel 150, the only pixels at
    that distance: the window ends at 149 on the other side) belong to no ring, so the rings
    are symmetric about the centre. A deep deficit there is no ring below zero."""
    window = _ring_window()
    window[0, 150, 150] = 50.0
    window[0, 0, :] = window[0, :, 0] = -100.0
    assert np.isnan(radio._ring_levels(window, np.array([1.0]))).all()
    ring, count = radio._RINGS
    assert count == 150 // radio._RING_PIXELS + 1
    assert (ring[0, :] == -1).all() and (ring[:, 0] == -1).all()
    assert (ring[1:, 1:] == ring[1:, 1:][::-1, ::-1]).all()


@pytest.mark.parametrize("peak, counted", [(2552.0, True), (2554.0, False)])
def test_ring_depth_is_judged_in_steps_above_the_threshold(peak, counted):
    """A ring counts only below ``RING_MIN_STEPS`` 8-bit steps of the data-set scaling, a
    step being ``(peak - threshold) / 255`` with the threshold at 3 rms: a ring 1 rms below
    zero (rms 1) counts for a peak of 2552 (0.1 steps = 0.99961) and not of 2554 (1.00039);
    a step of ``peak / 255`` (the threshold forgotten) would put the bound at 2550."""
    window = _ring_window()
    window[0, 150, 150] = peak
    yy, xx = np.mgrid[:300, :300]
    r = np.hypot(yy - 150, xx - 150)
    window[0][(r >= 40) & (r < 48)] = -1.0  # the ring of inner radius 40 (on the even grid)
    out = radio._ring_levels(window, np.array([1.0]))[0]
    if counted:
        assert out[0] == -1.0 and out[1] == 40
    else:
        assert np.isnan(out).all()


def test_bin_factor_averages_square_blocks_of_adjacent_pixels():
    """``bin_factor=2`` averages each 2 x 2 block of adjacent pixels of the central window
    (not pixels a half window apart)."""
    image = np.random.default_rng(4).integers(0, 256, (300, 300)).astype(np.uint8)
    out = radio.preprocess_dataset_image(image, bin_factor=2, stretch="linear")[0]
    window = image[86:214, 86:214].astype(np.float64)
    want = window.reshape(64, 2, 64, 2).mean(axis=(1, 3)) / 255
    assert out.shape == (64, 64)
    np.testing.assert_allclose(out, want, rtol=1e-6)


def test_noise_is_measured_on_the_dataset_window_only():
    """Without ``rms=``, the noise is measured on the central 300 x 300 window (as the data
    set's 300 x 300 cutouts were), not on the whole image: a larger image whose outskirts
    are ten times as noisy gives the same 8-bit image as its central window alone."""
    rng = np.random.default_rng(6)
    image = rng.normal(0.0, 10.0, (500, 500))
    image[100:400, 100:400] = rng.normal(0.0, 1.0, (300, 300))
    image[250, 250] = 100.0
    out = radio.first_cutout_to_uint8(image)
    np.testing.assert_array_equal(out, radio.first_cutout_to_uint8(image[100:400, 100:400]))
    assert (out > 0).sum() > 10  # the 3-sigma noise peaks of the window pass


def test_ring_means_take_pixels_below_the_threshold_only():
    """The ring means of `_ring_levels` are of the pixels below the data-set threshold
    (3 rms), strictly: pixels exactly at it belong to the source side, as the data-set
    scaling puts them at 0 with the emission above. A ring of pixels at -2 rms and at
    exactly 3 rms reads -2, not the 0.5 of both."""
    window = _ring_window()
    window[0, 150, 150] = 50.0
    yy, xx = np.mgrid[:300, :300]
    r = np.hypot(yy - 150, xx - 150)
    window[0][(r >= 40) & (r < 48)] = np.where((xx % 4 == 0), 3.0, -2.0)[(r >= 40) & (r < 48)]
    out = radio._ring_levels(window, np.array([1.0]))[0]
    assert out[0] == -2.0 and out[1] == 40


def test_ring_of_a_nan_padded_window_still_counts():
    """A cutout smaller than the data-set window is NaN-padded to it; its 8-bit step is
    taken from its brightest valid pixel (NaN ignored), so a deep ring about its centre
    still counts (a NaN peak would make every step NaN and hide every ring)."""
    window = _ring_window(np.nan)
    window[0, 50:250, 50:250] = 0.0
    window[0, 150, 150] = 50.0
    yy, xx = np.mgrid[:300, :300]
    r = np.hypot(yy - 150, xx - 150)
    window[0][(r >= 40) & (r < 48)] = -1.0
    out = radio._ring_levels(window, np.array([1.0]))[0]
    assert out[0] == -1.0 and out[1] == 40


@pytest.mark.parametrize("sampler", ["resample_to_first_grid", "_sample_on_first_grid"])
def test_first_grid_reaching_the_last_pixel_centre_exactly_is_on_the_image(sampler):
    """A 599 x 599 image of 0.9" pixels: the 300 x 300 FIRST grid (2 pixels a step) spans
    pixel centres 0 to 598 exactly, both ends on the image (the last pixel's centre is
    inside, as the first's is): a constant image gives its value on every grid point, none
    NaN."""
    out = getattr(radio, sampler)(np.full((599, 599), 3.0), 0.9)
    assert out.shape == (300, 300)
    np.testing.assert_allclose(out, 3.0, rtol=1e-12)


@pytest.mark.parametrize("value", [2, -1, np.int64(2)])
def test_bool_option_refuses_an_integer_other_than_0_and_1(value):
    """``quantize`` takes True, False, 0 or 1: another integer is an
    `InvalidArgumentTypeError` naming the option and the value, not taken as True."""
    from astromorph.exceptions import InvalidArgumentTypeError

    with pytest.raises(InvalidArgumentTypeError, match="quantize must be True or False, got "
                                                       + re.escape(repr(value))):
        radio.first_cutout_to_uint8(np.zeros((300, 300)), rms=1.0, quantize=value)


@pytest.mark.parametrize("crop, factor", [(150, 4), (7, 2)])
def test_crop_that_is_no_multiple_of_the_bin_factor_is_refused(crop, factor):
    """``crop_pixels`` must be a multiple of ``bin_factor`` (the window is binned into
    whole blocks): another is an `InvalidArgumentError` naming both."""
    with pytest.raises(InvalidArgumentError, match=rf"crop_pixels \({crop}\) must be a positive "
                                                   rf"multiple of bin_factor \({factor}\)"):
        radio.preprocess_dataset_image(np.zeros((300, 300), np.uint8), crop_pixels=crop,
                                       bin_factor=factor)
