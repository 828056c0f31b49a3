"""Preprocessing of difference-imaging triplets for the ``real-bogus`` model.

A *triplet* is a stack of three stamps centred on a difference-imaging
candidate: the science image, the reference (template) image and the
difference image, in that order, following the ZTF alert convention
(63 x 63 pixels at about 1 arcsec per pixel, candidate in the central pixel).

Two functions are provided:

* :func:`preprocess_triplet` turns raw triplets of any float dtype (NaNs
  allowed) into the float32 network input, and returns a per-row flag with
  the fraction of invalid (NaN / inf) pixels.
* :func:`resample_triplet` brings stamps of another size or pixel scale (for
  example DES 51 x 51 stamps at 0.27 arcsec per pixel, or Rubin cutouts at
  0.2 arcsec per pixel) onto the model grid, with the fraction of the model
  field that the input stamp covers.

Both are pure numpy and vectorised over the batch.
"""

import numpy as np

from .._blas import single_threaded_blas
from ..exceptions import InputDTypeError, InputShapeError, InvalidArgumentError
from ._checks import (SENTINEL, axis_scales, check_bool, in_unit_interval, is_whole,
                      to_arcsec, unmasked)

__all__ = [
    "TRIPLET_SIZE",
    "TRIPLET_PIXEL_SCALE",
    "preprocess_triplet",
    "resample_triplet",
]

#: Side of the model stamps in pixels (ZTF alert convention).
TRIPLET_SIZE = 63

#: Pixel scale of the model grid in arcsec per pixel (ZTF: 1.01 arcsec/px).
TRIPLET_PIXEL_SCALE = 1.0

# Pixels with |value| above this are masking sentinels (e.g. -FLT_MAX, -3.4e38,
# which some ZTF reference cutouts carry instead of NaN): treated like NaN.
_SENTINEL = SENTINEL

# Softening of the asinh stretch, in units of the robust noise of each stamp:
# values within a few sigma stay linear, bright sources are compressed.
_ASINH_SOFTENING = 3.0


def _as_float_batch(x):
    """Return ``x`` as a native-byte-order float array of shape (N, 3, H, W), masked
    pixels NaN."""
    x = unmasked(x)
    if x.dtype.kind not in "fiu":
        raise InputDTypeError(f"triplets must be numeric, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputShapeError(
            "triplets must have shape (N, 3, H, W) or (3, H, W) with channels "
            f"(science, reference, difference); got shape {x.shape}"
        )
    # astype(float64) also converts non-native byte order (e.g. FITS '>f4').
    return x.astype(np.float64, copy=True)


