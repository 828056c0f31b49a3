"""Preprocessing for the optical galaxy morphology model (``morphology``).

The network was trained on Galaxy Zoo 1 (GZ1) colour cutouts from the SDSS
ImgCutout service: 423 x 423 pixel gri composites (i, r, g as red, green,
blue; asinh stretch of Lupton et al. 2004) whose pixel scale is proportional
to the galaxy's Petrosian radius, so that every galaxy fills the middle of
its cutout. Every accepted raw input is turned into that kind of picture and
then into the network input by one function, `preprocess_colour_cutout`:

1. keep the central `CROP_FRACTION` of the cutout (a square window centred
   on the image centre; the galaxy fills it, the outer sky is dropped, as in
   Dieleman, Willett & Dambre 2015),
2. area-average that window down to `STAMP_SIZE` x `STAMP_SIZE` pixels
   (exact fractional-pixel area weights, so any input size works),
3. scale the 8-bit display values to ``[0, 1]`` (``value / 255``) and move
   the colour axis first: float32 ``(3, S, S)``.

Other raw inputs are mapped onto a colour cutout first:

* three calibrated FITS bands g, r, i (e.g. SDSS nanomaggies) go through
  `astropy.visualization.make_lupton_rgb` with the fixed `LUPTON_Q`,
  `LUPTON_STRETCH`, `LUPTON_MINIMUM` and per-band `LUPTON_BAND_SCALES`
  (`gri_to_rgb`, `preprocess_gri`);
* a single band (greyscale) is stretched the same way with the band used for
  all three colours and so gives a grey picture (`single_band_to_rgb`,
  `preprocess_single_band`). The network was trained with random greyscale
  augmentation (20 per cent of the training stamps were turned grey), so a
  single band is a fair input, if a less informative one.

Angular size convention
-----------------------
GZ1 / SDSS ImgCutout cutouts are 423 pixels wide with a pixel scale of
``0.024 * petroR90_r`` arcsec per pixel (Lintott et al. 2008, section 2;
``petroR90_r`` is the SDSS r-band radius containing 90 per cent of the
Petrosian flux). A full cutout thus spans ``423 * 0.024 = 10.152 petroR90_r``
and the network stamp (the central `CROP_FRACTION` of it) spans
``0.35 * 10.152 = 3.553 petroR90_r``. To classify a galaxy in other imaging,
cut a square image of side `cutout_size_from_petrosian` (any number of
pixels) centred on the galaxy and pass it with the default crop fraction, or
cut `stamp_size_from_petrosian` and pass ``crop_fraction=1.0``.
"""
from collections.abc import Mapping

import numpy as np

from .._blas import single_threaded_blas
from ..exceptions import (InputDTypeError, InputError, InputShapeError, InvalidArgumentError,
                          InvalidArgumentTypeError)
from ._checks import (SENTINEL, check_number, check_options, in_unit_interval, invalid_pixels,
                      is_whole, real_array, to_arcsec, unmasked)

__all__ = [
    "STAMP_SIZE",
    "CROP_FRACTION",
    "GZ1_CUTOUT_PIXELS",
    "GZ1_PIXEL_SCALE_PER_PETRO_R90",
    "LUPTON_Q",
    "LUPTON_STRETCH",
    "LUPTON_MINIMUM",
    "LUPTON_BAND_SCALES",
    "area_resample",
    "preprocess_colour_cutout",
    "gri_to_rgb",
    "preprocess_gri",
    "single_band_to_rgb",
    "preprocess_single_band",
    "preprocess_optical",
    "cutout_size_from_petrosian",
    "stamp_size_from_petrosian",
]

