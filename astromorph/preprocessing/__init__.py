"""Numpy preprocessing shared by inference and by the training/ subproject.

Every shipped model is fed through exactly one function here, both when it is
trained (``training/`` imports these functions) and when astromorph runs it;
each model card names its function (``input.preprocessing``).

The functions are available here; each family's constants (stamp sizes,
stretches, pixel scales) live in its namespace: `optical` (``morphology``,
``morphology-gz2``, ``embedding``), `radio` (``radio-morphology``) and
`triplet` (``real-bogus``).
"""
from . import _optical as optical
from . import _radio as radio
from . import _triplet as triplet
from ._optical import (area_resample, cutout_size_from_petrosian, gri_to_rgb,
                       preprocess_colour_cutout, preprocess_gri, preprocess_optical,
                       preprocess_single_band, single_band_to_rgb, stamp_size_from_petrosian)
from ._radio import (background_significance, first_cutout_to_uint8, peak_significance,
                     pixel_scale_from_wcs,
                     preprocess_dataset_image, preprocess_first_cutout, preprocess_radio_image,
                     resample_to_first_grid, sigma_clipped_rms, smooth_to_first_beam)
from ._triplet import preprocess_triplet, resample_triplet

__all__ = [
    "optical", "radio", "triplet",
    # optical galaxy images
    "preprocess_optical", "preprocess_colour_cutout", "preprocess_gri", "preprocess_single_band",
    "gri_to_rgb", "single_band_to_rgb", "area_resample", "cutout_size_from_petrosian",
    "stamp_size_from_petrosian",
    # radio images
    "preprocess_dataset_image", "preprocess_first_cutout", "preprocess_radio_image",
    "first_cutout_to_uint8", "resample_to_first_grid", "pixel_scale_from_wcs",
    "smooth_to_first_beam", "sigma_clipped_rms", "peak_significance", "background_significance",
    # difference-imaging triplets
    "preprocess_triplet", "resample_triplet",
]
