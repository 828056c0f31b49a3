"""Bad option values of the public functions raise typed errors that name the value
(`InvalidArgumentError`; `InvalidArgumentTypeError`, also a TypeError, for a value of the
wrong type), never a numpy, astropy or Python error from deep inside."""
import numpy as np
import pytest
from astropy.table import Table

import astromorph
from astromorph import preprocessing as pp
from astromorph.exceptions import InvalidArgumentError, InvalidArgumentTypeError

IMG = np.random.default_rng(0).normal(0, 1, (64, 64)).astype(np.float32)
RADIO = np.random.default_rng(1).normal(0, 1e-4, (300, 300))
TRIP = np.random.default_rng(2).normal(0, 1, (3, 63, 63))
TYPE, VALUE = InvalidArgumentTypeError, InvalidArgumentError

PREPROCESSING = [
    (lambda: pp.sigma_clipped_rms(RADIO, sigma="x"), TYPE, "sigma"),
    (lambda: pp.sigma_clipped_rms(RADIO, sigma=None), TYPE, "sigma"),
    (lambda: pp.sigma_clipped_rms(RADIO, sigma=[1, 2]), TYPE, "sigma"),
    (lambda: pp.sigma_clipped_rms(RADIO, sigma=-1), VALUE, "sigma"),
    (lambda: pp.sigma_clipped_rms(RADIO, sigma=0), VALUE, "sigma"),
    (lambda: pp.sigma_clipped_rms(RADIO, sigma=np.nan), VALUE, "sigma"),
    (lambda: pp.sigma_clipped_rms(RADIO, maxiters="x"), TYPE, "maxiters"),
    (lambda: pp.sigma_clipped_rms(RADIO, maxiters=2.5), VALUE, "maxiters"),
    (lambda: pp.sigma_clipped_rms(RADIO, maxiters=-1), VALUE, "maxiters"),
    (lambda: pp.pixel_scale_from_wcs(None), TYPE, "None"),
    (lambda: pp.pixel_scale_from_wcs("x"), TYPE, "'x'"),
    (lambda: pp.preprocess_radio_image(RADIO, wcs=3), TYPE, "wcs"),
    (lambda: pp.peak_significance(RADIO, rms="x"), TYPE, "rms"),
    (lambda: pp.peak_significance(RADIO, rms=-1), VALUE, "rms"),
    (lambda: pp.first_cutout_to_uint8(RADIO, rms="x"), TYPE, "rms"),
    (lambda: pp.first_cutout_to_uint8(RADIO, threshold_sigma="x"), TYPE, "threshold_sigma"),
    (lambda: pp.first_cutout_to_uint8(RADIO, threshold_sigma=np.nan), VALUE, "threshold_sigma"),
    (lambda: pp.first_cutout_to_uint8(RADIO, threshold_sigma=-1), VALUE, "threshold_sigma"),
    (lambda: pp.first_cutout_to_uint8(RADIO, size=0), VALUE, "size"),
    (lambda: pp.first_cutout_to_uint8(RADIO, size=-5), VALUE, "size"),
    (lambda: pp.first_cutout_to_uint8(RADIO, size=2.5), VALUE, "size"),
    (lambda: pp.first_cutout_to_uint8(RADIO, size="x"), TYPE, "size"),
    (lambda: pp.first_cutout_to_uint8(RADIO, quantize="no"), TYPE, "quantize"),
    (lambda: pp.preprocess_first_cutout(RADIO, rms="x"), TYPE, "rms"),
    (lambda: pp.preprocess_radio_image(RADIO, rms="x"), TYPE, "rms"),
    (lambda: pp.resample_to_first_grid(RADIO, 1.0, size=0), VALUE, "size"),
    (lambda: pp.resample_to_first_grid(RADIO, 1.0, size="x"), TYPE, "size"),
    (lambda: pp.resample_to_first_grid(RADIO, "x"), TYPE, "pixel_scale_arcsec"),
    (lambda: pp.gri_to_rgb(IMG, IMG, IMG, q="x"), TYPE, "q"),
    (lambda: pp.gri_to_rgb(IMG, IMG, IMG, stretch="x"), TYPE, "stretch"),
    (lambda: pp.gri_to_rgb(IMG, IMG, IMG, stretch=np.nan), VALUE, "stretch"),
    (lambda: pp.gri_to_rgb(IMG, IMG, IMG, minimum="x"), TYPE, "minimum"),
    (lambda: pp.gri_to_rgb(IMG, IMG, IMG, minimum=[1, 2]), VALUE, "minimum"),
    (lambda: pp.gri_to_rgb(IMG, IMG, IMG, band_scales="x"), TYPE, "band_scales"),
    (lambda: pp.gri_to_rgb(IMG, IMG, IMG, band_scales={"g": "a", "r": 1, "i": 1}), TYPE,
     "band_scales['g']"),
    (lambda: pp.single_band_to_rgb(IMG, q="x"), TYPE, "q"),
    (lambda: pp.single_band_to_rgb(IMG, minimum="x"), TYPE, "minimum"),
    (lambda: pp.preprocess_single_band(IMG, stretch="x"), TYPE, "stretch"),
    (lambda: pp.preprocess_gri(IMG, IMG, IMG, q=None), TYPE, "q"),
    (lambda: pp.preprocess_triplet(TRIP, return_flags="no"), TYPE, "return_flags"),
]


def _check(call, error, text):
    with pytest.raises(error) as info:
        call()
    assert text in str(info.value)


@pytest.mark.parametrize("call, error, text", PREPROCESSING)
def test_preprocessing_bad_options(call, error, text):
    _check(call, error, text)


def test_type_errors_are_type_errors():
    assert issubclass(InvalidArgumentTypeError, TypeError)
    assert issubclass(InvalidArgumentTypeError, InvalidArgumentError)