#: Side of the network stamp in pixels.
STAMP_SIZE = 64
#: Fraction of the cutout width (centred) kept for the network stamp.
CROP_FRACTION = 0.35
#: Width in pixels of the Galaxy Zoo 1 SDSS cutouts the model was trained on.
GZ1_CUTOUT_PIXELS = 423
#: GZ1 cutout pixel scale in units of petroR90_r (arcsec / pixel per arcsec).
GZ1_PIXEL_SCALE_PER_PETRO_R90 = 0.024
#: Softening parameter ``Q`` of the Lupton et al. (2004) asinh stretch.
LUPTON_Q = 8.0
#: Linear range ``stretch`` of the asinh stretch, in the input flux unit
#: (SDSS nanomaggies: 0.5 nmgy/pixel, about 10 times the r-band sky noise).
LUPTON_STRETCH = 0.5
#: Flux mapped to black (sky level after background subtraction).
LUPTON_MINIMUM = 0.0
#: Multipliers applied to the g, r, i fluxes before the stretch (i -> red,
#: r -> green, g -> blue). They roughly balance the colours of typical galaxies
#: as in SDSS colour composites.
LUPTON_BAND_SCALES = {"g": 1.8, "r": 1.25, "i": 1.0}


def area_resample(n_in, n_out, *, crop_fraction=1.0):
    """Matrix that area-averages the centred crop of a 1-d pixel axis.

    The crop window has width ``crop_fraction * n_in`` pixels, is centred on
    the axis centre and may start and end inside pixels; each output pixel is
    the mean of the input over its footprint, fractional pixels weighted by the
    overlapping length.

    Parameters
    ----------
    n_in : int
        Number of input pixels along the axis.
    n_out : int
        Number of output pixels.
    crop_fraction : float, optional
        Width of the window as a fraction of ``n_in`` (0 < f <= 1).

    Returns
    -------
    numpy.ndarray, shape (n_out, n_in), float64
        Weights; each row sums to one.
    """
    if not in_unit_interval(crop_fraction):
        raise InvalidArgumentError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
    for value, name in ((n_in, "n_in"), (n_out, "n_out")):
        if not is_whole(value):
            raise InvalidArgumentError(f"{name} must be a positive whole number of pixels, "
                                       f"got {value!r}")
    n_in, n_out = int(n_in), int(n_out)
    width = crop_fraction * n_in
    start = 0.5 * (n_in - width)
    edges = start + width * np.arange(n_out + 1) / n_out
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def preprocess_colour_cutout(images, *, size=STAMP_SIZE, crop_fraction=CROP_FRACTION):
    """Turn SDSS-style colour cutouts into network input.

    Parameters
    ----------
    images : array_like, shape (H, W, 3) or (N, H, W, 3)
        RGB colour cutouts (R, G, B = i, r, g for SDSS composites) centred on
        the galaxy. Integer arrays are 8-bit display values 0-255 (as read
        from a JPEG or PNG, in any integer type); floating-point arrays are
        display values already scaled to ``[0, 1]``, where infinities and
        masking sentinels (``|value| >= 1e30``) are missing pixels like NaN
        (NaN in the output where they fall in the field kept). Anything else
        (integers above 255, floats above 1, complex, booleans) raises
        `~astromorph.exceptions.InputError`. Masked pixels of a
        `numpy.ma.MaskedArray` are missing pixels too.
    size : int, optional
        Side of the output stamp (the model expects `STAMP_SIZE`).
    crop_fraction : float, optional
        Fraction of the cutout width kept around the centre before area
        averaging (the model expects `CROP_FRACTION` for a cutout of
        `cutout_size_from_petrosian`, or 1.0 for one of
        `stamp_size_from_petrosian`).

    Returns
    -------
    numpy.ndarray, float32, shape (3, size, size) or (N, 3, size, size)
        Display values in ``[0, 1]``, colour axis first.
    """
    arr = _unmasked_display(images)
    if arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise InputShapeError(f"expected colour cutouts of shape (H, W, 3) or (N, H, W, 3), "
                              f"got {arr.shape}")
    if not is_whole(size):
        raise InvalidArgumentError(f"size must be a positive whole number of pixels, got {size!r}")
    if arr.dtype.kind in "iu" and arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise InputError(f"integer colour cutouts must hold 8-bit display values 0-255; got "
                             f"{arr.min()} to {arr.max()} ({arr.dtype})")
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f":
        bad = invalid_pixels(arr)
        if bad.any():  # masking sentinels (and inf) are missing pixels, as NaN
            arr = np.where(bad, np.nan, arr)
        top = np.nanmax(arr) if arr.size and not bad.all() else 0.0
        if top > 1.0 + 1e-6:
            raise InputError(f"floating-point colour cutouts must be display values in [0, 1]; "
                             f"the largest is {top:g} (divide 8-bit values by 255, or pass them "
                             "as integers)")
    elif arr.dtype != np.uint8:
        raise InputDTypeError(f"colour cutouts must be integers 0-255 or floats in [0, 1], got "
                              f"dtype {arr.dtype}")
    return _display_to_network(arr, size, crop_fraction)