def preprocess_triplet(x, *, return_flags=True):
    """Turn raw difference-imaging triplets into the ``real-bogus`` network input.

    Each of the three stamps of each triplet is normalised on its own: the
    NaN-aware median is subtracted, the result is divided by a robust noise
    estimate (1.4826 x median absolute deviation, NaN-aware) and compressed
    with ``asinh(z / 3)``, which is linear within a few sigma of the
    background and logarithmic for bright sources. This makes the input
    independent of the photometric scaling of each stamp (ZTF science and
    reference cutouts have very different noise levels). Non-finite pixels
    (NaN, +-inf: masked, off-chip, or saturated pixels) are set to 0 (the
    background level) after normalisation and counted in the returned flag;
    so are masking sentinels (|value| >= 1e30, e.g. the -3.4e38 that some ZTF
    reference cutouts carry instead of NaN) and the masked pixels of a
    `numpy.ma.MaskedArray`.

    Parameters
    ----------
    x : array_like, shape (N, 3, 63, 63) or (3, 63, 63)
        Raw triplets, channels ordered science, reference, difference, any
        numeric dtype and byte order. The difference stamp must be oriented
        so that the candidate is positive (ZTF alerts with
        ``isdiffpos == 'f'`` already store ``reference - science``). Use
        :func:`resample_triplet` first for stamps of another size or pixel
        scale.
    return_flags : bool, optional
        If True (default), also return the per-row fraction of invalid pixels.

    Returns
    -------
    out : numpy.ndarray, shape (N, 3, 63, 63), float32
        Network input (C-contiguous).
    nan_fraction : numpy.ndarray, shape (N,), float32
        Only if ``return_flags``: fraction of non-finite pixels in the
        triplet (maximum over the three stamps). A value of 1 for a stamp
        means it carried no information and was replaced by zeros; scores of
        rows with a large fraction (say > 0.5) should not be trusted.

    Raises
    ------
    astromorph.exceptions.InputShapeError
        If the stamps are not 3 x 63 x 63 (a `ValueError` too).
    astromorph.exceptions.InputDTypeError
        If ``x`` is not numeric (a `TypeError` too).
    astromorph.exceptions.InvalidArgumentTypeError
        If ``return_flags`` is not a boolean.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(100, 10, (2, 3, 63, 63))
    >>> x[0, :, :5] = np.nan
    >>> out, flag = preprocess_triplet(x)
    >>> out.shape, out.dtype, bool(flag[0] > 0), float(flag[1])
    ((2, 3, 63, 63), dtype('float32'), True, 0.0)
    """
    return_flags = check_bool(return_flags, "return_flags")
    x = _as_float_batch(x)
    if x.shape[2:] != (TRIPLET_SIZE, TRIPLET_SIZE):
        raise InputShapeError(
            f"real-bogus stamps must be {TRIPLET_SIZE}x{TRIPLET_SIZE} pixels, got "
            f"{x.shape[2]}x{x.shape[3]}; use resample_triplet() to bring other "
            "sizes / pixel scales to the model grid"
        )
    n = x.shape[0]
    if n == 0:
        out = np.zeros(x.shape, np.float32)
        return (out, np.zeros(0, np.float32)) if return_flags else out
    flat = x.reshape(n, 3, -1)
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(flat) < _SENTINEL)  # NaN, +-inf and masking sentinels
    flat[bad] = np.nan
    nan_frac = bad.mean(axis=2)  # (N, 3)
    # Median and MAD per stamp: np.median (partition) on the stamps without
    # invalid pixels, np.nanmedian (much slower) only on the others.
    med = np.empty((n, 3, 1))
    mad = np.empty((n, 3, 1))
    has_bad = nan_frac > 0
    clean = ~has_bad
    if clean.any():
        # 63 x 63 = 3969 pixels (odd): the median is the middle order statistic
        fc = flat[clean]
        k = fc.shape[1] // 2
        m = np.partition(fc, k, axis=1)[:, k:k + 1]
        med[clean] = m
        mad[clean] = np.partition(np.abs(fc - m), k, axis=1)[:, k:k + 1]
    if has_bad.any():
        fb = flat[has_bad]
        m = _finite_rows(np.nanmedian, fb)
        med[has_bad] = m
        mad[has_bad] = _finite_rows(np.nanmedian, np.abs(fb - m))
    sigma = 1.4826 * mad
    # Fallback for stamps with > 50% identical pixels (MAD == 0): the
    # standard deviation, then 1 (all-constant or all-invalid stamp).
    weak = ~(np.isfinite(sigma) & (sigma > 0))
    std = np.ones_like(sigma)
    if weak.any():
        std[weak] = _finite_rows(np.nanstd, flat[weak[..., 0]])[:, 0]
    sigma = np.where(np.isfinite(sigma) & (sigma > 0), sigma, std)
    sigma = np.where(np.isfinite(sigma) & (sigma > 0), sigma, 1.0)
    med = np.where(np.isfinite(med), med, 0.0)
    z = (flat - med) / (_ASINH_SOFTENING * sigma)
    out = np.arcsinh(z)
    out[bad] = 0.0
    out = np.ascontiguousarray(out.reshape(x.shape), dtype=np.float32)
    if return_flags:
        return out, nan_frac.max(axis=1).astype(np.float32)
    return out


def _finite_rows(func, a):
    """``func(a, axis=1, keepdims=True)`` (a NaN-aware reduction) on the rows of ``a``
    with a finite value, NaN on the others, without the all-NaN warnings (no
    ``warnings.catch_warnings``, which is not thread-safe)."""
    out = np.full((len(a), 1), np.nan)
    some = np.isfinite(a).any(axis=1)
    if some.any():
        out[some] = func(a[some], axis=1, keepdims=True)
    return out


