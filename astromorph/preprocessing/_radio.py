"""Preprocessing for the radio galaxy morphology model (``radio-morphology``).

The network was trained on the FIRST radio galaxy data set of Griese et al.
(2023, Data in Brief 47, 108974; PyPI package ``firstgalaxydata``): 2,158
images from the VLA FIRST survey (1.4 GHz, 5.4 arcsec beam, typical noise
0.15 mJy/beam) labelled FRI, FRII, compact or bent. Each data-set image was
made from a FIRST cutout as follows (the data-set paper; the image statistics
of the released files confirm every step, see `first_cutout_to_uint8`):

1. a 300 x 300 pixel SkyView cutout at the native FIRST pixel scale of
   1.8 arcsec (`FIRST_PIXEL_SCALE_ARCSEC`), i.e. 9 x 9 arcmin centred on the
   source (`DATASET_IMAGE_PIXELS`),
2. every pixel below three times the local noise RMS
   (`DATASET_THRESHOLD_SIGMA`) is set to that threshold,
3. the image is scaled linearly so that the threshold maps to 0 and the
   brightest pixel of the cutout to 255, and stored as an 8-bit grey image.

The network input is made from such an 8-bit image by one function,
`preprocess_dataset_image`:

1. keep the central `CROP_PIXELS` x `CROP_PIXELS` pixels (3.84 arcmin; the
   sources are centred and nearly all are smaller than this),
2. area-average blocks of `BIN_FACTOR` x `BIN_FACTOR` pixels (1: the native
   1.8 arcsec pixels, 3 per FIRST beam, are kept; the option exists for
   coarser variants), giving `STAMP_SIZE` x `STAMP_SIZE` pixels,
3. divide by 255 and take the square root (`STRETCH`), which lifts the faint
   lobes and jets that the linear 8-bit scale crushes: float32
   ``(1, STAMP_SIZE, STAMP_SIZE)`` in ``[0, 1]``.

Radio images in surface brightness (Jy/beam) take one more step in front:
`first_cutout_to_uint8` reproduces the data-set procedure (noise estimate,
threshold, linear scaling to 0-255, 8-bit quantisation) on a FIRST cutout
at 1.8 arcsec per pixel, and `preprocess_first_cutout` chains it with
`preprocess_dataset_image`. Images on other pixel grids (with a WCS) are
resampled to 1.8 arcsec per pixel first by `preprocess_radio_image`
(`resample_to_first_grid`; ``reproject`` onto a 300 x 300 grid of that scale
does the same for arbitrary projections); the network sees
``STAMP_ANGULAR_SIZE_ARCSEC`` = 230.4 arcsec around the centre.

The noise RMS is measured on the 300 x 300 cutout by iterative 3-sigma
clipping about the median (`sigma_clipped_rms`); pass ``rms=`` to use a known
value (e.g. from the FIRST RMS maps) instead.
"""
import os

import numpy as np

from ..exceptions import (InputError, InputShapeError, InvalidArgumentError,
                          InvalidArgumentTypeError)
from ._checks import (SENTINEL, axis_scales, check_bool, check_choice, check_number, check_options,
                      check_whole, invalid_pixels, is_whole, real_array, to_arcsec)

__all__ = [
    "FIRST_PIXEL_SCALE_ARCSEC",
    "FIRST_BEAM_FWHM_ARCSEC",
    "FIRST_TYPICAL_RMS_JY",
    "DATASET_IMAGE_PIXELS",
    "DATASET_ANGULAR_SIZE_ARCSEC",
    "DATASET_THRESHOLD_SIGMA",
    "CROP_PIXELS",
    "BIN_FACTOR",
    "STAMP_SIZE",
    "STAMP_PIXEL_SCALE_ARCSEC",
    "STAMP_ANGULAR_SIZE_ARCSEC",
    "STRETCH",
    "RADIO_LABELS",
    "DETECTION_SIGMA",
    "MAX_POSITIVE_FRACTION",
    "MAX_BACKGROUND_SIGMA",
    "MIN_BACKGROUND_SIGMA",
    "MIN_RING_SIGMA",
    "RING_SIGNIFICANCE",
    "RING_MIN_STEPS",
    "sigma_clipped_rms",
    "peak_significance",
    "background_significance",
    "first_cutout_to_uint8",
    "preprocess_dataset_image",
    "preprocess_first_cutout",
    "preprocess_radio_image",
    "resample_to_first_grid",
    "smooth_to_first_beam",
    "pixel_scale_from_wcs",
]

#: Native FIRST image pixel scale (arcsec per pixel) of the training images.
FIRST_PIXEL_SCALE_ARCSEC = 1.8
#: FIRST restoring beam FWHM in arcsec (Becker, White & Helfand 1995).
FIRST_BEAM_FWHM_ARCSEC = 5.4
#: A restoring beam whose minor axis is below this fraction of FIRST's is finer than the
#: model's resolution in some direction: `smooth_to_first_beam` brings it to the smallest
#: beam that contains FIRST's before scoring. Within 10 % the beam is FIRST's as headers quote
#: it (5.4", or 6.4" x 5.4" in the south, rounded), and the kernel it would take, below 2.4"
#: FWHM, is finer than one 1.8" pixel.
BEAM_MATCH_FRACTION = 0.9
#: Typical FIRST noise level in Jy/beam (0.15 mJy/beam).
FIRST_TYPICAL_RMS_JY = 1.5e-4
#: Side in pixels of the data-set images (300 x 300 at 1.8 arcsec).
DATASET_IMAGE_PIXELS = 300
#: Side of the data-set images in arcsec (540 arcsec = 9 arcmin).
DATASET_ANGULAR_SIZE_ARCSEC = DATASET_IMAGE_PIXELS * FIRST_PIXEL_SCALE_ARCSEC
#: Pixels below this many times the noise RMS are set to the threshold.
DATASET_THRESHOLD_SIGMA = 3.0
#: Side in pixels of the central window of a data-set image fed to the network.
CROP_PIXELS = 128
#: Block size of the area-averaging of that window.
BIN_FACTOR = 1
#: Side of the network stamp in pixels.
STAMP_SIZE = CROP_PIXELS // BIN_FACTOR
#: Pixel scale of the network stamp in arcsec (1.8).
STAMP_PIXEL_SCALE_ARCSEC = FIRST_PIXEL_SCALE_ARCSEC * BIN_FACTOR
#: Side of the network stamp in arcsec (230.4 arcsec = 3.84 arcmin).
STAMP_ANGULAR_SIZE_ARCSEC = CROP_PIXELS * FIRST_PIXEL_SCALE_ARCSEC
#: Intensity stretch applied to the [0, 1] scaled stamp.
STRETCH = "sqrt"
#: Peak signal-to-noise a source must reach in the network's field to count as detected
#: (the FIRST catalogue's 5-sigma limit): every source of the training data is a catalogued
#: FIRST source, so a stamp without one holds only noise peaks, which the data-set scaling
#: would stretch to full range like a source.
DETECTION_SIGMA = 5.0
#: Largest fraction of the network input's pixels above zero (above the data-set threshold)
#: of an in-distribution image: beyond it `astromorph.Flag.OUT_OF_DISTRIBUTION`. The
#: threshold counts from zero, so a source on a background 3 to 10 sigma above zero passes
#: 30-100 % of the offset noise and the model sees a grey field it never saw. Chosen on the
#: train split of the data set (firstgalaxydata 0.2.1, 1,758 images through
#: `preprocess_dataset_image`): median 0.013, 99th percentile 0.070, 99.9th 0.097, maximum
#: 0.128. Rule: the train maximum rounded up to the next 0.05. No train image and none of
#: the 200 valid images (maximum 0.108) exceeds it.
MAX_POSITIVE_FRACTION = 0.15
#: Largest background of an in-distribution cutout in flux units, in units of its noise RMS
#: (`background_significance`: the sigma-clipped median of the data-set window): beyond it
#: `astromorph.Flag.OUT_OF_DISTRIBUTION`. FIRST maps are background-subtracted, so the
#: data-set threshold of 3 times the noise counts from a zero background; on a positive
#: pedestal the noise passes it and speckles the network input, yet a 2-sigma pedestal puts
#: only 12 % of the network input above zero (below `MAX_POSITIVE_FRACTION`). Measured on
#: FIRST-like cutouts (0.15 mJy/beam noise correlated over the 5.4 arcsec beam, 1.8 arcsec
#: pixels, 200 fields each): without a pedestal the criterion scatters by 0.017 (maximum
#: 0.043 for noise alone, 0.046 with a double source, 0.12 with a double of
#: 65 arcsec FWHM lobes);
#: pedestals of 0.5, 1, 2, 3 sigma read 0.48-0.51, 0.98-1.01, 2.00-2.03, 3.01-3.04. The
#: train split (8-bit images, in which the background is not measurable) read as a zero
#: background with unit noise below the threshold gives at most 0.015 (0 of 1,758 flagged),
#: and none of its images shows the uniform excess of pixels above zero that a pedestal of
#: 1 sigma leaves in the 8-bit image. Rule: 0.5, so that pedestals of 1 sigma and more are
#: flagged (about half of those of 0.5 sigma).
MAX_BACKGROUND_SIGMA = 0.5
#: Lowest background of an in-distribution cutout in flux units, in units of its noise RMS
#: (`background_significance`): below it `astromorph.Flag.OUT_OF_DISTRIBUTION`. On a
#: pedestal ``b`` sigma below zero the data-set threshold, counted from zero, lies
#: ``3 + b`` times the noise above the background: the noise no longer passes it (on
#: FIRST-like cutouts with a double, as for `MAX_BACKGROUND_SIGMA`, a median 0.05 % of the
#: pixels beyond 100 pixels from the centre pass on a zero background, never fewer than
#: 0.02 % in 30 fields; 0.007 % 0.5 sigma below zero, none 1 sigma below), and the
#: source's faint emission is cut. The first is common in the training data: 338 of the
#: 1,758 train images (19 %) have no pixel above zero beyond 100 pixels from the centre,
#: as a pedestal 1 sigma below zero leaves (or a noise estimate a third too high). The
#: threshold reaches the catalogue's 5-sigma detection limit (`DETECTION_SIGMA`) at
#: -2 sigma. The largest change of a class
#: probability (mean of 20 noise fields) at -2 sigma: 0.16 for a double with 12-15 sigma
#: lobes of 50-60 arcsec FWHM (as much at -1 sigma, 0.10 at -0.5; 0.26 for a +1-sigma
#: pedestal), 0.08 for a compact 20-sigma source (0.19 at -3 sigma, 0.02 at -1), 0.04 for
#: an FRII double with 80-sigma lobes, 0.02 for an FRI with 25-sigma jets.
#: Without a pedestal the criterion's minimum is -0.042 for noise alone (200 fields,
#: scatter 0.016), -0.11 for a 1 Jy source in a bowl 2 sigma deep (a Gaussian of 1 arcmin
#: sigma) with ringing sidelobes of 0.1 % of its peak, -0.21 in a bowl 6 sigma deep, -0.040
#: with the 80-sigma FRII double. Rule: -1.5, so that pedestals of 2 sigma and more below
#: zero are flagged by this bound and those of 1 sigma, whose noise in the network input is
#: like that of a fifth of the training images, are not (what this bound flags is a
#: threshold beyond the catalogue's detection limit). Pedestals of 0.5 to 1.5 sigma below
#: zero, which change the class of 4.5-9.5 % of the rebuilt data-set cutouts, are flagged
#: by the rings about the centre (`MIN_RING_SIGMA`).
MIN_BACKGROUND_SIGMA = -1.5
#: Width in pixels of the strips along the four edges of the data-set window whose
#: backgrounds (`_edge_levels`) are judged by `MAX_BACKGROUND_SIGMA` and
#: `MIN_BACKGROUND_SIGMA` like the whole window's: a pedestal over part of the cutout (one
#: half offset, as at the edge of a mosaic tile or on a badly subtracted image) moves the
#: whole window's clipped median by a fraction of its depth (-0.70 sigma for a half 2 sigma
#: below zero, +0.45 for one 1 sigma above, +-0.29 for a 75-pixel edge strip 2 sigma off)
#: and inflates the noise estimate, which raises the data-set threshold. On 200 valid and
#: test images of the data set made Jy-like (8-bit values above the threshold at a peak of
#: 15-300 sigma, beam-correlated noise below it; the clean cutouts give the data set's
#: network input exactly) the largest class-probability change (median / 90th percentile)
#: and the share of changed classes were 0.023 / 0.50 and 12 % for a half 2 sigma below
#: zero, 0.021 / 0.28 and 10 % for a half 1 sigma above, 0.015 / 0.31 and 10 % for an edge
#: strip 2 sigma below (a whole -2-sigma pedestal: 0.023 / 0.57 and 14 %), none flagged.
#: The strips lie outside the network's field (`CROP_PIXELS`), where centred sources rarely
#: reach: measured in units of their own noise they read -0.12 to +0.10 on the clean
#: cutouts and within 0.2 sigma of an offset they lie on.
_EDGE_STRIP_PIXELS = 75
#: Lowest mean, in units of the noise RMS, of the background in a ring about the centre of
#: the data-set window (rings 8 pixels wide from 8 to 150 pixels from the centre, of the
#: pixels below the data-set threshold) of an in-distribution cutout in flux units, when
#: the ring lies below zero by more than `RING_SIGNIFICANCE` times the uncertainty of its
#: mean: beyond both `astromorph.Flag.OUT_OF_DISTRIBUTION`. A negative bowl around the source
#: (missing short spacings or poor deconvolution in an interferometric map: a ring or a
#: broad depression a few sigma deep) moves the whole window's clipped median by a tenth of
#: its depth and no edge strip, yet the data-set threshold, counted from zero, cuts the
#: source where it lies: on 200 test images of the data set rebuilt as Jy/beam cutouts
#: (8-bit values above the threshold at a peak of 15-300 sigma, beam-correlated noise below
#: it; the clean cutouts give the data set's network input), a Gaussian ring of 5 pixels
#: sigma 3 beams outside the source 1, 2, 3 sigma deep changed the class of 1.5, 4, 4.5 %,
#: a bowl of 1 arcmin sigma 7, 15, 18 %, and whole pedestals of -0.5 and -1 sigma
#: (above `MIN_BACKGROUND_SIGMA`) 4.5 and 9.5 %, against 0.5 % for the noise drawn anew.
#: On the 400 clean test and valid cutouts (and as many with the noise drawn anew) the lowest
#: ring mean is -0.58 and the most significant -3.97 times its uncertainty; none is flagged.
#: Rule: -0.5 (as `MAX_BACKGROUND_SIGMA` above zero), with 5 for the significance: the
#: rings 1, 2, 3 sigma deep are flagged in 91.5, 100, 100 %, the bowls in 97, 100, 100 %,
#: the pedestals of -0.5 and -1 sigma in 100 %.
MIN_RING_SIGMA = -0.5
#: How many times the uncertainty of its mean a ring about the centre must lie below zero
#: to count against `MIN_RING_SIGMA` (the noise of the innermost rings scatters their means
#: by up to 0.2 sigma): the uncertainty is the noise over the square root of the number of
#: independent samples, the ring's area over 4 pi times the square of the beam's sigma (the
#: correlation area of noise smoothed by the beam; FIRST's own noise, correlated over the
#: beam itself, has half as large an area, which makes the test conservative there).
RING_SIGNIFICANCE = 5.0
#: How many 8-bit steps of the data-set scaling (``(peak - threshold) / 255``: the network
#: sees the cutout quantised so, its brightest pixel 255 steps above the threshold) a ring
#: about the centre must also lie below zero to count against `MIN_RING_SIGMA`. A deficit
#: of a small fraction of a step moves the source's pixels by that fraction of a unit and
#: cuts only emission the scaling puts at 0 anyway, far less than the data set's own
#: truncation to integers (0 to 1 step, 0.29 RMS). It keeps noise-free images (simulations)
#: in: rounding in the smoothing and resampling leaves values of 1e-7 to 2e-6 of the peak
#: below zero near the source, at most 5e-4 steps in the radio tests, which in units of a
#: noise estimate of 1e-9 to 1e-20 of the peak read as rings 0.7 to 3e10 sigma below zero.
#: Rule: 0.1 (a tenth of the truncation's range, a third of its RMS), 200 times those
#: values; a ring at `MIN_RING_SIGMA` exceeds it up to peaks of 1,280 sigma (the rings,
#: bowls and pedestals measured above, at peaks of 15-300 sigma: at least 0.43 steps), the
#: 6-sigma bowl of a 1 Jy source (peak 6,700 sigma) reads 0.23 steps.
RING_MIN_STEPS = 0.1
#: Width in pixels of the rings of `_ring_levels`.
_RING_PIXELS = 8
#: Names of the strips of `_edge_levels`, in order, as the FITS array is displayed (first
#: row at the bottom).
_EDGE_NAMES = ("bottom", "top", "left", "right")