def _unmasked_display(images):
    """Display images as an array; a masked array with masked integer (0-255) values
    becomes float32 display values in [0, 1] with NaN under the mask (`unmasked` for
    the others).

    The values are those of ``value / 255`` in float64 rounded to float32 (the same for
    every level 0-255), the precision `_display_to_network` computes in: 4 bytes a pixel
    and no float64 temporaries (tables hand over blocks of a thousand pictures).
    """
    if not (np.ma.isMaskedArray(images) and images.dtype.kind in "iu"
            and np.ma.getmaskarray(images).any()):
        return unmasked(images)
    data, mask = np.asarray(np.ma.getdata(images)), np.ma.getmaskarray(images)
    if data.dtype != np.uint8:  # 8-bit values need no check
        shown = data[~mask]
        if shown.size and (shown.min() < 0 or shown.max() > 255):
            raise InputError(f"integer colour cutouts must hold 8-bit display values 0-255; "
                             f"got {shown.min()} to {shown.max()} ({data.dtype})")
    out = data.astype(np.float32)
    out /= np.float32(255.0)
    np.copyto(out, np.float32(np.nan), where=mask)
    return out


def _display_to_network(arr, size, crop_fraction):
    """`preprocess_colour_cutout` for display images with any number of channels (last axis)."""
    if not is_whole(size):
        raise InvalidArgumentError(f"size must be a positive whole number of pixels, got {size!r}")
    if not in_unit_interval(crop_fraction):
        raise InvalidArgumentError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
    size = int(size)
    scale = 1.0 / 255.0 if arr.dtype == np.uint8 else 1.0
    single = arr.ndim == 3
    if single:
        arr = arr[None]
    if not (arr.shape[1] and arr.shape[2]):
        raise InputShapeError(f"images must have at least one pixel along each axis, got "
                              f"{arr.shape[1]}x{arr.shape[2]} pixels")
    if arr.shape[1] == arr.shape[2] == size and crop_fraction == 1:
        # The resampling matrices are the identity: the products below would
        # only multiply by the scale (same float32 values, no BLAS work).
        flt = arr.astype(np.float32)
        flt *= np.float32(scale)
        out = np.ascontiguousarray(np.moveaxis(flt, 3, 1))
        return out[0] if single else out
    rows = area_resample(arr.shape[1], size, crop_fraction=crop_fraction)
    cols = area_resample(arr.shape[2], size, crop_fraction=crop_fraction)
    # Only the pixels inside the window matter: slice them before the products.
    r0, r1 = np.flatnonzero(rows.any(0))[[0, -1]]
    c0, c1 = np.flatnonzero(cols.any(0))[[0, -1]]
    window = arr[:, r0:r1 + 1, c0:c1 + 1, :].astype(np.float32)
    rows = (rows[:, r0:r1 + 1] * scale).astype(np.float32)
    cols = cols[:, c0:c1 + 1].astype(np.float32)
    # two batched matrix products (BLAS): out[n, c] = rows @ window[n, :, :, c] @ cols.T.
    # Keep this order of operations: the shipped models were trained on its float32 values,
    # and a rerun of `train` rebuilds their files bit for bit (docs/training.md). Two
    # whole-batch products (one BLAS call instead of one per stamp and channel) ran up to
    # 2x faster beside busy threads but change the last bit of some values, and with them
    # every retrained weight. One BLAS thread: a multi-threaded BLAS waits for its threads
    # on each of these small calls, 5 to 50 times slower on a busy machine (same values).
    with single_threaded_blas():
        out = np.matmul(np.matmul(rows, np.moveaxis(window, 3, 1)), cols.T)
    out = np.ascontiguousarray(out, dtype=np.float32)
    return out[0] if single else out