def _rebin_matrix(n_in, scale_in, n_out, scale_out, min_cover, c_in=None):
    """Area-overlap resampling matrix (n_out, n_in) between two centred grids.

    Row ``i`` holds the weights of the input pixels overlapping output pixel
    ``i`` (normalised to sum to 1: surface brightness is preserved), or NaN
    if less than ``min_cover`` of the output pixel lies on the input stamp.
    Also returns the covered fraction of each output pixel.

    ``c_in``: the input position (0-based pixel, any real number) that the centre of the
    output's central pixel falls on; None for the central pixel ``n_in // 2``. An array
    ``(N,)`` of them gives matrices ``(N, n_out, n_in)`` and fractions ``(N, n_out)``.
    """
    # Edges of the pixels in arcsec, both grids centred on the candidate: the central pixel
    # centre of the input (ZTF/DES convention: candidate at pixel n // 2) unless given.
    c_in = n_in // 2 if c_in is None else np.asarray(c_in, dtype=np.float64)[..., None]
    c_out = n_out // 2
    in_lo = (np.arange(n_in) - c_in - 0.5) * scale_in
    in_hi = in_lo + scale_in
    out_lo = (np.arange(n_out) - c_out - 0.5) * scale_out
    out_hi = out_lo + scale_out
    overlap = np.clip(
        np.minimum(out_hi[:, None], in_hi[..., None, :])
        - np.maximum(out_lo[:, None], in_lo[..., None, :]),
        0.0,
        None,
    )
    covered = overlap.sum(axis=-1) / scale_out
    with np.errstate(invalid="ignore", divide="ignore"):
        w = overlap / overlap.sum(axis=-1, keepdims=True)
    w[covered < min_cover] = np.nan
    return w, covered


def resample_triplet(x, pixel_scale, *, size=TRIPLET_SIZE, model_pixel_scale=TRIPLET_PIXEL_SCALE,
                     min_cover=0.5, centre=None):
    """Bring triplets of any size and pixel scale onto the model grid.

    The stamps are resampled by exact pixel-area overlap (a separable,
    flux-density conserving rebinning: each output pixel is the area-weighted
    mean of the input pixels it overlaps), centred on the candidate: at
    ``centre`` where given (e.g. from the cutout's WCS and the candidate's
    sky position), else on the central pixel (``n // 2``) of the input,
    which is where ZTF alert cutouts put the candidate (and where
    `astropy.nddata.Cutout2D` of an even side puts a position on a pixel
    centre; for an odd side it is the centre). Output pixels that fall
    outside the input stamp are NaN, so that :func:`preprocess_triplet`
    zero-fills and flags them.

    Parameters
    ----------
    x : array_like, shape (N, 3, H, W) or (3, H, W)
        Raw triplets (science, reference, difference), any numeric dtype.
        Invalid pixels (NaN, inf, masking sentinels) get zero weight: an
        output pixel is the mean of the valid ones it overlaps, NaN where
        less than half of its weight is valid.
    pixel_scale : float, (float, float) or Quantity
        Pixel scale of the input in arcsec per pixel (or an angular
        Quantity), either one value or (scale_y, scale_x). For example 0.27
        for DES stamps (51 x 51), 0.2 for Rubin cutouts, 1.01 for ZTF.
    size : int, optional
        Output side in pixels (default 63, the model grid).
    model_pixel_scale : float, optional
        Output pixel scale in arcsec per pixel (default 1.0, the model grid).
    min_cover : float, optional
        Output pixels with less than this fraction of their area on the input
        stamp are set to NaN (default 0.5).
    centre : array_like, shape (2,) or (N, 2), optional
        Position ``(y, x)`` of the candidate in the input, in 0-based pixels
        (numpy order: row, column; a pixel's centre is a whole number), one
        for every row or one per row. The centre of the output's central
        pixel is put there. NaN (a whole row or one axis) stands for the
        default, ``n // 2`` along that axis, and so does None (default).

    Returns
    -------
    out : numpy.ndarray, shape (N, 3, size, size), float32
        Resampled triplets, ready for :func:`preprocess_triplet`.
    coverage : numpy.ndarray, shape (N,), float32
        Fraction of the model field of view covered by the input stamp (the
        same for every row without ``centre``). Less than 1 means the stamp does not cover the
        field the model was trained on (e.g. 0.05 for DES 51 x 51 stamps at
        0.27 arcsec/px): the missing area is NaN, and the score is less
        reliable (the network has not seen such inputs, except NaN-masked
        CCD edges). `astromorph.predict_files` flags such rows
        ``EXTRAPOLATED`` and leaves the missing area out of ``BLANK``, which
        counts the invalid pixels of the covered part only.

    Examples
    --------
    >>> import numpy as np
    >>> des = np.ones((4, 3, 51, 51), dtype=">f4")
    >>> out, cov = resample_triplet(des, 0.27)
    >>> out.shape, bool(cov[0] < 1)
    ((4, 3, 63, 63), True)
    """
    out, coverage, _ = _resample_triplet(x, pixel_scale, size=size,
                                         model_pixel_scale=model_pixel_scale,
                                         min_cover=min_cover, centre=centre)
    return out, coverage