#: Class labels of the model outputs, in order.
RADIO_LABELS = ("FRI", "FRII", "compact", "bent")


def sigma_clipped_rms(image, *, sigma=3.0, maxiters=10):
    """Noise RMS of an image by iterative sigma clipping about the median.

    Parameters
    ----------
    image : array_like
        Image (any shape); NaN, infinite values, masking sentinels
        (``|value| >= 1e30``, e.g. ZTF's -3.4e38) and masked pixels of a
        `numpy.ma.MaskedArray` are ignored.
    sigma : float, optional
        Clipping threshold in units of the current standard deviation.
    maxiters : int, optional
        Maximum number of clipping iterations.

    Returns
    -------
    float
        Standard deviation of the pixels that survive clipping (0 when there
        are none).

    Raises
    ------
    astromorph.exceptions.InvalidArgumentError
        For a ``sigma`` that is not a positive number or a ``maxiters`` that is
        not a whole number >= 0 (`~astromorph.exceptions.InvalidArgumentTypeError`
        for non-numbers).
    """
    sigma = check_number(sigma, "sigma", positive=True)
    maxiters = check_whole(maxiters, "maxiters", minimum=0)
    values = real_array(image, "image").astype(np.float64).ravel()
    values = values[~invalid_pixels(values)]
    if values.size == 0:
        return 0.0
    # the pixels kept are always those within a distance of the median: a run of the sorted
    # values, whose middle gives the median without a partition per iteration (the std
    # is still taken over ``values`` in their order, as before: the same float sums)
    ordered = np.sort(values)
    for _ in range(maxiters):
        middle = ordered.size // 2
        centre = np.median(ordered[middle - 1 + ordered.size % 2:middle + 1])
        std = values.std()
        keep = np.abs(values - centre) <= sigma * std
        if keep.all() or keep.sum() < 2:
            break
        values = values[keep]
        run = np.flatnonzero(np.abs(ordered - centre) <= sigma * std)
        ordered = ordered[run[0]:run[-1] + 1]
    return float(values.std())


#: Images whose noise `_sigma_clipped_rms_stack` measures together: its working memory is
#: a float64 copy of this many images and their sorted pixels (23 and 11.5 MB at
#: 300 x 300 float32).
_RMS_BLOCK = 32
#: Sorted values summed per block for `_sigma_clipped_rms_stack`'s prefix sums.
_PREFIX_BLOCK = 64
#: Rows of `_clipped_rms_block` squared at a time for the prefix sums of the squares.
_SQUARE_ROWS = 4
#: `background_significance` clips at this many times the RMS about the median, ...
_BACKGROUND_SIGMA = 3.0
#: ... this many times.
_BACKGROUND_ITERS = 5


def _sigma_clipped_rms_stack(stack, *, sigma=3.0, maxiters=10, background=False):
    """`sigma_clipped_rms` of each image of a stack, measured together: the same floats.

    Each image is sorted once (float32 input in float32: widening keeps the order) and
    its clipped set kept as a run ``[lo, hi)`` of its sorted pixels: the median is read
    off the run's middle, the std off prefix sums of the (shifted) sorted values, and the
    new run's edges are found by bisection with the test `sigma_clipped_rms` makes,
    ``abs(x - centre) <= sigma * std`` in float64. The prefix-sum std differs from
    numpy's two-pass std of the same pixels in the last bits, so each edge is found for
    a threshold below and one above any value numpy's std can take (a rounding-error
    bound); an image for which they differ (a pixel within that bound of the threshold)
    is measured by `sigma_clipped_rms` itself. The result is the std of the final run's
    pixels in their original order, as `sigma_clipped_rms` returns it.

    Parameters
    ----------
    stack : array_like
        ``(N, ...)``: one image per row of the first axis (invalid and masked pixels
        as for `sigma_clipped_rms`). Options are not checked (private).
    background : bool, optional
        Also return the backgrounds that `peak_significance` and
        `background_significance` measure with these RMS values (`_clipped_median_sorted`:
        the median and the clipped median), read off the same sorted pixels.

    Returns
    -------
    numpy.ndarray or tuple of numpy.ndarray
        float64 ``(N,)``; with ``background``, ``(rms, median, clipped_median)`` (the
        medians NaN where an image has no valid pixel).
    """
    stack = _float_stack(stack)
    flat = stack.reshape(len(stack), int(np.prod(stack.shape[1:], dtype=np.int64)))
    out = np.zeros((3, len(flat)))
    for start in range(0, len(flat), _RMS_BLOCK):
        block = slice(start, start + _RMS_BLOCK)
        out[:, block] = _clipped_rms_block(flat[block], float(sigma), int(maxiters),
                                           background)
    return tuple(out) if background else out[0]


def _float_stack(stack):
    """``stack`` as real numbers in float32 (if it is float32) or float64."""
    stack = real_array(stack, "image")
    return stack if stack.dtype == np.float32 else stack.astype(np.float64, copy=False)


def _sorted_rows(x):
    """The rows of ``x`` (``(B, M)``) sorted, and the run ``[lo, hi)`` of their valid pixels.

    The invalid pixels sort to the ends (-inf and negative sentinels first; positive ones,
    +inf and NaN last), so the valid ones are a run of the sorted row.
    """
    ordered = np.sort(x, axis=1)
    count = x.shape[1] - np.count_nonzero(invalid_pixels(x), axis=1)
    lo = np.count_nonzero(x <= -SENTINEL, axis=1).astype(np.intp)
    return ordered, lo, lo + count