def _lupton_uint8(red, green=None, blue=None, *, q, stretch, minimum, scales=(1.0, 1.0, 1.0),
                  chunk=1 << 15, planar=False):
    """The Lupton et al. (2004) asinh colour mapping of `~astropy.visualization.make_lupton_rgb`.

    Gives, bit for bit, ``make_lupton_rgb(red, green, blue, minimum=minimum,
    stretch=stretch, Q=q)`` (astropy's default ``interval`` and ``uint8``
    output; tested in ``tests/test_core.py``), for arrays of any shape, in
    cache-sized chunks and without the per-call temporaries: about ten times
    faster on batches of stamps. With ``green`` and ``blue`` None, ``red`` is
    one band used as red, green and blue, and only the (identical) grey
    channel is computed and returned.

    Parameters
    ----------
    red, green, blue : array_like, same shape
        Linear flux arrays; taken as float64, NaNs and masking sentinels
        (``|value| >= 1e30``) become 0 (`numpy.nan_to_num` for the first),
        then each is multiplied by its entry of ``scales``.
    q, stretch : float
        Softening ``Q`` and linear range of the asinh stretch.
    minimum : float or sequence of 3 floats
        Flux mapped to black, per channel.
    scales : sequence of 3 floats, optional
        Flux multipliers of the red, green and blue inputs.

    planar : bool, optional
        Return the three channels as planes, shape ``(3,) + red.shape`` (same values; the
        interleaved layout costs a strided store per chunk, and network input is colour
        first anyway).

    Returns
    -------
    numpy.ndarray, uint8, shape ``red.shape + (3,)`` (or ``red.shape`` for one band)
    """
    grey = green is None and blue is None
    mins = np.broadcast_to(np.asarray(minimum, dtype=np.float64), (3,))
    if grey and not mins[0] == mins[1] == mins[2]:
        raise InvalidArgumentError(f"one band needs one minimum, got {minimum}")
    if grey:
        return _grey_lupton_uint8(red, q=q, stretch=stretch, minimum=float(mins[0]),
                                  scale=float(np.asarray(scales, dtype=np.float64).ravel()[0]),
                                  chunk=chunk)
    return _lupton_uint8_float64(red, green, blue, q=q, stretch=stretch, minimum=mins,
                                 scales=scales, chunk=chunk, planar=planar)


def _lupton_constants(q, stretch):
    """``soften`` and ``slope`` of astropy's LuptonAsinhStretch (with its guards on Q)."""
    q = 0.1 if abs(q) < 1.0 / 2 ** 23 else min(q, 1e10)
    return q / float(stretch), 0.1 / np.arcsinh(0.1 * q)


#: Half-width, in output levels, of the band around each integer level inside which the float32
#: stretch of `_grey_lupton_uint8` hands a pixel to the float64 reference. The float32 error is
#: at most 5e-5 levels below level 300 (measured on 28 million values over seven decades of
#: flux), so pixels outside the band truncate to the same level in both precisions.
_FLOAT32_MARGIN = 1e-3


