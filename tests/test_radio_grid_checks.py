"""Radio preprocessing details that the wider radio tests leave open: the FIRST grid of
pixels that are FIRST's along one axis only, and the extent of the grid that
`_sample_on_first_grid` reads on an image smaller than the grid."""
import numpy as np
import pytest

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
    the edge pixels' values repeated outwards (a bright edge smeared over the field)."""
    image = np.random.default_rng(3).normal(1.0, 0.1, (301, 341))
    cubic = radio._sample_on_first_grid(image, scale)
    bilinear = radio.resample_to_first_grid(image, scale)
    assert 0.05 < np.isnan(bilinear).mean() < 0.95
    np.testing.assert_array_equal(np.isnan(cubic), np.isnan(bilinear))
    limited = radio._sample_beam_limited(image[None], scale)[0]
    np.testing.assert_array_equal(np.isnan(limited), np.isnan(bilinear))