def _resample_triplet(x, pixel_scale, *, size, model_pixel_scale, min_cover, centre):
    """`resample_triplet`, also returning which output pixels lie on the input stamp:
    ``(N, size, size)`` booleans, False where the output pixel is NaN because less than
    ``min_cover`` of it lies on the stamp (the uncovered part of the model's field, which
    ``coverage`` measures), True where it is data (NaN there only for invalid input
    pixels)."""
    x = _as_float_batch(x)
    scale = to_arcsec(pixel_scale, "pixel_scale")
    if np.size(scale) not in (1, 2):
        raise InvalidArgumentError(f"pixel_scale must be one value or two (scale_y, scale_x), "
                                   f"got {pixel_scale!r}")
    sy, sx = axis_scales(scale)
    model_pixel_scale = to_arcsec(model_pixel_scale, "model_pixel_scale")
    if not is_whole(size):
        raise InvalidArgumentError(f"size must be a positive whole number of pixels, got {size!r}")
    if not in_unit_interval(min_cover):
        raise InvalidArgumentError(f"min_cover must be in (0, 1], got {min_cover!r}")
    size = int(size)
    cen = None
    if centre is not None:
        cen = np.asarray(centre, dtype=np.float64)
        if cen.shape not in ((2,), (x.shape[0], 2)) or np.isinf(cen).any():
            raise InvalidArgumentError(
                f"centre must be (y, x) or one (y, x) per row, {x.shape[0]} x 2, of finite "
                f"pixel positions or NaN; got shape {cen.shape}")
        cen = np.broadcast_to(cen, (x.shape[0], 2))
        defaults = np.array([x.shape[2] // 2, x.shape[3] // 2], dtype=np.float64)
        cen = np.where(np.isnan(cen), defaults, cen)
        if not len(cen) or (cen == defaults).all():
            cen = None  # the default centre: the matrices of one grid for the batch
    if cen is None:
        wy, cy = _rebin_matrix(x.shape[2], sy, size, model_pixel_scale, min_cover)
        wx, cx = _rebin_matrix(x.shape[3], sx, size, model_pixel_scale, min_cover)
        wy, wx, cy, cx = wy[None], wx[None], cy[None], cx[None]
    else:  # one pair of matrices per row
        wy, cy = _rebin_matrix(x.shape[2], sy, size, model_pixel_scale, min_cover, cen[:, 0])
        wx, cx = _rebin_matrix(x.shape[3], sx, size, model_pixel_scale, min_cover, cen[:, 1])
    # Separable rebinning. Invalid input pixels get zero weight (the output is
    # the mean of the valid pixels it overlaps); an output pixel with less
    # than half of its weight on valid pixels, or off the stamp, is NaN.
    wy0 = np.nan_to_num(wy)
    wx0 = np.nan_to_num(wx)
    with np.errstate(invalid="ignore"):
        valid = np.abs(x) < _SENTINEL  # finite and not a masking sentinel
    x0 = np.where(valid, x, 0.0)
    with single_threaded_blas():  # small products: faster on one thread (same values)
        if cen is None:
            num = np.einsum("ih,nchw,jw->ncij", wy0[0], x0, wx0[0], optimize=True)
            den = np.einsum("ih,nchw,jw->ncij", wy0[0], valid.astype(np.float64), wx0[0],
                            optimize=True)
        else:
            num = np.einsum("nih,nchw,njw->ncij", wy0, x0, wx0, optimize=True)
            den = np.einsum("nih,nchw,njw->ncij", wy0, valid.astype(np.float64), wx0,
                            optimize=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den >= 0.5, num / np.where(den > 0, den, 1.0), np.nan)
    off_y = np.broadcast_to(~np.isfinite(wy).all(axis=-1), (x.shape[0], size))
    off_x = np.broadcast_to(~np.isfinite(wx).all(axis=-1), (x.shape[0], size))
    out[np.broadcast_to(off_y[:, None, :, None], out.shape)] = np.nan
    out[np.broadcast_to(off_x[:, None, None, :], out.shape)] = np.nan
    coverage = np.clip(cy, 0, 1).mean(axis=-1) * np.clip(cx, 0, 1).mean(axis=-1)
    on_stamp = ~off_y[:, :, None] & ~off_x[:, None, :]
    return out.astype(np.float32), np.broadcast_to(coverage, x.shape[0]).astype(np.float32), \
        on_stamp