def _grey_lupton_uint8(band, *, q, stretch, minimum, scale, chunk):
    """Grey channel of `_lupton_uint8`, bit for bit, with the stretch in float32.

    For one band used as red, green and blue, the Lupton mapping reduces to
    ``floor(255 * clip(slope * asinh(soften * (scale * x - minimum)), 0, 1))``.
    That is evaluated in float32 (the asinh about seven times faster than in
    float64, the whole stretch about three times);
    the few pixels that land within `_FLOAT32_MARGIN` of an integer level,
    where the two precisions could truncate differently, and non-finite
    pixels are recomputed with the float64 reference, so the output is
    identical to it.
    """
    soften, slope = _lupton_constants(q, stretch)
    flat = np.asarray(band).reshape(-1)
    unscaled = scale == 1.0 and minimum == 0.0
    soften32, gain32 = np.float32(soften), np.float32(255.0 * slope)
    out = np.empty(flat.size, np.uint8)
    redo = []  # pixels for the float64 reference
    with np.errstate(over="ignore", invalid="ignore"):
        for s in range(0, flat.size, chunk):
            part = flat[s:s + chunk]
            if unscaled:  # the values themselves (float32 ones unchanged)
                c = part.astype(np.float32)
            else:  # scale and subtract in float64 like the reference, round once
                c = (part.astype(np.float64) * scale - minimum).astype(np.float32)
            # NaN, inf, masking sentinels and float32 overflow of the flux: left to the
            # reference (sentinels are judged on the input, before any scaling)
            bad = invalid_pixels(c if unscaled else part)
            if not unscaled:
                bad |= ~np.isfinite(c)
            if bad.any():
                c[bad] = 0.0
            c *= soften32
            y = np.arcsinh(c, out=c)
            y *= gain32
            near = np.abs(y - np.rint(y)) < _FLOAT32_MARGIN
            near &= (y > 0.5) & (y < 255.5)
            near |= bad
            near |= np.isinf(y)  # soften * flux beyond the float32 range
            np.clip(y, 0.0, 255.0, out=y)
            out[s:s + chunk] = y  # truncating cast
            redo.append(np.flatnonzero(near) + s)
    redo = np.concatenate(redo) if redo else np.zeros(0, np.intp)
    if redo.size:  # one call of the reference for all of them
        out[redo] = _lupton_uint8_float64(flat[redo], None, None, q=q, stretch=stretch,
                                          minimum=np.full(3, minimum), scales=(scale,) * 3,
                                          chunk=chunk)
    return out.reshape(np.shape(band))


def _lupton_uint8_float64(red, green, blue, *, q, stretch, minimum, scales, chunk,
                          planar=False):
    """`_lupton_uint8` in float64, the reference (``minimum``: 3 floats)."""
    soften, slope = _lupton_constants(q, stretch)
    grey = green is None and blue is None
    mins = np.asarray(minimum, dtype=np.float64)
    bands = [red] if grey else [red, green, blue]
    flat = [np.asarray(b).reshape(-1) for b in bands]
    gain = np.asarray(scales, dtype=np.float64)[:len(flat), None]
    n = flat[0].size
    out = np.empty((len(flat), n), np.uint8)  # planes: contiguous stores
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            c = np.empty((len(flat), m))
            for k, f in enumerate(flat):
                c[k] = f[s:s + m]
            if not (np.abs(c) < SENTINEL).all():
                c[np.isfinite(c) & (np.abs(c) >= SENTINEL)] = 0.0  # masking sentinels
                np.nan_to_num(c, copy=False)
            c *= gain
            c -= mins[:len(flat), None]
            # intensity (r + g + b) / 3 exactly as astropy sums it
            inten = ((c[0] + c[0] + c[0]) if grey else (c[0] + c[1] + c[2])) / 3.0
            ratio = np.arcsinh(inten * soften)
            ratio *= slope
            ratio /= inten
            ratio[inten <= 0] = 0.0                               # f(I) / I, 0 where I <= 0
            c *= ratio
            np.maximum(c, 0.0, out=c)
            peak = c.max(axis=0)
            over = peak > 1.0                                     # scale the brightest channel to 1
            np.divide(c, peak, out=c, where=over)
            c *= 255.0
            out[:, s:s + chunk] = c                               # truncating cast, like astype
    shape = np.shape(red)
    if grey:
        return out.reshape(shape)
    out = out.reshape((3,) + shape)
    return out if planar else np.ascontiguousarray(np.moveaxis(out, 0, -1))