def _run_median(ordered, r, lo, hi):
    """np.median of the run ``[lo, hi)`` (not empty) of sorted rows ``r``: its middle value,
    or the mean of its two middle ones, in float64 as np.median computes it."""
    m = hi - lo
    odd = m % 2 == 1
    upper = ordered[r, lo + m // 2].astype(np.float64)
    lower = ordered[r, lo + m // 2 - 1 + odd].astype(np.float64)
    return np.where(odd, upper, (lower + upper) / 2)


def _clipped_rms_block(x, sigma, maxiters, background=False):
    """`_sigma_clipped_rms_stack` of the rows of ``x`` (float32 or float64 ``(B, M)``):
    ``(rms, median, clipped_median)``, the medians `_clipped_median_sorted` at ``3 * rms``
    with ``background`` (else NaN)."""
    nan = np.full(len(x), np.nan)
    eps = np.finfo(np.float64).eps
    ordered, lo, hi = _sorted_rows(x)
    count = hi - lo
    valid_lo, valid_hi = lo.copy(), hi.copy()  # (the clipping narrows lo and hi)
    out = np.zeros(len(x))
    active = count > 0
    rows = np.flatnonzero(active)
    if rows.size == 0:
        return out, nan, nan

    def centre(r, lo, hi):
        return _run_median(ordered, r, lo, hi)

    # sums of the first k sorted values less the first median (the shift keeps them small)
    # and of their squares: cumulative sums of blocks of _PREFIX_BLOCK values, plus the
    # values of the last, partial block (a cumulative sum of every value costs more)
    shift = np.zeros(len(x))
    shift[rows] = centre(rows, lo[rows], hi[rows])
    size = x.shape[1]
    blocks = -(-size // _PREFIX_BLOCK)
    d = np.zeros((len(x), blocks * _PREFIX_BLOCK))
    np.subtract(ordered, shift[:, None], out=d[:, :size])
    for i in np.flatnonzero(count < size):  # invalid pixels add nothing
        d[i, :lo[i]] = 0.0
        d[i, hi[i]:] = 0.0
    # the squares are summed a few rows at a time (the same sums of each block of
    # _PREFIX_BLOCK values; no array of them all, as large as ``d``)
    square_sums = np.empty((len(x), blocks))
    for start in range(0, len(x), _SQUARE_ROWS):
        rows_d = d[start:start + _SQUARE_ROWS]
        square_sums[start:start + _SQUARE_ROWS] = (rows_d * rows_d).reshape(
            len(rows_d), blocks, _PREFIX_BLOCK).sum(axis=2)
    tables = []
    for sums in (d.reshape(len(x), blocks, _PREFIX_BLOCK).sum(axis=2), square_sums):
        table = np.zeros((len(x), blocks + 1))
        np.cumsum(sums, axis=1, out=table[:, 1:])
        tables.append(table)
    offsets = np.arange(_PREFIX_BLOCK)

    def prefix(which, r, k):  # sum of the first k values of rows r (d or d squared)
        block = k // _PREFIX_BLOCK
        index = np.minimum(block[:, None] * _PREFIX_BLOCK + offsets, d.shape[1] - 1)
        values = d[r[:, None], index]
        if which:
            values = values * values
        part = np.where(index < k[:, None], values, 0.0)
        return tables[which][r, block] + part.sum(axis=1)

    exact = np.zeros(len(x), bool)  # images left to sigma_clipped_rms
    for _ in range(maxiters):
        r = np.flatnonzero(active)
        if r.size == 0:
            break
        l, h = lo[r], hi[r]
        m = (h - l).astype(np.float64)
        c = centre(r, l, h)
        p2h, p2l = prefix(1, r, h), prefix(1, r, l)
        s1, s2 = prefix(0, r, h) - prefix(0, r, l), p2h - p2l
        mean = s1 / m
        var = s2 / m - mean * mean
        # rounding-error bound: sums of up to h terms in any order (sum |d| <= sqrt(k sum d^2)),
        # the variance formula, and numpy's pairwise two-pass std of the same pixels
        gamma = (h + 4) * eps
        e1 = gamma * (np.sqrt(h * p2h) + np.sqrt(l * p2l)) + eps * np.abs(s1)
        e2 = gamma * (p2h + p2l) + eps * np.abs(s2)
        err = (e2 / m + (2 * np.abs(mean) + e1 / m) * e1 / m
               + 4 * eps * (np.abs(s2) / m + mean * mean))
        pairwise = (np.log2(m) + 24) * eps
        offset = pairwise * (np.abs(shift[r]) + np.abs(mean) + np.sqrt(np.abs(s2) / m))
        err = 2 * (err + pairwise * (np.abs(var) + err) + offset * offset)
        below = sigma * np.sqrt(np.maximum(var - err, 0.0)) * (1 - 4 * eps)
        above = sigma * np.sqrt(np.maximum(var + err, 0.0)) * (1 + 4 * eps)
        edges = _run_edges(ordered, np.tile(r, 2), np.tile(l, 2), np.tile(h, 2),
                           np.tile(c, 2), np.concatenate([below, above]))
        new_lo, new_hi = edges[0][:r.size], edges[1][:r.size]
        unsure = (new_lo != edges[0][r.size:]) | (new_hi != edges[1][r.size:])
        exact[r[unsure]], active[r[unsure]] = True, False
        kept = np.maximum(new_hi - new_lo, 0)
        stop = unsure | (kept == h - l) | (kept < 2)
        active[r[stop]] = False
        go = r[~stop]
        lo[go], hi[go] = new_lo[~stop], new_hi[~stop]
    # the std of the final run's pixels in their original order: numpy's pairwise sums of
    # each image's own pixels (a padded or segmented reduction rounds differently)
    done = (count > 0) & ~exact
    every = np.arange(len(x))
    low = ordered[every, np.where(done, lo, 0)]
    high = ordered[every, np.where(done, hi - 1, 0)]
    keep = (x >= low[:, None]) & (x <= high[:, None])
    for i in np.flatnonzero(done):
        out[i] = x[i][keep[i]].astype(np.float64).std()
    for i in np.flatnonzero(exact):
        out[i] = sigma_clipped_rms(x[i], sigma=sigma, maxiters=maxiters)
    if not background:
        return out, nan, nan
    return (out, *_clipped_median_sorted(ordered, valid_lo, valid_hi,
                                         _BACKGROUND_SIGMA * out))


def _clipped_median_stack(stack, half_width, *, iters=_BACKGROUND_ITERS):
    """`_clipped_median_sorted` of each image of ``stack`` (``(N, ...)``, invalid and masked
    pixels as for `sigma_clipped_rms`), sorted in blocks of `_RMS_BLOCK` images."""
    stack = _float_stack(stack)
    flat = stack.reshape(len(stack), int(np.prod(stack.shape[1:], dtype=np.int64)))
    half_width = np.broadcast_to(np.asarray(half_width, dtype=np.float64), (len(flat),))
    out = np.full((2, len(flat)), np.nan)
    for start in range(0, len(flat), _RMS_BLOCK):
        block = slice(start, start + _RMS_BLOCK)
        out[:, block] = _clipped_median_sorted(*_sorted_rows(flat[block]), half_width[block],
                                               iters=iters)
    return tuple(out)


def _clipped_median_sorted(ordered, lo, hi, half_width, *, iters=_BACKGROUND_ITERS):
    """Median and clipped median of the valid pixels ``[lo, hi)`` of each sorted row.

    The median of the pixels within ``half_width`` (float64 ``(B,)``) of the median, the
    test ``abs(x - centre) <= half_width`` made on every valid pixel in float64, repeated
    ``iters`` times; when no pixel passes, the median of all of them. The pixels that pass
    are a run of the sorted row (`_run_edges`), whose median is read off its middle
    (`_run_median`): np.median of the same pixels, the same float. A row whose run no
    longer changes is left (its median would not). Both NaN for a row without valid pixels.
    """
    median, out = np.full(len(ordered), np.nan), np.full(len(ordered), np.nan)
    r = np.flatnonzero(hi > lo)
    if r.size == 0:
        return median, out
    all_lo, all_hi, width = lo[r], hi[r], half_width[r]
    run_lo, run_hi = all_lo.copy(), all_hi.copy()  # the run whose median is ``centre``
    centre = _run_median(ordered, r, run_lo, run_hi)
    median[r] = centre
    active = np.arange(r.size)
    for _ in range(iters):
        if active.size == 0:
            break
        new_lo, new_hi = _run_edges(ordered, r[active], all_lo[active], all_hi[active],
                                    centre[active], width[active])
        none = new_hi <= new_lo  # no pixel within the width: the median of them all
        new_lo = np.where(none, all_lo[active], new_lo)
        new_hi = np.where(none, all_hi[active], new_hi)
        moved = (new_lo != run_lo[active]) | (new_hi != run_hi[active])
        active = active[moved]
        run_lo[active], run_hi[active] = new_lo[moved], new_hi[moved]
        centre[active] = _run_median(ordered, r[active], run_lo[active], run_hi[active])
    out[r] = centre
    return median, out


def _over_rms(values, rms):
    """``values / rms``, NaN where the rms is zero (or the value NaN)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(rms > 0, values / np.where(rms > 0, rms, 1.0), np.nan)


def _run_edges(ordered, r, lo, hi, c, b):
    """``[new_lo, new_hi)``: the pixels of run ``[lo, hi)`` of sorted rows ``r`` with
    ``abs(x - c) <= b`` (in float64, as `sigma_clipped_rms` tests them), by bisection.

    ``abs(x - c)`` falls towards ``c`` and rises after it (rounding is monotonic), so
    the run's pixels that are dropped below ``c`` are a prefix and those above a suffix.
    """
    n = r.size
    rr, cc, bb = np.tile(r, 2), np.tile(c, 2), np.tile(b, 2)
    left = np.arange(2 * n) < n  # first index kept / first index dropped above c
    start, stop = np.tile(lo, 2), np.tile(hi, 2)
    last = ordered.shape[1] - 1
    while True:
        todo = start < stop
        if not todo.any():
            break
        mid = (start + stop) // 2
        v = ordered[rr, np.minimum(mid, last)].astype(np.float64)
        far = np.abs(v - cc) > bb
        found = np.where(left, (v >= cc) | ~far, (v > cc) & far)
        start = np.where(todo & ~found, mid + 1, start)
        stop = np.where(todo & found, mid, stop)
    return start[:n], start[n:]


def peak_significance(image, *, rms=None):
    """Peak signal-to-noise ratio inside the field the network sees.

    Parameters
    ----------
    image : array_like
        ``(H, W)`` or ``(N, H, W)`` surface brightness image(s) at
        `FIRST_PIXEL_SCALE_ARCSEC`, centred on the source, as given to
        `first_cutout_to_uint8`.
    rms : float or array_like, optional
        Noise RMS (same unit as ``image``); by default measured as
        `first_cutout_to_uint8` does, with `sigma_clipped_rms` on the central
        `DATASET_IMAGE_PIXELS` x `DATASET_IMAGE_PIXELS` window.

    Returns
    -------
    float or numpy.ndarray
        Brightest valid pixel (finite and no masking sentinel) of the central
        `CROP_PIXELS` x `CROP_PIXELS` window above the background, divided by the RMS:
        compare with `DETECTION_SIGMA`. NaN where that window has no valid pixel or the
        RMS is zero.

    Notes
    -----
    The background is the median of the valid pixels of the central
    `DATASET_IMAGE_PIXELS` x `DATASET_IMAGE_PIXELS` window where it is positive, and zero
    otherwise. The data-set threshold counts from zero (FIRST maps have no pedestal), so
    noise on a positive pedestal passes it everywhere and is stretched to a grey field
    like a source: measured from the pedestal, it has no significant peak. A negative
    pedestal is not subtracted: the threshold, counted from zero, removes a source that
    does not rise above zero by `DETECTION_SIGMA` times the RMS, so it is not detected.
    """
    single, stack, window = _stack_and_window(image)
    if rms is None:
        rms, median, _ = _sigma_clipped_rms_stack(window, background=True)
    else:
        rms = _per_image(_rms_values(rms, zero_ok=True), len(stack), rms)
        median, _ = _clipped_median_stack(window, 0.0, iters=0)
    out = _peak_over_rms(stack, median, rms)
    return float(out[0]) if single else out


def _stack_and_window(image):
    """``(single, stack, window)`` of a 2-D image or an ``(N, H, W)`` stack: whether it was
    one image, the ``(N, H, W)`` stack and its central data-set windows (NaN-padded)."""
    image = _float_stack(image)
    if image.ndim not in (2, 3):
        raise InputShapeError(f"expected a 2-D image or a stack of them, got shape {image.shape}")
    single = image.ndim == 2
    stack = image[None] if single else image
    return single, stack, _centre_window(stack, DATASET_IMAGE_PIXELS, np.nan)


def _peak_over_rms(stack, median, rms):
    """`peak_significance` of the images ``stack`` (``(N, H, W)``) from the median of the
    valid pixels of their data-set windows (NaN where none) and their rms."""
    field = _centre_window(stack, CROP_PIXELS, np.nan).reshape(len(stack), CROP_PIXELS ** 2)
    finite = ~invalid_pixels(field)
    peak = np.where(finite, field, -np.inf).max(axis=1, initial=-np.inf).astype(np.float64)
    peak = peak - np.where(np.isnan(median), 0.0, np.maximum(median, 0.0))
    return np.where(finite.any(axis=1), _over_rms(peak, rms), np.nan)


def background_significance(image, *, rms=None):
    """Background level of a cutout in units of its noise RMS.

    Parameters
    ----------
    image : array_like
        ``(H, W)`` or ``(N, H, W)`` surface brightness image(s) at
        `FIRST_PIXEL_SCALE_ARCSEC`, centred on the source, as given to
        `first_cutout_to_uint8`.
    rms : float or array_like, optional
        Noise RMS (same unit as ``image``); by default measured as
        `first_cutout_to_uint8` does, with `sigma_clipped_rms` on the central
        `DATASET_IMAGE_PIXELS` x `DATASET_IMAGE_PIXELS` window.

    Returns
    -------
    float or numpy.ndarray
        Sigma-clipped median of the valid pixels (finite and no masking sentinel) of the
        central `DATASET_IMAGE_PIXELS` x `DATASET_IMAGE_PIXELS` window divided by the RMS:
        compare with `MAX_BACKGROUND_SIGMA` and `MIN_BACKGROUND_SIGMA`. NaN where that
        window has no valid pixel or the RMS is zero.

    Notes
    -----
    FIRST maps are background-subtracted: the median of a cutout is zero to a few
    hundredths of the noise. The data-set threshold of `DATASET_THRESHOLD_SIGMA` times the
    noise counts from zero, so a background ``b`` times the noise above zero lets the noise
    above ``3 - b`` sigma into the network input; a negative ``b`` raises the threshold to
    ``3 - b`` sigma above the background, which cuts the source's faint emission. The
    median is clipped at 3 times the RMS about itself (five iterations), so that a source
    moves it less (about half as much as the plain median for lobes of 40-65 arcsec FWHM).
    """
    single, stack, window = _stack_and_window(image)
    # each window is sorted once: the clipped sets are runs of its sorted pixels
    if rms is None:
        rms, _, centre = _sigma_clipped_rms_stack(window, background=True)
    else:
        rms = _per_image(_rms_values(rms, zero_ok=True), len(stack), rms)
        _, centre = _clipped_median_stack(window, _BACKGROUND_SIGMA * rms)
    out = _over_rms(centre, rms)
    return float(out[0]) if single else out


def _edge_levels(window):
    """Background of the four `_EDGE_STRIP_PIXELS`-wide strips along the edges of each
    data-set window (``(N, S, S)``, NaN where missing), each in units of its own noise: the
    clipped median over the `sigma_clipped_rms` of the strip, as `background_significance`
    measures the window. ``(N, 4)`` float64 in the order of `_EDGE_NAMES`; NaN for a strip
    without valid pixels or noise."""
    w = _EDGE_STRIP_PIXELS
    # every second pixel each way: the noise is correlated over the beam (3 pixels), so a
    # quarter of the pixels measure a strip's level and noise about as well, at a quarter
    # of the sorting
    strips = np.stack([window[:, :w:2, ::2], window[:, -w::2, ::2],
                       np.swapaxes(window[:, ::2, :w:2], 1, 2),
                       np.swapaxes(window[:, ::2, -w::2], 1, 2)], axis=1)
    rms, _, centre = _sigma_clipped_rms_stack(strips.reshape((-1,) + strips.shape[2:]),
                                              background=True)
    return _over_rms(centre, rms).reshape(len(window), 4)


def _ring_index():
    """Ring of `_ring_levels` of each pixel of the data-set window taken every second pixel
    each way (-1 beyond 150 pixels from the centre), and the number of rings."""
    half = DATASET_IMAGE_PIXELS // 2
    yy, xx = np.mgrid[:DATASET_IMAGE_PIXELS:2, :DATASET_IMAGE_PIXELS:2]
    r = np.hypot(yy - half, xx - half)
    ring = (r // _RING_PIXELS).astype(np.intp)
    ring[r >= half] = -1
    return ring, int(ring.max()) + 1


_RINGS = _ring_index()


def _ring_levels(window, rms):
    """The most negative significant ring background of each data-set window.

    The mean of the pixels below the data-set threshold (``DATASET_THRESHOLD_SIGMA * rms``)
    in each `_RING_PIXELS`-wide ring about the centre of each window (``(N, S, S)``, NaN
    where missing; every second pixel each way, as `_edge_levels`), beyond the first ring
    (the source), in units of ``rms`` (``(N,)``). A ring counts when its mean lies more than
    `RING_SIGNIFICANCE` times its uncertainty below zero, and more than `RING_MIN_STEPS`
    8-bit steps of the data-set scaling (the window's brightest valid pixel less the
    threshold, over 255; any depth where nothing passes the threshold). ``(N, 2)`` float64:
    the lowest mean of the rings that count and the inner radius in pixels of that ring; NaN
    for a window without such a ring (or without noise)."""
    ring, count = _RINGS
    n = len(window)
    out = np.full((n, 2), np.nan)
    rms = np.asarray(rms, dtype=np.float64)
    ok = np.flatnonzero(rms > 0)
    if ok.size == 0:
        return out
    with np.errstate(invalid="ignore"):
        x = window[ok, ::2, ::2] / rms[ok, None, None]
        keep = (x < DATASET_THRESHOLD_SIGMA) & (ring >= 0)
    index = (ring + count * np.arange(ok.size)[:, None, None])[keep]
    sums = np.bincount(index, x[keep], minlength=ok.size * count).reshape(ok.size, count)
    kept = np.bincount(index, minlength=ok.size * count).reshape(ok.size, count)[:, 1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums[:, 1:] / kept
        # independent samples: the ring's area (4 pixels per pixel kept) over the noise's
        # correlation area, 4 pi sigma_beam ** 2 in pixels
        beam = FIRST_BEAM_FWHM_ARCSEC / FIRST_PIXEL_SCALE_ARCSEC / np.sqrt(8 * np.log(2))
        z = mean * np.sqrt(4 * kept / (4 * np.pi * beam ** 2))
        # the 8-bit step in units of the noise: a noise-free image's rounding below zero is
        # a deep ring in units of its noise estimate, yet a tiny fraction of a step
        peak = np.fmax.reduce(window.reshape(n, -1), axis=1)[ok] / rms[ok]
        step = np.maximum(peak - DATASET_THRESHOLD_SIGMA, 0.0) / 255
    lowest = np.where((z < -RING_SIGNIFICANCE) & (mean < -RING_MIN_STEPS * step[:, None]),
                      mean, np.inf)
    j = np.argmin(lowest, axis=1)
    found = np.isfinite(lowest[np.arange(ok.size), j])
    out[ok[found], 0] = lowest[found, j[found]]
    out[ok[found], 1] = (j[found] + 1) * _RING_PIXELS
    return out


def _rms_values(rms, *, zero_ok=False):
    """``rms=`` as a float array: `InvalidArgumentTypeError` for non-numbers,
    `InvalidArgumentError` unless every value is finite and positive (or zero)."""
    try:
        values = np.asarray(rms, dtype=float)
    except (TypeError, ValueError):
        raise InvalidArgumentTypeError(f"rms must be a number or an array of numbers, got "
                                       f"{rms!r}") from None
    ok = (values >= 0) if zero_ok else (values > 0)
    if not np.all(ok & np.isfinite(values)):
        raise InvalidArgumentError(f"rms must be {'zero or ' if zero_ok else ''}positive and "
                                   f"finite, got {rms!r}")
    return values


def _per_image(values, n, given):
    """``values`` (from ``rms=given``) broadcast to one per image of ``n``; an
    `InvalidArgumentError` when there are more, or not one for each."""
    try:
        return np.broadcast_to(values, (n,))
    except ValueError:
        raise InvalidArgumentError(f"rms must be one value or one per image, got {given!r} for "
                                   f"{n} image{'s' if n != 1 else ''}") from None


def _centre_window(image, size, fill):
    """Central ``size`` x ``size`` window of the last two axes, padded with
    ``fill`` where the image is smaller (the centre pixel of an even-sized
    window is ``size // 2``, as for SkyView cutouts). An image already of that size is
    returned itself (C-ordered; no copy of a stack of them): the callers only read it."""
    image = np.asarray(image)
    ny, nx = image.shape[-2:]
    if ny == nx == size:
        return np.ascontiguousarray(image)
    out = np.full(image.shape[:-2] + (size, size), fill, dtype=image.dtype)
    cy, cx = ny // 2, nx // 2
    y0, x0 = cy - size // 2, cx - size // 2
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + size, ny), min(x0 + size, nx)
    out[..., sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[..., sy0:sy1, sx0:sx1]
    return out


def first_cutout_to_uint8(image, *, rms=None, threshold_sigma=DATASET_THRESHOLD_SIGMA,
                          size=DATASET_IMAGE_PIXELS, quantize=True):
    """Turn a FIRST cutout in Jy/beam into a data-set style 8-bit image.

    Reproduces the procedure of the FIRST radio galaxy data set (Griese et
    al. 2023): centre the cutout on a ``size`` x ``size`` grid (1.8 arcsec
    pixels; missing, non-finite and masking-sentinel pixels count as empty
    sky), clip every pixel below ``threshold_sigma`` times the noise RMS to
    that threshold, scale linearly so that the threshold becomes 0 and the
    brightest pixel 255, and truncate to integers.

    Parameters
    ----------
    image : array_like
        2-D surface brightness image (Jy/beam, any linear unit works since the
        result is normalised) at `FIRST_PIXEL_SCALE_ARCSEC`, centred on the
        source. Use `resample_to_first_grid` for other pixel scales. The images of a
        stack ``(N, H, W)`` are processed together, each as it would be alone.
    rms : float or array_like, optional
        Noise RMS in the unit of ``image``; by default measured on the
        ``size`` x ``size`` window with `sigma_clipped_rms`.
    threshold_sigma : float, optional
        Threshold in units of the RMS (3 in the data set).
    size : int, optional
        Side of the data-set grid in pixels (300 in the data set).
    quantize : bool, optional
        Truncate to integers 0-255 and return ``uint8`` like the released
        PNG/HDF5 images (default); otherwise return the unquantised float32
        values in ``[0, 255]``.

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` (or ``(N, size, size)``) ``uint8`` image, or float32
        when ``quantize`` is false. An image with nothing above the threshold
        is all zeros.
    """
    if rms is not None and hasattr(rms, "unit"):
        if not hasattr(image, "unit"):
            raise InvalidArgumentError(f"rms={rms!r} has a unit but the image has none: pass "
                                       "both as Quantities or both as numbers")
        from astropy.units import UnitsError

        try:
            rms = rms.to_value(image.unit)
        except UnitsError:
            raise InvalidArgumentError(f"rms={rms!r} is not in a unit of the image "
                                       f"({image.unit})") from None
    if hasattr(image, "unit"):
        image = image.value
    if rms is not None:
        _rms_values(rms)
    threshold_sigma = check_number(threshold_sigma, "threshold_sigma", minimum=0)
    size = check_whole(size, "size")
    quantize = check_bool(quantize, "quantize")
    image = real_array(image, "image")
    if image.ndim not in (2, 3):
        raise InputShapeError(f"expected a 2-D image or a stack of them, got shape {image.shape}")
    if image.ndim == 3 and image.shape[0] == 0:
        return np.zeros((0, size, size), np.uint8 if quantize else np.float32)
    if image.dtype != np.float32:  # float32 is measured as float32 (sorts faster), then widened
        image = image.astype(np.float64, copy=False)
    single = image.ndim == 2
    window = _centre_window(image[None] if single else image, size, np.nan)
    if rms is None:
        rms = _sigma_clipped_rms_stack(window)
    else:
        values = np.asarray(rms, dtype=float)
        rms = _per_image(values.reshape(-1) if single else values, len(window), rms)
    threshold = threshold_sigma * rms
    out = np.empty(window.shape, np.uint8 if quantize else np.float32)
    for start in range(0, len(window), _SCALE_BLOCK):
        part = slice(start, start + _SCALE_BLOCK)
        out[part] = _dataset_scale(window[part], threshold[part], quantize)
    return out[0] if single else out


#: Images scaled together by `first_cutout_to_uint8`: a few float64 copies of this many
#: 300 x 300 windows stay in the CPU's cache, as one image's did (a whole stack does not).
_SCALE_BLOCK = 8


def _dataset_scale(window, threshold, quantize):
    """The data-set scaling of windows ``(B, S, S)`` with thresholds ``(B,)``: invalid pixels
    and those below the threshold to it, the threshold to 0 and the peak to 255. Every step
    is elementwise with one threshold and one peak per image: the same floats as one by one."""
    threshold = threshold[:, None, None]
    window = window.astype(np.float64)  # a copy, changed in place below
    np.copyto(window, threshold, where=invalid_pixels(window))
    clipped = np.maximum(window, threshold, out=window)
    peak = clipped.max(axis=(1, 2), initial=-np.inf, keepdims=True)
    bright = peak > threshold
    clipped -= threshold
    scaled = np.multiply(clipped, 255.0 / np.where(bright, peak - threshold, 1.0), out=clipped)
    scaled[~bright[:, 0, 0]] = 0.0
    if quantize:
        scaled += 1e-6
        return np.clip(np.floor(scaled, out=scaled), 0, 255, out=scaled).astype(np.uint8)
    return scaled.astype(np.float32)


def preprocess_dataset_image(image, *, crop_pixels=CROP_PIXELS, bin_factor=BIN_FACTOR,
                             stretch=STRETCH):
    """Turn data-set style 8-bit images into the network input.

    Parameters
    ----------
    image : array_like
        ``(H, W)`` or ``(N, H, W)`` grey image(s) on the data-set scale
        (0-255, threshold at 0, brightest pixel 255) at 1.8 arcsec per pixel,
        centred on the source; normally 300 x 300 ``uint8``. Smaller images
        are zero-padded around the centre. NaN, infinite values, masking
        sentinels (``|value| >= 1e30``) and masked pixels of a
        `numpy.ma.MaskedArray` are missing: NaN where they fall in the window
        kept (`Model.predict` refuses such rows).
    crop_pixels : int, optional
        Side of the central window kept (default `CROP_PIXELS`).
    bin_factor : int, optional
        Side of the blocks that are averaged (default `BIN_FACTOR`);
        ``crop_pixels`` must be a multiple of it.
    stretch : {"sqrt", "linear"}, optional
        Intensity stretch after scaling to ``[0, 1]`` (default `STRETCH`).

    Returns
    -------
    numpy.ndarray
        float32 ``(1, S, S)`` (or ``(N, 1, S, S)``) with
        ``S = crop_pixels // bin_factor``, values in ``[0, 1]``.
    """
    image = real_array(image, "image")
    single = image.ndim == 2
    if single:
        image = image[None]
    if image.ndim != 3:
        raise InputShapeError(f"expected (H, W) or (N, H, W) images, got shape {image.shape}")
    if image.dtype.kind == "f":
        bad = invalid_pixels(image)
        if bad.any():  # missing like NaN, not the brightest or faintest pixel after clipping
            image = np.where(bad, np.nan, image)
    if not is_whole(bin_factor) or not is_whole(crop_pixels) or crop_pixels % bin_factor:
        raise InvalidArgumentError(f"crop_pixels ({crop_pixels!r}) must be a positive multiple of "
                                   f"bin_factor ({bin_factor!r}), a positive whole number")
    check_choice(stretch, "stretch", ("sqrt", "linear"))
    crop_pixels, bin_factor = int(crop_pixels), int(bin_factor)
    # (the window kept, then widened: the same values as widening the whole image)
    window = _centre_window(image, crop_pixels, 0.0).astype(np.float32)
    s = crop_pixels // bin_factor
    binned = window.reshape(len(window), s, bin_factor, s, bin_factor).mean(axis=(2, 4))
    del window
    # (in place in the new float32 array: the same floats as new arrays at each step)
    binned *= np.float32(1.0 / 255.0)
    np.clip(binned, 0.0, 1.0, out=binned)
    if stretch == "sqrt":
        np.sqrt(binned, out=binned)
    out = binned[:, None].astype(np.float32, copy=False)
    return out[0] if single else out


#: The keywords of `preprocess_dataset_image` that the FIRST and radio-image functions pass on.
_DATASET_OPTIONS = ("crop_pixels", "bin_factor", "stretch")


def preprocess_first_cutout(image, *, rms=None, threshold_sigma=DATASET_THRESHOLD_SIGMA,
                            quantize=True, **options):
    """Turn FIRST cutouts in Jy/beam (1.8 arcsec pixels) into the network input.

    Equivalent to ``preprocess_dataset_image(first_cutout_to_uint8(image))``.

    Parameters
    ----------
    image : array_like
        ``(H, W)`` or ``(N, H, W)`` surface brightness image(s) at
        `FIRST_PIXEL_SCALE_ARCSEC`, centred on the source.
    rms : float or array_like, optional
        Noise RMS (same unit as ``image``); measured when omitted.
    threshold_sigma : float, optional
        Noise threshold in units of the RMS (default 3, as in the data set).
    quantize : bool, optional
        Quantise to 8 bits like the data set (default true).
    **options
        ``crop_pixels``, ``bin_factor``, ``stretch``, passed on to
        `preprocess_dataset_image`.

    Returns
    -------
    numpy.ndarray
        float32 ``(1, S, S)`` (or ``(N, 1, S, S)``).
    """
    check_options(options, _DATASET_OPTIONS, "preprocess_first_cutout")
    grey = first_cutout_to_uint8(image, rms=rms, threshold_sigma=threshold_sigma,
                                 quantize=quantize)
    return preprocess_dataset_image(grey, **options)


def preprocess_radio_image(image, *, wcs=None, pixel_scale_arcsec=None, rms=None,
                           quantize=True, **options):
    """Turn a centred radio image in Jy/beam on any pixel grid into the network input.

    Resamples to the FIRST grid when the pixel scale (from ``wcs`` or
    ``pixel_scale_arcsec``) is not 1.8 arcsec, then runs
    `preprocess_first_cutout`.

    Parameters
    ----------
    image : array_like
        2-D surface brightness image centred on the source (or a stack
        ``(N, H, W)`` sharing one pixel scale).
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of ``image``; gives the pixel scale (of each axis, for
        pixels that are not square).
    pixel_scale_arcsec : float, optional
        Pixel scale when no WCS is given (default: 1.8, the FIRST scale).
    rms : float or array_like, optional
        Noise RMS in the unit of ``image``; measured on the resampled image
        when omitted.
    quantize : bool, optional
        Quantise to 8 bits like the data set (default true).
    **options
        ``threshold_sigma`` (see `preprocess_first_cutout`), and ``crop_pixels``,
        ``bin_factor``, ``stretch``, passed on to `preprocess_dataset_image`.

    Returns
    -------
    numpy.ndarray
        float32 ``(1, S, S)`` (or ``(N, 1, S, S)``).
    """
    check_options(options, ("threshold_sigma",) + _DATASET_OPTIONS, "preprocess_radio_image")
    if wcs is not None:
        from .._readers._stamp import pixel_scales

        pixel_scale_from_wcs(wcs)  # (checks that the WCS can place pixels)
        # one scale for square pixels, (scale_y, scale_x) for pixels that are not
        pixel_scale_arcsec = pixel_scales(wcs.celestial.pixel_scale_matrix)
    elif pixel_scale_arcsec is not None:
        pixel_scale_arcsec = _one_pixel_scale(pixel_scale_arcsec)
    image = real_array(image, "image").astype(np.float64)
    if pixel_scale_arcsec is not None and not np.isclose(
            pixel_scale_arcsec, FIRST_PIXEL_SCALE_ARCSEC, rtol=1e-3).all():
        if image.ndim == 3 and len(image) == 0:
            pass  # nothing to resample: preprocess_first_cutout gives the empty batch
        elif image.ndim == 3:
            image = np.stack([resample_to_first_grid(im, pixel_scale_arcsec) for im in image])
        else:
            image = resample_to_first_grid(image, pixel_scale_arcsec)
    return preprocess_first_cutout(image, rms=rms, quantize=quantize, **options)


def _one_pixel_scale(value):
    """``pixel_scale_arcsec`` as one positive float (arcsec); `InvalidArgumentError` for
    several values."""
    scale = to_arcsec(value, "pixel_scale_arcsec")
    if np.size(scale) != 1:
        raise InvalidArgumentError(f"pixel_scale_arcsec must be one number (arcsec per pixel), "
                                   f"got {value!r}")
    return float(np.ravel(scale)[0])


def _two_pixel_scales(value):
    """``pixel_scale_arcsec`` as ``(scale_y, scale_x)``, positive floats (arcsec): one
    value for both axes, or a pair for pixels that are not square;
    `InvalidArgumentError` for more."""
    scale = to_arcsec(value, "pixel_scale_arcsec")
    if np.size(scale) not in (1, 2):
        raise InvalidArgumentError(f"pixel_scale_arcsec must be one number (arcsec per pixel) "
                                   f"or two (scale_y, scale_x), got {value!r}")
    return axis_scales(scale)


def pixel_scale_from_wcs(wcs):
    """Pixel scale in arcsec of a celestial WCS: the square root of the pixel area (the
    geometric mean of the axes where they are perpendicular).

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        WCS with two celestial axes (degrees).

    Returns
    -------
    float
        Pixel scale in arcsec per pixel.

    Raises
    ------
    astromorph.exceptions.InvalidArgumentTypeError
        ``wcs`` is no `astropy.wcs.WCS`.
    astromorph.exceptions.InputError
        A WCS without celestial axes, or one that cannot place pixels on the sky: a
        singular or non-finite pixel scale matrix, a non-finite reference point, or no
        pixel scale set (``cdelt`` left at wcslib's default ``[1, 1]`` with no ``cd`` and
        no ``pc`` but a rotation: 1 degree/pixel, silently; give 1 degree pixels as a
        ``cd`` matrix).
    """
    from astropy.wcs import WCS

    from .._cutouts import _check_wcs_object

    if not isinstance(wcs, WCS):
        raise InvalidArgumentTypeError(f"wcs must be an astropy.wcs.WCS, got {wcs!r}")
    if not getattr(wcs, "has_celestial", False):
        raise InputError(f"the WCS has no celestial axes (CTYPE = {list(wcs.wcs.ctype)}): no "
                         "pixel scale in arcsec")
    _check_wcs_object(wcs, "wcs")
    return float(np.sqrt(abs(np.linalg.det(wcs.celestial.pixel_scale_matrix))) * 3600.0)


#: Image pixels by which a point of the FIRST field may lie beyond an image's edge before
#: `_field_on_image` calls it off (the rounding of a WCS).
_FIELD_TOLERANCE_PIXELS = 1e-3
#: Words of `astromorph.Flag.EDGE` for a radio stamp whose FIRST field runs off it.
_FIELD_OFF_WORDS = (f"the FIRST field ({DATASET_IMAGE_PIXELS} x {DATASET_IMAGE_PIXELS} "
                    f"points {FIRST_PIXEL_SCALE_ARCSEC:g}\" apart, "
                    f"{DATASET_ANGULAR_SIZE_ARCSEC:g}\" across) about the source runs off the "
                    "image (filled)")


def _field_on_image(x, y, shape):
    """The one rule of `astromorph.annotate` and `astromorph.predict_files` for
    radio-morphology: whether an image of ``shape`` ``(ny, nx)`` covers the FIRST field,
    i.e. each of the field's points (``x``, ``y``: 0-based image pixels, ``(N, K)``, K
    points of each of N fields; NaN: a point the WCS cannot place) lies on one of its
    pixels, within -0.5 and ``n - 0.5`` (astropy's convention; `_FIELD_TOLERANCE_PIXELS`
    more), where `astromorph.annotate`'s stamps take it from a pixel. ``(N,)`` bool.

    The field is its points: the data set's pixels are samples of FIRST's maps at their
    centres, the outermost 269.1" from the source, so a centred image of ``n`` pixels of
    ``s`` arcsec covers it when ``n * s / 2 >= 269.1"``: 539 pixels at 1", 1077 at 0.5",
    300 at 1.8" wherever the source lies within half a pixel of its centre. The field's
    area, 540" edge to edge, would need 540 and 1080 pixels, and calls off the data set's
    own geometry (300 FIRST pixels about a source on pixel 150, not between 149 and 150:
    the field's edge half a pixel off the image, its outermost point on it); points within
    the outermost pixel centres (540 and 1078 pixels, where `resample_to_first_grid` has a
    value) would call off the same cutout, for half a pixel that the edge pixels give.
    """
    ny, nx = shape
    tol = _FIELD_TOLERANCE_PIXELS
    with np.errstate(invalid="ignore"):  # (NaN: not placed, off)
        on = (x >= -0.5 - tol) & (x <= nx - 0.5 + tol) & (y >= -0.5 - tol) \
            & (y <= ny - 0.5 + tol)
    return np.all(on, axis=-1)


def resample_to_first_grid(image, pixel_scale_arcsec, *, size=DATASET_IMAGE_PIXELS):
    """Resample a centred radio image onto the FIRST grid (1.8 arcsec pixels).

    Bilinear interpolation of the surface brightness (Jy/beam stays
    Jy/beam) onto a ``size`` x ``size`` grid of `FIRST_PIXEL_SCALE_ARCSEC`
    pixels sharing the image centre (pixel ``(n - 1) / 2`` of the image on
    ``(size - 1) / 2`` of the grid: between pixels 149 and 150, where the data set
    and `astromorph.annotate` put the source; an image already at 1.8 arcsec per
    pixel is only cut or padded, as `first_cutout_to_uint8` centres it); points
    outside the image, and those that
    touch an invalid pixel (NaN, inf, a masking sentinel such as -3.4e38), are
    NaN (empty sky for `first_cutout_to_uint8`). An image finer than the grid by a factor
    ``f >= 2`` is first block-averaged by ``floor(f)`` (NaN-aware), so that
    downsampling does not alias, as `astromorph.annotate` cuts stamps. For
    images with a full WCS and a known sky position, ``reproject`` onto a
    FIRST-like WCS is the better choice.

    The block means and the bilinear interpolation widen what the image holds (a point
    source seen through FIRST's 5.4 arcsec beam loses 1.6 % of its peak from 1 arcsec
    pixels, 11 % from 0.5 arcsec), the price of making no assumption about it: for an
    image whose header gives a restoring beam that needs no smoothing (see
    `smooth_to_first_beam`), which the beam band-limits as FIRST's are, `astromorph.predict_files`
    and `astromorph.annotate` sample the FIRST grid's points by cubic convolution instead
    (0.26 % and 0.05 %).

    Parameters
    ----------
    image : array_like
        2-D image, centred on the source.
    pixel_scale_arcsec : float or (float, float)
        Pixel scale of ``image`` in arcsec (see `pixel_scale_from_wcs`), or
        ``(scale_y, scale_x)`` for pixels that are not square: each axis is
        resampled (and block-averaged) by its own scale.
    size : int, optional
        Side of the output grid (default 300).

    Returns
    -------
    numpy.ndarray
        float64 ``(size, size)`` image at 1.8 arcsec per pixel.
    """
    size = check_whole(size, "size")
    image = real_array(image, "image")
    if image.ndim != 2 or min(image.shape) < 2:
        raise InputShapeError(f"expected a 2-D image of at least 2 x 2 pixels, got shape "
                              f"{image.shape}")
    return _resample_to_first_grid(image, pixel_scale_arcsec, size=size)


def _resample_to_first_grid(image, pixel_scale_arcsec, *, size=DATASET_IMAGE_PIXELS,
                            offset=None):
    """`resample_to_first_grid` of a checked 2-D ``image``, the grid's centre on the
    image's pixel ``(n - 1) / 2`` plus ``offset`` ``(dy, dx)`` (image pixels; None: 0, where
    an image at FIRST's scale is only cut or padded): the source's position on a stamp cut
    on an image's own pixels (`astromorph.annotate`, `astromorph._cutouts.cut_stamps`
    ``on_pixels``)."""
    ny, nx = image.shape
    scale_y, scale_x = _two_pixel_scales(pixel_scale_arcsec)
    step_y, step_x = FIRST_PIXEL_SCALE_ARCSEC / scale_y, FIRST_PIXEL_SCALE_ARCSEC / scale_x
    if offset is None and abs(step_y - 1.0) <= 1e-3 and abs(step_x - 1.0) <= 1e-3:
        # the FIRST grid already: centred as the data-set window is
        return _centre_window(_float64_valid(image), size, np.nan)
    dy, dx = (0.0, 0.0) if offset is None else (float(v) for v in offset)
    # the image's centre on the grid's (between pixels 149 and 150, as in the data set)
    y = (ny - 1) / 2 + dy + (np.arange(size) - (size - 1) / 2) * step_y
    x = (nx - 1) / 2 + dx + (np.arange(size) - (size - 1) / 2) * step_x
    # inside the image's own extent (the edge half-blocks of a binned image included)
    inside = ((y >= 0) & (y <= ny - 1))[:, None] & ((x >= 0) & (x <= nx - 1))[None, :]
    fy, fx = int(np.floor(step_y + 1e-9)), int(np.floor(step_x + 1e-9))
    if fy == fx:  # (square pixels: both axes binned, or neither)
        fy = fx = fy if fy >= 2 and min(ny, nx) >= 2 * fy else 1
    else:  # each axis by its own factor, 1 where it is not finer than the grid
        fy, fx = (fy if fy >= 2 and ny >= 2 * fy else 1), (fx if fx >= 2 and nx >= 2 * fx else 1)
    if fy > 1 or fx > 1:
        # block k of the binned image is centred on original pixel factor * k + (factor - 1) / 2
        ny, nx = ny // fy, nx // fx
        y, x = (y - (fy - 1) / 2) / fy, (x - (fx - 1) / 2) / fx
    y0 = np.clip(np.floor(y).astype(int), 0, ny - 2)
    x0 = np.clip(np.floor(x).astype(int), 0, nx - 2)
    # only the rows and columns (of blocks) that the grid reads are converted and binned: a
    # large cutout of fine pixels costs what the grid's field needs (the same floats)
    (r0, r1), (c0, c1) = (y0.min(), y0.max() + 2), (x0.min(), x0.max() + 2)
    image = _float64_valid(image[r0 * fy:r1 * fy, c0 * fx:c1 * fx])
    if fy > 1 or fx > 1:
        block = image.reshape(r1 - r0, fy, c1 - c0, fx)
        good = np.isfinite(block)
        count = good.sum(axis=(1, 3))
        total = np.where(good, block, 0.0).sum(axis=(1, 3))
        image = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    fy = np.clip(y - y0, 0.0, 1.0)[:, None]
    fx = np.clip(x - x0, 0.0, 1.0)[None, :]
    iy, ix = (y0 - r0)[:, None], (x0 - c0)[None, :]
    out = (image[iy, ix] * (1 - fy) * (1 - fx) + image[iy, ix + 1] * (1 - fy) * fx
           + image[iy + 1, ix] * fy * (1 - fx) + image[iy + 1, ix + 1] * fy * fx)
    out[~inside] = np.nan
    return out


def _float64_valid(image):
    """A float64 copy of ``image``, NaN where its pixels are invalid (NaN, inf, masking
    sentinels: one must not leak into its neighbours through the interpolation weights)."""
    image = image.astype(np.float64)
    image[invalid_pixels(image)] = np.nan
    return image


def _fine_beams(beams):
    """Rows of ``beams`` (N, 3: major, minor FWHM in arcsec, angle in degrees) that
    `smooth_to_first_beam` smooths: FIRST's covariance less the beam's has a positive
    eigenvalue, FIRST's circular beam being wider than the beam across its minor axis, of
    more than the kernel of a circular beam of `BEAM_MATCH_FRACTION` of FIRST's: a known
    minor axis (the major where the minor is unknown) below that fraction of FIRST's."""
    return _beam_axes(beams)[1] < BEAM_MATCH_FRACTION * FIRST_BEAM_FWHM_ARCSEC


def _beam_axes(beams):
    """``(major, minor, angle)`` arrays of ``beams`` (N, 3): the minor axis is the major
    where it is unknown (NaN or not positive) and at most the major; the angle 0 where
    unknown; a major NaN where unknown (every comparison false)."""
    beams = np.asarray(beams, dtype=float).reshape(-1, 3)
    major = beams[:, 0]
    with np.errstate(invalid="ignore"):
        minor = np.where(np.isfinite(beams[:, 1]) & (beams[:, 1] > 0),
                         np.minimum(beams[:, 1], major), major)
    return major, minor, np.where(np.isfinite(beams[:, 2]), beams[:, 2], 0.0)


def _matching_kernel(major, minor, angle, pixel_scale):
    """The normalised 2-D Gaussian that takes the beam ``major`` x ``minor`` arcsec (FWHM;
    major axis at ``angle`` degrees from +y towards -x, on the sky with the pixel axes'
    directions) to the smallest beam that contains FIRST's circular one, sampled on pixels
    of ``pixel_scale`` arcsec (one float, or ``(scale_y, scale_x)`` for pixels that are not
    square: the covariance in arcsec divided by each axis' scale): its covariance is the
    positive part of the difference of the two beams' (none along a major axis wider than
    FIRST's beam). Also the factor that keeps Jy/beam in the new beam (the ratio of the
    areas).

    The kernel is made from its Fourier transform, exact at the frequencies of its grid:
    sampled in the image plane, a Gaussian much narrower than a pixel across one direction
    (the major axis of a beam slightly finer than FIRST's, or none at all) is a lone pixel
    unless that direction lies on the pixel axes, and would smooth too little."""
    fwhm = 2.0 * np.sqrt(2.0 * np.log(2.0))
    t = np.radians(angle)
    u = np.array([-np.sin(t), np.cos(t)])  # the major axis in (x, y)
    v = np.array([np.cos(t), np.sin(t)])
    first = FIRST_BEAM_FWHM_ARCSEC ** 2
    var_u, var_v = max(first - major ** 2, 0.0), max(first - minor ** 2, 0.0)
    scale_y, scale_x = axis_scales(pixel_scale)
    cov = var_u * np.outer(u, u) + var_v * np.outer(v, v)
    if scale_y == scale_x:
        cov = cov / (fwhm * scale_x) ** 2
    else:  # (x, y), as u and v
        cov = cov / (fwhm ** 2 * np.outer([scale_x, scale_y], [scale_x, scale_y]))
    radius = int(np.ceil(4.0 * np.sqrt(np.linalg.eigvalsh(cov).max()))) + 4
    k = np.fft.fftfreq(2 * radius + 1)  # odd: no Nyquist frequency to share
    ky, kx = k[:, None], k[None, :]  # (rows: y, columns: x)
    # times a taper flat to the 8th order at zero (the moments kept) that closes the
    # transform before the Nyquist frequency, where a Gaussian narrow across one direction
    # is still open, and would wrap with a jump: ripples that turn the beam
    gain = np.exp(-2 * np.pi ** 2 * (cov[0, 0] * kx * kx + 2 * cov[0, 1] * kx * ky
                                     + cov[1, 1] * ky * ky) - ((kx * kx + ky * ky) / 0.16) ** 4)
    kernel = np.fft.fftshift(np.fft.ifft2(gain).real)
    area = max(major, FIRST_BEAM_FWHM_ARCSEC) * max(minor, FIRST_BEAM_FWHM_ARCSEC)
    return kernel / kernel.sum(), area / (major * minor)


def smooth_to_first_beam(images, beams, *, pixel_scale_arcsec=FIRST_PIXEL_SCALE_ARCSEC):
    """Convolve radio images whose restoring beam is finer than FIRST's to a beam that
    contains FIRST's.

    The images of a finer beam at the same noise per beam show extended emission (radio
    lobes) fainter against the noise than FIRST did: the model, trained at FIRST's 5.4
    arcsec, calls a double with faded lobes bent or compact. Each image whose beam is finer
    than FIRST's across some direction, its minor axis below `BEAM_MATCH_FRACTION` times
    `FIRST_BEAM_FWHM_ARCSEC` (an elongated 5.2" x 2.5" beam is, whatever its major axis), is
    convolved to the smallest Gaussian beam that contains both its own and FIRST's circular
    beam: the kernel's covariance is the positive part of FIRST's less its own (rotated as
    its major axis lies on the pixel axes), so the new beam is FIRST's 5.4" where the major
    axis is below 5.4", else major x 5.4" at the beam's own angle (only the finer direction
    is smoothed). The image is scaled by the ratio of the beam areas, so that Jy/beam stays
    Jy/beam of the new beam (a common beam, as a radio astronomer would). The convolution
    is normalised over the valid pixels: a NaN pixel stays NaN and does not
    spread, and the valid pixels next to it (or to the image's edge) are the average of
    their valid neighbours. Other images are returned as given.

    Parameters
    ----------
    images : array_like
        ``(N, H, W)`` float images in surface brightness, NaN where invalid.
    beams : array_like
        ``(N, 3)``: each image's beam FWHM, major and minor axes in arcsec, and the angle
        of its major axis in degrees from the image's +y axis (rows increasing) towards -x
        (the position angle BPA for an image with north up and east left); NaN (major)
        where unknown: not smoothed; a minor axis NaN or not positive is the major's (a
        circular beam).
    pixel_scale_arcsec : float or (float, float), optional
        Pixel scale of the images in arcsec (default: FIRST's 1.8 arcsec, the grid of
        `resample_to_first_grid`), or ``(scale_y, scale_x)`` for pixels that are not
        square (the kernel is then sampled on them; the beam's angle is on the sky, from
        the direction of the +y axis).

    Returns
    -------
    images : numpy.ndarray
        ``(N, H, W)`` float64 images (the input's values where not smoothed).
    smoothed : numpy.ndarray
        ``(N,)`` bool, the images that were convolved.
    """
    images = np.array(images, dtype=np.float64)
    beams = np.asarray(beams, dtype=float).reshape(-1, 3)
    if images.ndim != 3 or len(beams) != len(images):
        raise InputShapeError(f"expected (N, H, W) images and (N, 3) beams, got shapes "
                              f"{images.shape} and {beams.shape}")
    scale = _two_pixel_scales(pixel_scale_arcsec)
    smoothed = _fine_beams(beams)
    if not smoothed.any():
        return images, smoothed
    rows = np.flatnonzero(smoothed)
    shapes = np.stack(_beam_axes(beams[rows]), axis=1)
    unique, inverse = np.unique(shapes, axis=0, return_inverse=True)
    for k, (a, b, t) in enumerate(unique):  # one kernel per distinct beam
        sel = rows[np.asarray(inverse).ravel() == k]
        kernel, area = _matching_kernel(a, b, t, scale)
        _convolve_normalised(images, sel, kernel, area)
    return images, smoothed


#: Images convolved together by `_convolve_normalised` (bounds the memory of the transforms:
#: 16 x 1300 x 651 complex64, 110 MB, for the 1267-pixel stamps of 0.45" pixels).
_FFT_ROWS = 16


def _convolve_normalised(images, rows, kernel, area, *, cache=None):
    """Replace ``images[rows]`` (float64 or float32, ``(N, H, W)``, NaN where invalid) by
    their convolution with ``kernel`` (odd square, sum 1) normalised over the valid pixels,
    times ``area``, NaN where they are NaN (as `scipy.signal.fftconvolve` in ``"same"`` mode
    of the zero-filled image over that of its validity mask). Real single-precision FFTs on
    a fast length padded to hold the whole linear convolution, the kernel's transform made
    once, in batches of `_FFT_ROWS` images; the mask's convolution is made once for images
    without an invalid pixel (the same for all) and only for those with one. ``cache``: a
    dict that keeps the kernel's transform and the mask's convolution between calls with
    the same ``kernel``, ``area`` and image shape (`_native_to_first_grid`, which hands the
    images over a few at a time); the values are single-precision either way (float64
    images hold the float32 results exactly)."""
    import scipy.fft as sfft

    r = kernel.shape[0] // 2
    h, w = images.shape[1:]
    shape = (sfft.next_fast_len(h + 2 * r, real=True), sfft.next_fast_len(w + 2 * r, real=True))
    workers = max(min(os.cpu_count() or 1, 4), 1)
    cache = {} if cache is None else cache
    if "gain" not in cache:
        cache["gain"] = sfft.rfft2(kernel.astype(np.float32), s=shape, workers=workers)
    gain = cache["gain"]

    def convolve(stack):
        out = sfft.irfft2(sfft.rfft2(stack, s=shape, workers=workers) * gain, s=shape,
                          workers=workers)
        return out[:, r:r + h, r:r + w]
    whole = cache.get("whole")  # the mask's convolution for an image without invalid pixels
    for start in range(0, len(rows), _FFT_ROWS):
        sel = rows[start:start + _FFT_ROWS]
        block = images[sel].astype(np.float32)
        good = np.isfinite(block)
        holes = ~good.all(axis=(1, 2))
        total = convolve(np.where(good, block, np.float32(0)))
        if (~holes).any() and whole is None:
            whole = cache["whole"] = convolve(np.ones((1, h, w), np.float32))
        weight = np.empty_like(total)
        weight[~holes] = whole if whole is not None else 0
        if holes.any():
            weight[holes] = convolve(good[holes].astype(np.float32))
        with np.errstate(invalid="ignore", divide="ignore"):
            images[sel] = np.where(good, np.float32(area) * total / weight, np.nan)


def _native_crop(shape, pixel_scale, *, size=DATASET_IMAGE_PIXELS):
    """The slices ``(rows, columns)`` of an image of ``shape`` ``(H, W)`` and ``pixel_scale``
    (finer than FIRST's 1.8" along some axis) that `_native_to_first_grid` smooths on its
    own pixels: the same number of pixels cut from opposite sides (the centre kept), a
    multiple of the block factor of `resample_to_first_grid` (its blocks kept), to the
    ``size`` x ``size`` FIRST grid's extent plus the widest kernel's reach (a beam of zero
    width to FIRST's), so that a large cutout of fine pixels costs what the FIRST field
    needs; the pixels the grid reads are those of the smoothed uncropped image (to
    rounding)."""
    cuts = []
    for n, scale in zip(shape, axis_scales(pixel_scale)):
        factor = _block_factor(scale)
        need = _native_half_side(scale, size=size)
        cut = max((n - 2 * need) // 2 // factor * factor, 0)
        cuts.append(slice(cut, n - cut))
    return tuple(cuts)


#: Images that `_native_to_first_grid` smooths on their own pixels at once: the memory of
#: the smoothing is that of these few crops and their transforms (about 40 MB an image for
#: 1141 x 1141 crops of 0.5" pixels), whatever the number of images given; only their
#: ``size`` x ``size`` FIRST-grid samples accumulate.
_NATIVE_ROWS = 4
#: The beams (with the images' shape and pixel scale) whose kernel, transform and mask
#: convolution `_native_to_first_grid` keeps in its ``caches``: the most recently used.
_CACHED_BEAMS = 4


def _native_to_first_grid(images, rows, beams, pixel_scale, *, size=DATASET_IMAGE_PIXELS,
                          caches=None, offsets=None):
    """Yield ``(row, sample)`` for each of ``rows`` of ``images`` (``(N, H, W)``, any float
    dtype, NaN where invalid; sharing ``pixel_scale``, finer than FIRST's 1.8" along some
    axis; ``beams`` ``(N, 3)`` as `smooth_to_first_beam` takes them, fine beams at those
    rows): `_sample_beam_limited` of `smooth_to_first_beam` of their `_native_crop` on their
    own pixels, before they are brought to FIRST's (a beam finer than FIRST's is
    undersampled on the 1.8" grid: resampling first loses structure that smoothing
    afterwards cannot restore, 2 % of a point source's peak), the same floats, made
    `_NATIVE_ROWS` images at a time on single-precision copies of their crops (the
    convolution is single-precision either way), so that the memory does not grow with the
    number of images; the kernel, its transform and the mask's convolution made once per
    distinct beam. ``sample``: ``(size, size)`` float64, in ``rows``' order of each beam,
    the beams in `numpy.unique`'s order (as `smooth_to_first_beam` takes them). ``caches``:
    a dict that keeps the kernel, transform and mask convolution of the last
    `_CACHED_BEAMS` beams, shapes and pixel scales between calls (`astromorph._predict`'s
    stamps, brought to the FIRST grid one by one as they are read); the same floats.
    ``offsets``: ``(N, 2)``, the grid's centre on each image less its centre
    (`_sample_on_first_grid`), or None (0: the crop keeps the image's centre, and so the
    offset)."""
    images = np.asarray(images)
    rows = np.asarray(rows, dtype=np.intp).ravel()
    crop = _native_crop(images.shape[-2:], pixel_scale, size=size)
    scale = axis_scales(pixel_scale)
    beams = np.asarray(beams, dtype=float).reshape(-1, 3)
    shapes = np.stack(_beam_axes(beams[rows]), axis=1)
    unique, inverse = np.unique(shapes, axis=0, return_inverse=True)
    for k, (a, b, t) in enumerate(unique):
        sel = rows[np.asarray(inverse).ravel() == k]
        key = (a, b, t, scale, images.shape[-2:])
        known = None if caches is None else caches.pop(key, None)
        kernel, area, cache = known or (*_matching_kernel(a, b, t, scale), {})
        if caches is not None:  # (the most recently used last)
            caches[key] = kernel, area, cache
            while len(caches) > _CACHED_BEAMS:
                del caches[next(iter(caches))]
        for start in range(0, len(sel), _NATIVE_ROWS):
            part = sel[start:start + _NATIVE_ROWS]
            block = np.stack([images[j][crop] for j in part.tolist()]).astype(
                np.float32, copy=False)
            _convolve_normalised(block, np.arange(len(part)), kernel, area, cache=cache)
            for j, image in zip(part.tolist(), block):
                yield j, _sample_beam_limited(image[None], pixel_scale, size=size,
                                              offset=None if offsets is None else offsets[j])[0]


def _native_half_side(scale, *, size=DATASET_IMAGE_PIXELS):
    """Pixels of ``scale`` arcsec (one axis, finer than FIRST's 1.8") that
    `_native_crop` keeps on either side of an image's centre: the half extent of
    the ``size`` x ``size`` FIRST grid, two blocks of `resample_to_first_grid` and the reach
    of the widest kernel (a beam of zero width to FIRST's). An image of ``2 * half + 1``
    pixels is kept whole (`annotate` cuts its stamps so: the source within half a pixel of
    the centre, the grid sampled about it, `_sample_on_first_grid` ``offset``)."""
    step = FIRST_PIXEL_SCALE_ARCSEC / scale
    factor = _block_factor(scale)
    fwhm = 2.0 * np.sqrt(2.0 * np.log(2.0))
    reach = int(np.ceil(4.0 * FIRST_BEAM_FWHM_ARCSEC / fwhm / scale)) + 4  # (the kernel's)
    return int(np.ceil((size - 1) / 2 * step)) + 2 * factor + 2 + reach


def _block_factor(scale):
    """The block factor of `resample_to_first_grid` for pixels of ``scale`` arcsec along one
    axis (finer than FIRST's 1.8": at least 1)."""
    return max(int(np.floor(FIRST_PIXEL_SCALE_ARCSEC / scale + 1e-9)), 1)


def _keys_weights(t):
    """Weights of the four samples ``floor - 1 .. floor + 2`` around fractions ``t`` (Keys'
    cubic convolution, ``a = -0.5``: exact for quadratics), ``(len(t), 4)``."""
    t = t[:, None] + np.array([1.0, 0.0, -1.0, -2.0])
    a = np.abs(t)
    return np.where(a <= 1, (1.5 * a - 2.5) * a * a + 1,
                    np.where(a < 2, ((-0.5 * a + 2.5) * a - 4) * a + 2, 0.0))


def _sample_on_first_grid(image, pixel_scale, *, size=DATASET_IMAGE_PIXELS, offset=None):
    """The values of ``image`` (2-D, or a stack ``(..., H, W)``; finer than FIRST's 1.8" along
    some axis, already at a beam that contains FIRST's: `_sample_beam_limited`) at the
    points of the ``size`` x
    ``size`` FIRST grid, centred as `resample_to_first_grid` centres it, by cubic
    convolution (Keys) on its own pixels: FIRST's pixels are samples of its 5.4" beam,
    which `resample_to_first_grid`'s block averaging and bilinear interpolation (made for
    images that may hold structure finer than the grid) widen: a point source lost 1.6 %
    of its peak from 1" pixels, 11 % from 0.5". NaN outside the image and where one of the
    16 pixels read is NaN. The images of a stack are sampled one by one (the same floats;
    a stack of 601 x 601 images at once took nine times as long, out of the CPU's cache).
    ``offset``: ``(dy, dx)`` (image pixels) added to the grid's centre on the image(s), or
    None (0): the source's position less the image's centre on a stamp cut on an image's
    own pixels (`astromorph._cutouts.cut_stamps` ``on_pixels``), so that the grid's points
    are sampled from the image's pixels at their own sky positions."""
    image = np.asarray(image)
    if image.ndim > 2:
        out = np.empty(image.shape[:-2] + (size, size))
        for index in np.ndindex(image.shape[:-2]):
            out[index] = _sample_on_first_grid(image[index], pixel_scale, size=size,
                                               offset=offset)
        return out
    if image.dtype != np.float32:  # (float32 pixels are read as they are: exact in float64)
        image = image.astype(np.float64, copy=False)
    ny, nx = image.shape
    scale_y, scale_x = axis_scales(pixel_scale)
    axes = []
    shift = (0.0, 0.0) if offset is None else (float(v) for v in offset)
    for n, scale, d in zip((ny, nx), (scale_y, scale_x), shift):
        p = (n - 1) / 2 + d + (np.arange(size) - (size - 1) / 2) \
            * FIRST_PIXEL_SCALE_ARCSEC / scale
        base = np.floor(p).astype(int)
        taps = np.clip(base[:, None] + np.arange(-1, 3), 0, n - 1)
        axes.append((taps, _keys_weights(p - base), (p >= 0) & (p <= n - 1)))
    (ty, wy, iny), (tx, wx, inx) = axes
    # separable: the four rows of each output row, then the four columns of each column
    # (a NaN among the 16 pixels read still makes the value NaN)
    # (only the columns read: a large cutout of fine pixels costs what the grid's field needs)
    c0, c1 = tx.min(), tx.max() + 1
    rows = sum(wy[:, i, None] * image[ty[:, i], c0:c1] for i in range(4))
    out = sum(wx[:, j] * rows[:, tx[:, j] - c0] for j in range(4))
    out[~(iny[:, None] & inx[None, :])] = np.nan
    return out


def _sample_beam_limited(images, pixel_scale, *, size=DATASET_IMAGE_PIXELS, offset=None):
    """`_sample_on_first_grid` of images ``(N, H, W)`` (NaN where invalid; sharing
    ``pixel_scale``: one float or ``(scale_y, scale_x)``, finer than FIRST's 1.8" along some
    axis) band-limited by a beam that contains FIRST's: one whose known beam needs no
    smoothing (`smooth_to_first_beam` leaves it: FIRST's or coarser, or finer by less than
    `BEAM_MATCH_FRACTION`), or one smoothed to it on its own pixels
    (`_native_to_first_grid`). FIRST's pixels are samples of its own beam;
    `resample_to_first_grid`'s block means and bilinear interpolation widen a 5.4" beam (a
    point source lost 1.6 % of its peak from 1" pixels, 11 % from 0.5").

    The cubic convolution reads 4 x 4 pixels, a block mean a block's valid ones: a grid
    point whose pixels reach a NaN takes `resample_to_first_grid`'s value, so that a NaN
    spreads no further on the grid than there (a lone NaN pixel of 0.5" none; the cubic
    convolution alone spread it some 2 x 2 grid points further). A smoothed image is NaN
    where the image given was (the convolution is normalised over the valid pixels, which
    stay at the new beam beside a NaN), so that value is the block means of its valid
    pixels at FIRST's beam, and the NaN footprint the image's own. Returns
    ``(N, size, size)`` float64. ``offset``: as `_sample_on_first_grid` takes it (the
    images' own)."""
    out = _sample_on_first_grid(images, pixel_scale, size=size, offset=offset)
    for image, plane in zip(images, out):
        holes = np.isnan(plane)  # (NaN outside the image in both)
        if holes.any() and np.isnan(image).any():
            plane[holes] = _resample_to_first_grid(image, pixel_scale, size=size,
                                                   offset=offset)[holes]
    return out