def gri_to_rgb(g, r, i, *, q=LUPTON_Q, stretch=LUPTON_STRETCH, minimum=LUPTON_MINIMUM,
               band_scales=None):
    """Make an SDSS-like 8-bit colour composite from calibrated g, r, i images.

    Gives what `astropy.visualization.make_lupton_rgb` (Lupton et al. 2004)
    gives, bit for bit, with red = i, green = r, blue = g after multiplying
    each band by its entry in `LUPTON_BAND_SCALES`, for single images or
    batches.

    Parameters
    ----------
    g, r, i : array_like, shape (H, W) or (N, H, W)
        Background-subtracted images on a common pixel grid, in a linear flux
        unit (the constants are set for SDSS nanomaggies). NaNs, masking
        sentinels (``|value| >= 1e30``, e.g. ZTF's -3.4e38) and masked pixels of a
        `numpy.ma.MaskedArray` become 0.
    q, stretch, minimum : float, optional
        Asinh stretch parameters (defaults `LUPTON_Q`, `LUPTON_STRETCH`,
        `LUPTON_MINIMUM`).
    band_scales : dict, optional
        Flux multipliers ``{"g": .., "r": .., "i": ..}``; default
        `LUPTON_BAND_SCALES`.

    Returns
    -------
    numpy.ndarray, uint8, shape (H, W, 3) or (N, H, W, 3)
    """
    return _gri_to_rgb(g, r, i, q=q, stretch=stretch, minimum=minimum,
                       band_scales=band_scales)


def _check_lupton(q, stretch, minimum):
    """Typed errors for bad stretch options (`InvalidArgumentTypeError` for non-numbers)."""
    check_number(q, "q", minimum=0)
    check_number(stretch, "stretch", positive=True)
    try:
        mins = np.asarray(minimum, dtype=float)
    except (TypeError, ValueError):
        raise InvalidArgumentTypeError(f"minimum must be a number (or one per channel), got "
                                       f"{minimum!r}") from None
    if mins.size not in (1, 3) or mins.ndim > 1 or not np.isfinite(mins).all():
        raise InvalidArgumentError(f"minimum must be one finite number or three (one per "
                                   f"channel), got {minimum!r}")


def _gri_to_rgb(g, r, i, *, q=LUPTON_Q, stretch=LUPTON_STRETCH, minimum=LUPTON_MINIMUM,
                band_scales=None, planar=False):
    """`gri_to_rgb`; with ``planar=True`` the colour planes first, shape (3, H, W) or
    (3, N, H, W) (see `_lupton_uint8`)."""
    if band_scales is not None and not isinstance(band_scales, Mapping):
        raise InvalidArgumentTypeError(f"band_scales must be a dict of g, r and i multipliers, "
                                       f"got {band_scales!r}")
    scales = dict(LUPTON_BAND_SCALES if band_scales is None else band_scales)
    if not {"g", "r", "i"} <= set(scales):  # (all three, whatever else is there)
        raise InvalidArgumentError(f"band_scales needs g, r and i, got {sorted(scales)}")
    for band in "gri":
        check_number(scales[band], f"band_scales[{band!r}]")
    _check_lupton(q, stretch, minimum)
    bands = [real_array(b, name) for b, name in ((i, "i"), (r, "r"), (g, "g"))]
    if not bands[0].shape == bands[1].shape == bands[2].shape:
        raise InputShapeError(f"g, r and i must have the same shape, got g {bands[2].shape}, "
                              f"r {bands[1].shape} and i {bands[0].shape}")
    if bands[0].ndim not in (2, 3):
        raise InputShapeError(f"expected (H, W) or (N, H, W) images, got {bands[0].shape}")
    return _lupton_uint8(*bands, q=q, stretch=stretch, minimum=minimum,
                         scales=[scales[k] for k in "irg"], planar=planar)


def preprocess_gri(g, r, i, *, size=STAMP_SIZE, crop_fraction=CROP_FRACTION, **lupton):
    """Network input from calibrated g, r, i images (`gri_to_rgb` then
    `preprocess_colour_cutout`).

    Parameters
    ----------
    g, r, i : array_like, shape (H, W) or (N, H, W)
        See `gri_to_rgb`.
    size : int, optional
        See `preprocess_colour_cutout`.
    crop_fraction : float, optional
        See `preprocess_colour_cutout`.
    **lupton
        ``q``, ``stretch``, ``minimum``, ``band_scales`` for `gri_to_rgb`.

    Returns
    -------
    numpy.ndarray, float32, shape (3, size, size) or (N, 3, size, size)
    """
    check_options(lupton, ("q", "stretch", "minimum", "band_scales"), "preprocess_gri")
    # the colour planes as an (N, H, W, 3) view: no interleaving only to undo it
    rgb = np.moveaxis(_gri_to_rgb(g, r, i, planar=True, **lupton), 0, -1)
    return preprocess_colour_cutout(rgb, size=size, crop_fraction=crop_fraction)


def _grey_uint8(image, *, q=LUPTON_Q, stretch=LUPTON_STRETCH, minimum=LUPTON_MINIMUM):
    """The grey channel of `single_band_to_rgb`, shape (H, W) or (N, H, W)."""
    _check_lupton(q, stretch, minimum)
    if np.ma.isMaskedArray(image) and image.dtype == np.uint8:
        image = np.ma.filled(image, 0)  # a display image: masked pixels black, as NaN in flux
    arr = real_array(image, "image")
    if arr.ndim not in (2, 3):
        raise InputShapeError(f"expected a band of shape (H, W) or (N, H, W), got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    # gri_to_rgb with unit band scales and the same image as r, g and b
    return _lupton_uint8(arr, q=q, stretch=stretch, minimum=minimum)


def single_band_to_rgb(image, *, q=LUPTON_Q, stretch=LUPTON_STRETCH, minimum=LUPTON_MINIMUM):
    """Grey 8-bit colour picture from one band.

    ``uint8`` input is taken to be an 8-bit greyscale display image and is
    replicated into three channels. Any other dtype is a linear flux image and
    gets the asinh stretch of `gri_to_rgb` (band scale 1) with the same image
    as red, green and blue.

    Parameters
    ----------
    image : array_like, shape (H, W) or (N, H, W)
        NaNs, masking sentinels (``|value| >= 1e30``) and masked pixels of a
        `numpy.ma.MaskedArray` become 0, as in `gri_to_rgb` (black in a ``uint8`` image).
    q, stretch, minimum : float, optional
        Asinh stretch parameters for flux images.

    Returns
    -------
    numpy.ndarray, uint8, shape (H, W, 3) or (N, H, W, 3)
    """
    grey = _grey_uint8(image, q=q, stretch=stretch, minimum=minimum)
    return np.repeat(grey[..., None], 3, axis=-1)


def preprocess_single_band(image, *, size=STAMP_SIZE, crop_fraction=CROP_FRACTION, **lupton):
    """Network input from a single band (`single_band_to_rgb` then
    `preprocess_colour_cutout`).

    Parameters
    ----------
    image : array_like, shape (H, W) or (N, H, W)
        ``uint8`` greyscale display image(s) or linear flux image(s).
    size : int, optional
        See `preprocess_colour_cutout`.
    crop_fraction : float, optional
        See `preprocess_colour_cutout`.
    **lupton
        ``q``, ``stretch``, ``minimum`` for flux images.

    Returns
    -------
    numpy.ndarray, float32, shape (3, size, size) or (N, 3, size, size)
    """
    check_options(lupton, ("q", "stretch", "minimum"), "preprocess_single_band")
    return np.repeat(_single_band_plane(image, size=size, crop_fraction=crop_fraction, **lupton),
                     3, axis=-3)


def _single_band_plane(image, *, size=STAMP_SIZE, crop_fraction=CROP_FRACTION, **lupton):
    """One plane of `preprocess_single_band`, shape (1, size, size) or (N, 1, size, size).

    The three channels are equal, so only one is computed; `Model.predict`
    replicates it batch by batch for models whose card says
    ``single_band: replicate``.
    """
    grey = _grey_uint8(image, **lupton)
    return _display_to_network(grey[..., None], size, crop_fraction)


def preprocess_optical(images, *, size=STAMP_SIZE, crop_fraction=CROP_FRACTION):
    """Network input for the ``morphology`` model from colour or single-band cutouts.

    Dispatches on the shape: an array whose last axis has length 3 and that
    has 3 or 4 dimensions, ``(H, W, 3)`` or ``(N, H, W, 3)``, is an RGB colour
    cutout (`preprocess_colour_cutout`); ``(H, W)`` or ``(N, H, W)`` is a
    single band (`preprocess_single_band`). For three separate g, r, i flux
    images use `preprocess_gri`.

    Parameters
    ----------
    images : array_like
        Cutouts centred on the galaxy, of angular size
        `cutout_size_from_petrosian` (or `stamp_size_from_petrosian` with
        ``crop_fraction=1.0``).
    size : int, optional
        See `preprocess_colour_cutout`.
    crop_fraction : float, optional
        See `preprocess_colour_cutout`.

    Returns
    -------
    numpy.ndarray, float32, shape (3, size, size) or (N, 3, size, size)
    """
    arr = images if np.ma.isMaskedArray(images) else np.asarray(images)  # keep a mask
    if arr.ndim in (3, 4) and arr.shape[-1] == 3:
        return preprocess_colour_cutout(arr, size=size, crop_fraction=crop_fraction)
    return preprocess_single_band(arr, size=size, crop_fraction=crop_fraction)


def cutout_size_from_petrosian(petro_r90_arcsec):
    """Angular width of a GZ1-equivalent full cutout.

    Parameters
    ----------
    petro_r90_arcsec : float, array_like or Quantity
        SDSS r-band ``petroR90_r`` (or an equivalent 90 per cent light radius)
        in arcsec, or an angular `~astropy.units.Quantity`. Non-finite or
        negative radii give NaN or negative sizes (per-row problems for the
        caller to flag), never an error.

    Returns
    -------
    float or numpy.ndarray
        Side of the square cutout in arcsec, ``423 * 0.024 * petroR90_r``
        (= 10.152 petroR90_r). Feed such cutouts with the default
        `CROP_FRACTION`.
    """
    r90 = to_arcsec(petro_r90_arcsec, "petro_r90_arcsec", positive=False)
    return GZ1_CUTOUT_PIXELS * GZ1_PIXEL_SCALE_PER_PETRO_R90 * r90


def stamp_size_from_petrosian(petro_r90_arcsec):
    """Angular width of the network stamp.

    Parameters
    ----------
    petro_r90_arcsec : float, array_like or Quantity
        SDSS r-band ``petroR90_r`` in arcsec, or an angular Quantity.

    Returns
    -------
    float or numpy.ndarray
        Side of the square region the network sees, in arcsec:
        ``CROP_FRACTION * 423 * 0.024 * petroR90_r`` (= 3.553 petroR90_r).
        Cutouts of this size are fed with ``crop_fraction=1.0``.
    """
    return CROP_FRACTION * cutout_size_from_petrosian(petro_r90_arcsec)
