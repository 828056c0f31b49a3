"""From raw stamps to network input and from network output to table columns.

Every path into a model (`annotate`, `predict_files`, the command line) goes
through `prepare`, which calls the model family's function in
`astromorph.preprocessing` (the same function its training used), and through
`result_columns`, which names the outputs by task.

Raw stamps come in three kinds (`RawStamps.kind`):

``"colour"``
    8-bit RGB display images ``(N, H, W, 3)`` (JPEG/PNG cutouts).
``"bands"``
    Images in physical units ``(N, B, H, W)``, one plane per band, with
    band names (``None`` where unknown) and optionally a pixel scale.
``"triplet"``
    Difference-imaging triplets ``(N, 3, H, W)``: science, reference, difference.
"""
from dataclasses import dataclass, field

import numpy as np
from astropy.table import MaskedColumn, Table

from ._flags import Flag
from .preprocessing._checks import axis_scales
from .exceptions import InputError, ModelCardError
from .preprocessing._checks import SENTINEL

__all__ = ["RawStamps", "BlankMeasure", "ConstantMeasure", "RadioMeasure", "FirstGrid",
           "first_grid_stamps", "radio_first_grid", "prepare",
           "model_family", "multidimensional_outputs", "result_columns", "BLANK_THRESHOLD",
           "model_angular_grid", "fixed_field"]

#: Rows whose fraction of NaN/inf/blank pixels exceeds this get `Flag.BLANK`.
BLANK_THRESHOLD = 0.05


@dataclass
class RawStamps:
    """A batch of raw stamps of one kind (see the module docstring)."""

    kind: str
    data: np.ndarray
    bands: tuple = None
    #: Pixel scale in arcsec/pixel, scalar or (N,), a tuple ``(scale_y, scale_x)`` for
    #: pixels that are not square (one for the batch), or None when unknown.
    pixel_scale: object = None
    #: Restoring beam FWHM (major axis) in arcsec, scalar or (N,) (NaN where unknown), or
    #: None when unknown; only the radio family uses it (`coarse_beam`).
    beam: object = None
    #: Radio only: the restoring beam of each row, ``(N, 3)``: FWHM of the major and minor
    #: axes in arcsec and the angle of the major axis in degrees from the stamp's +y axis
    #: towards -x (NaN where unknown), which `prepare` convolves to FIRST's beam where finer
    #: (`astromorph.preprocessing.smooth_to_first_beam`); None: no row is smoothed (the
    #: caller's ``match_beam=False``).
    beam_shape: object = None
    #: Set by `prepare` for the radio family where ``beam_shape`` is given: ``(N,)`` bool,
    #: the rows that were smoothed to FIRST's beam, else None.
    smoothed: object = None
    #: Per-row flags already known (e.g. EDGE from the cutout stage).
    flags: np.ndarray = field(default=None)
    #: Triplets: the candidate's position ``(y, x)`` in each stamp (0-based pixels),
    #: ``(N, 2)``, NaN where unknown (the central pixel ``n // 2``), or None (all unknown).
    #: Radio: the source's, about which the stamps are brought to the FIRST grid where they
    #: are resampled (`annotate`'s stamps cut on an image's own pixels, about the pixel
    #: nearest the source), NaN where unknown (the centre ``(n - 1) / 2``), or None.
    centre: np.ndarray = None
    #: Set by `prepare` where `Flag.BLANK` was judged on another measure than the largest
    #: fraction of invalid pixels of one plane of the stamp (which `_explain` words by
    #: default): a `BlankMeasure`, else None.
    blank: object = None
    #: Set by `prepare` where `Flag.CONSTANT` was judged on other planes than the stamp's
    #: own (a triplet resampled onto the model's grid): a `ConstantMeasure`, else None.
    constant: object = None
    #: Set by `prepare` for the radio family: what `Flag.OUT_OF_DISTRIBUTION` was judged on
    #: (a `RadioMeasure`), else None.
    radio: object = None
    #: True where `prepare` may write into ``data`` (a buffer of the caller's own that it
    #: no longer reads, such as annotate's stamps; the radio family sets invalid pixels to
    #: NaN in it instead of in a copy); never for arrays of the user's (`Model.predict`).
    scratch: bool = False
    #: The quantisation step of the pixels each stamp was resampled from, ``(N,)`` or per
    #: plane ``(N, C)`` (a float image tile-compressed with loss: its tiles' ZSCALE,
    #: `astromorph._cutouts.StampResult.quantum` for annotate's stamps, `Stamp.quantum` for
    #: a FITS stamp file's; 0 where the pixels are as written), or None (all as written): a
    #: stamp whose values span no more than it is constant to the precision of the file
    #: (`Flag.CONSTANT`; triplets resampled onto the model's grid, averaging blocks of the
    #: stamp's pixels: `astromorph._cutouts._block_quantum` of it).
    quantum: object = None
    #: Radio only: the stamps of ``data`` were brought to the FIRST grid stamp by stamp
    #: (`radio_first_grid`): what was found on their native pixels (a `FirstGrid`), else
    #: None.
    first: object = None
    #: ``(N,)`` bool, or None (none): rows whose stamp runs over the image's edge where the
    #: model's field does not (annotate's radio stamps cut wider than the field, on the
    #: image's own pixels, for the smoothing): the part off the image was filled, and
    #: `Flag.BLANK` is the cutting stage's (the pixels on the image), as for `Flag.EDGE`
    #: rows.
    filled: object = None

    def __post_init__(self):
        if self.kind not in ("colour", "bands", "triplet"):
            raise ValueError(f"unknown stamp kind {self.kind!r}")
        if self.flags is None:
            self.flags = np.zeros(len(self.data), dtype=np.int32)


@dataclass
class BlankMeasure:
    """What `Flag.BLANK` was judged on, row by row, for the words of the reasons."""

    #: (N,) the fraction of invalid pixels (NaN, inf, masking sentinels) compared with
    #: `BLANK_THRESHOLD`.
    fraction: np.ndarray
    #: (N,) the plane it was measured in (the triplet member with the largest fraction),
    #: -1 for all planes together.
    plane: np.ndarray
    #: Whether it was measured among the pixels of the model's grid that the stamp covers
    #: within the model's field (a triplet resampled to that grid), not the stamp's own.
    field: bool = False

    def row(self, j):
        """``(fraction, plane, field)`` of row ``j``, as `astromorph._predict._explain`
        takes it."""
        return float(self.fraction[j]), int(self.plane[j]), self.field


@dataclass
class ConstantMeasure:
    """What `Flag.CONSTANT` of triplets resampled onto the model's grid was judged on, row
    by row, for the words of the reasons: the planes on that grid, and the spread allowed
    there (the quantisation step of the stamp's pixels averaged over blocks,
    `astromorph._cutouts._block_quantum`)."""

    #: (N, C, H, W) the planes on the model's grid (NaN where the stamp does not cover it).
    data: np.ndarray
    #: (N, C) the quantisation step of each plane's own pixels (`RawStamps.quantum`), or
    #: None (as written: the exact test).
    step: object = None
    #: (N, C) the step on the model's grid, that the flag allowed (`_block_quantum` of
    #: ``step``), or None.
    allowance: object = None
    #: The number of the stamp's pixels each pixel of the model's grid averages.
    area: float = 1.0

    def row(self, j):
        """``(planes, steps, allowances, area)`` of row ``j`` (the steps None where the
        pixels are as written), as `astromorph._predict._explain` takes it."""
        def per_plane(v):
            return None if v is None else np.broadcast_to(
                np.asarray(v, dtype=np.float64).reshape(len(self.data), -1)[j],
                (self.data.shape[1],))
        return self.data[j], per_plane(self.step), per_plane(self.allowance), self.area


def model_family(card):
    """``"optical"``, ``"radio"`` or ``"triplet"``: which preprocessing feeds a model.

    Read from the card's ``input.family`` or, failing that, from the
    `astromorph.preprocessing` namespace that defines ``input.preprocessing``.
    """
    from . import preprocessing

    spec = card["input"]
    if spec.get("family"):
        return spec["family"]
    function = str(spec.get("preprocessing") or "").rsplit(".", 1)[-1]
    for family in ("optical", "radio", "triplet"):
        if function in getattr(preprocessing, family).__all__:
            return family
    raise InputError(f"model {card['name']!r}: its card does not say which preprocessing "
                     f"feeds it (input.preprocessing = {spec.get('preprocessing')!r})")


def known_family(card):
    """`model_family`, or None for a card that names no preprocessing astromorph knows
    (a model only ever called on network-ready arrays)."""
    try:
        return model_family(card)
    except InputError:
        return None


def model_angular_grid(card):
    """``(size_pix, pixel_scale_arcsec or None, kind)`` of the model's stamp on the sky.

    For galaxy-scaled models (``kind == "petrosian"``) the pixel scale depends
    on each galaxy and is ``None`` here; see `astromorph.annotate`.
    """
    size = card["input"].get("angular_size") or {}
    kind = size.get("kind", "fixed")
    npix = int(size.get("size_pix", card["input"]["shape"][-1]))
    scale = size.get("pixel_scale_arcsec")
    return npix, (None if scale is None else float(scale)), kind


def fixed_field(card):
    """The field a model's card fixes, in words (``"63 px at 1 arcsec/px, 63 arcsec
    across"``), or None for the galaxy models (the optical family), whose field follows
    ``size_col``/``stamp_size`` and ``crop_fraction``.

    The models with a fixed field take none of those options.
    """
    if model_family(card) == "optical":
        return None
    npix, scale, _ = model_angular_grid(card)
    size = card["input"].get("angular_size") or {}
    npix = int(size.get("stamp_size_pix", npix))  # the network's field within a larger cut
    scale = size.get("stamp_pixel_scale_arcsec", scale)
    if scale is None:
        return f"{npix} px at the model's own pixel scale"
    return f"{npix} px at {float(scale):g} arcsec/px, {npix * float(scale):g} arcsec across"


def _flag_non_finite(data, bad, flags):
    """`Flag.BLANK` for rows with many invalid pixels (``bad``: NaN, inf, masking
    sentinels); `Flag.BAD_INPUT` for rows with a plane (band) that has no valid pixel at
    all: nothing to score."""
    frac = bad.mean(axis=tuple(range(1, data.ndim)))
    flags |= np.where(frac > BLANK_THRESHOLD, int(Flag.BLANK), 0).astype(flags.dtype)
    planes = bad.reshape(len(data), data.shape[1] if data.ndim == 4 else 1, -1)
    flags |= np.where(planes.all(axis=2).any(axis=1), int(Flag.BAD_INPUT), 0).astype(flags.dtype)
    return flags


def _clean(data, flags, quantum=None):
    """Fill invalid pixels (NaN, inf, masking sentinels such as ZTF's -3.4e38) with the
    row median (0 where none is valid); flag them (`_flag_non_finite`), and constant rows
    (`_flag_constant`, with ``quantum``)."""
    from .preprocessing._checks import invalid_pixels

    data = np.asarray(data, dtype=np.float32)
    bad = invalid_pixels(data)
    if bad.any():
        flags = _flag_non_finite(data, bad, flags)
        # only rows with bad pixels need a median (nanmedian loops over rows in Python)
        rows = np.flatnonzero(bad.reshape(len(data), -1).any(axis=1))
        sub, sub_bad = data[rows], bad[rows]
        # all-bad rows are filled with 0; the others with their median (computed
        # only where defined, so no warning: catch_warnings is not thread-safe)
        some = ~sub_bad.reshape(len(rows), -1).all(axis=1)
        med = np.zeros(len(rows), np.float32)
        if some.any():
            med[some] = np.nanmedian(np.where(sub_bad[some], np.nan, sub[some])
                                     .reshape(int(some.sum()), -1), axis=1)
        data = data.copy()  # never modify the caller's array
        data[rows] = np.where(sub_bad, med.reshape((-1,) + (1,) * (data.ndim - 1)), sub)
    return data, _flag_constant(data, flags, quantum)


def _quantum_tolerance(quantum, hi, lo):
    """The largest spread (max - min) of values that quantisation with steps ``quantum``
    (broadcast with ``hi`` and ``lo``, the values' extremes) leaves of a single value: the
    step, plus the float32 rounding of the values (none where the step is 0: exact)."""
    with np.errstate(invalid="ignore", over="ignore"):
        size = np.maximum(np.abs(hi), np.abs(lo)).astype(np.float64)
        return np.where(quantum > 0, quantum + 8 * np.finfo(np.float32).eps * size, 0.0)


def _flag_constant(data, flags, quantum=None):
    """Set `Flag.CONSTANT` on rows of ``data`` holding a single value: to the precision of
    a lossily compressed image where ``quantum`` (`RawStamps.quantum`, ``(N,)`` or
    ``(N, C)``, the largest of its planes taken) gives its quantisation step, values that
    span no more than that step."""
    flat = np.asarray(data).reshape(len(data), -1)
    if flat.size:
        if quantum is None:
            constant = np.ptp(flat, axis=1) == 0
        else:
            q = np.asarray(quantum, dtype=np.float64).reshape(len(data), -1).max(axis=1)
            hi, lo = flat.max(axis=1), flat.min(axis=1)
            with np.errstate(invalid="ignore", over="ignore"):
                constant = (hi - lo).astype(np.float64) <= _quantum_tolerance(q, hi, lo)
        flags |= np.where(constant, int(Flag.CONSTANT), 0).astype(flags.dtype)
    return flags


def _clean_colour(data, flags):
    """`_clean` for ``(N, H, W, 3)`` colour pictures of display values in [0, 1]: invalid
    pixels filled with the picture's median, `Flag.BLANK` past `BLANK_THRESHOLD`,
    `Flag.BAD_INPUT` for a picture without a valid pixel (the whole picture is one plane,
    as `astromorph._predict._explain` words it)."""
    filled, flags = _clean(np.asarray(data).reshape(len(data), -1), flags)
    return filled.reshape(np.shape(data)), flags


def _flag_upsampled(flags, height, width, size, crop_fraction):
    """Set `Flag.EXTRAPOLATED` when the field given to the network spans fewer than half its
    ``size`` pixels: the model grid is then much finer than the data."""
    if min(height, width) * (1.0 if crop_fraction is None else crop_fraction) < size / 2:
        flags |= flags.dtype.type(int(Flag.EXTRAPOLATED))
    return flags


def extrapolation_words(card, kind, shape, dtype, pixel_scale, crop_fraction):
    """Why the pixel grid makes a stamp `Flag.EXTRAPOLATED` for a model (its card), in
    words, or None where the grid does not (e.g. only a radio beam does, `coarse_beam`).

    For stamps of one ``kind``, ``shape`` ``(H, W)`` and ``dtype`` at ``pixel_scale``
    (arcsec/pixel, None where unknown) and the ``crop_fraction`` given to `prepare`: how
    much of the model's field they cover along each axis (radio and triplet models, whose
    field is fixed on the sky), or how far the network's field is upsampled (galaxy models
    and the radio data set's 8-bit images), by the tests the family's adapter flags with.
    """
    family = model_family(card)
    h, w = shape
    if family == "optical" or (family == "radio" and (kind == "colour"
                                                      or np.dtype(dtype) == np.uint8)):
        if family == "optical":
            from .preprocessing import _optical as opt

            size = card["input"]["shape"][-1]
            crop = opt.CROP_FRACTION if crop_fraction is None else crop_fraction
        else:
            from .preprocessing._radio import DATASET_IMAGE_PIXELS as size
            crop = 1.0
        across = min(h, w) * crop
        if across >= size / 2:
            return None
        part = "" if crop == 1 else f"the central {crop:g} of "
        return (f"the network's field ({part}the {w}x{h} stamp) is {across:.3g} pixels across, "
                f"upsampled {size / across:.3g}x onto its {size}x{size} grid: the stamp's "
                "pixels are much coarser than the model's (resampling extrapolated)")
    if family == "radio":
        from .preprocessing import _radio as rad

        model_scale, field = rad.FIRST_PIXEL_SCALE_ARCSEC, rad.STAMP_ANGULAR_SIZE_ARCSEC
        sy, sx = axis_scales(model_scale if pixel_scale is None else pixel_scale)
        cover = np.minimum(np.array([w * sx, h * sy]) / field, 1.0)
        short = min(h * sy, w * sx) < field * (1 - 1e-6)
    else:
        from .preprocessing import _triplet as tri

        size, model_scale = card["input"]["shape"][-1], tri.TRIPLET_PIXEL_SCALE
        if pixel_scale is None and (h, w) == (size, size):
            return None  # scored on its own grid, as `_triplet` does
        field = size * model_scale
        sy, sx = axis_scales(model_scale if pixel_scale is None else pixel_scale)
        # the covered fraction of each axis, as `resample_triplet` measures it
        cover = np.array([np.clip(tri._rebin_matrix(n, scale, size, model_scale, 0.5)[1],
                                  0, 1).mean() for n, scale in ((w, sx), (h, sy))])
        short = cover.prod() < 0.999
    words = []
    if short:
        words.append(f"the {w}x{h} stamp spans {w * sx:.3g}\" x {h * sy:.3g}\" and does "
                     f"not cover the model's {field:.4g}\" field: "
                     f"{100 * cover[0]:.3g}% x {100 * cover[1]:.3g}% of it, the rest filled")
    if max(sx, sy) > 2 * model_scale:
        pixels = f"{sx:.3g}\"/pixel" if sx == sy else f"{sx:.3g}\" x {sy:.3g}\""
        words.append(f"the stamp's {pixels} pixels are more than twice as coarse as the "
                     f"model's {model_scale:g}\"/pixel grid")
    return " and ".join(words) + " (resampling extrapolated)" if words else None


def _optical(raw, card, crop_fraction):
    from .preprocessing import _optical as opt

    kw = {"size": card["input"]["shape"][-1]}
    if crop_fraction is not None:
        kw["crop_fraction"] = crop_fraction
    flags = raw.flags.copy()
    height, width = np.shape(raw.data)[-3:-1] if raw.kind == "colour" else np.shape(raw.data)[-2:]
    flags = _flag_upsampled(flags, height, width, kw["size"],
                            kw.get("crop_fraction", opt.CROP_FRACTION))
    if raw.kind == "colour":
        data = np.asarray(raw.data)
        if data.dtype.kind == "f":  # display values, NaN where masked (tables' masked cells)
            data, flags = _clean_colour(data, flags)
            return opt.preprocess_colour_cutout(data, **kw), flags
        return opt.preprocess_colour_cutout(data, **kw), _flag_constant(data, flags)
    if raw.kind != "bands":
        raise InputError(f"model {card['name']!r} takes colour images or g, r, i bands, "
                         f"not {raw.kind} stamps")
    data, flags = _clean(raw.data, flags, raw.quantum)
    nb = data.shape[1]
    if nb > 1 and (flags & int(Flag.BLANK)).any():  # judged on all bands together (`_clean`)
        from .preprocessing._checks import invalid_pixels

        bad = invalid_pixels(np.asarray(raw.data, dtype=np.float32))
        raw.blank = BlankMeasure(bad.mean(axis=(1, 2, 3)),
                                 np.full(len(data), -1))
    if nb == 1:
        if card["input"].get("single_band") == "replicate":  # Model.predict replicates it
            return opt._single_band_plane(data[:, 0], **kw), flags
        return opt.preprocess_single_band(data[:, 0], **kw), flags
    if nb == 3:
        names = [str(b).lower() if b else None for b in (raw.bands or (None,) * 3)]
        if set(names) == {"g", "r", "i"}:
            g, r, i = (data[:, names.index(b)] for b in "gri")
        elif any(names):
            raise InputError(f"model {card['name']!r} needs bands g, r, i; got {raw.bands}")
        else:
            g, r, i = data[:, 0], data[:, 1], data[:, 2]
        return opt.preprocess_gri(g, r, i, **kw), flags
    raise InputError(f"model {card['name']!r} takes 1 band or 3 bands (g, r, i); "
                     f"got {nb} planes")


def coarse_beam(beam):
    """Is the restoring beam (FWHM in arcsec, scalar or array; None or NaN: unknown) more than
    twice FIRST's, which the radio model was trained at? False where unknown."""
    from .preprocessing._radio import FIRST_BEAM_FWHM_ARCSEC

    if beam is None:
        return np.False_
    with np.errstate(invalid="ignore"):
        return np.asarray(beam, dtype=float) > 2 * FIRST_BEAM_FWHM_ARCSEC


def _radio(raw, card, crop_fraction):
    from .preprocessing._radio import (MAX_BACKGROUND_SIGMA, MAX_POSITIVE_FRACTION,
                                       MIN_BACKGROUND_SIGMA, MIN_RING_SIGMA)

    x, flags, level, edges, rings = _radio_input(raw, card)
    # the training images have at most 12.8 % of the network input above zero (the data-set
    # threshold): far more is a background offset or a filled field the model never saw;
    # a cutout in flux units is also out of distribution when its own background lies above
    # zero (FIRST maps are background-subtracted), which a 1- or 2-sigma pedestal does while
    # putting only 2-12 % of the network input above zero; or below zero by more than
    # MIN_BACKGROUND_SIGMA, where the threshold counted from zero cuts the faint emission;
    # the same bounds hold for the strips along its edges (a pedestal over part of the
    # cutout, which moves the whole window's background by a fraction of its depth); and
    # when a ring about the centre lies significantly below zero by more than MIN_RING_SIGMA
    # (a negative bowl around the source, or a shallower pedestal below zero)
    positive = np.mean(x > 0, axis=tuple(range(1, x.ndim))) if len(x) else np.zeros(0)
    with np.errstate(invalid="ignore"):
        background = (level > MAX_BACKGROUND_SIGMA) | (level < MIN_BACKGROUND_SIGMA) | np.any(
            (edges > MAX_BACKGROUND_SIGMA) | (edges < MIN_BACKGROUND_SIGMA), axis=1) | (
            rings[:, 0] < MIN_RING_SIGMA)
    flags |= np.where((positive > MAX_POSITIVE_FRACTION) | background,
                      int(Flag.OUT_OF_DISTRIBUTION), 0).astype(flags.dtype)
    raw.radio = RadioMeasure(positive, level, edges, rings)
    return x, flags


def _unmeasured(n):
    """The background, edge backgrounds and ring background of ``n`` radio rows whose
    background the data-set scaling has removed (8-bit and colour images): NaN."""
    return np.full(n, np.nan), np.full((n, 4), np.nan), np.full((n, 2), np.nan)


@dataclass
class FirstGrid:
    """Radio stamps already brought to the FIRST grid (`radio_first_grid`): the first part
    of `_radio_input`, made stamp by stamp as `astromorph.predict_files` reads them, so that
    a batch holds its FIRST-grid images instead of its native stamps (a 1201^2 cutout of
    0.5" pixels is 16 times its 300^2 FIRST-grid image). `RawStamps.data` holds the images,
    ``(N, 1, 300, 300)``."""

    #: ``(N,)`` int32: the rows' flags from their native pixels (`RawStamps.flags` and
    #: invalid pixels, constant images, the field, the pixels and the beam).
    flags: np.ndarray
    #: ``(N,)`` bool: the rows smoothed to FIRST's beam (`RawStamps.smoothed`), or None
    #: (``beam_shape`` None).
    smoothed: object
    #: ``(N,)`` bool: the rows smoothed on their own pixels before they were sampled on the
    #: FIRST grid (not smoothed again on it).
    native: np.ndarray


def _radio_input(raw, card):
    """The radio network input of ``raw``, its flags (all but OUT_OF_DISTRIBUTION) and, per
    row, its background in units of the noise (`background_significance` of the data-set
    window on the FIRST grid; NaN for 8-bit and colour images, whose background the data-set
    scaling has removed), which `_radio` compares with `MAX_BACKGROUND_SIGMA` and
    `MIN_BACKGROUND_SIGMA`, those of the strips along its edges (``(N, 4)``,
    `_radio._edge_levels`; NaN where not measured) and the lowest significant ring background
    with its inner radius (``(N, 2)``, `_radio._ring_levels`; NaN where none or not
    measured). ``raw.first``: the stamps are on the FIRST grid already (`FirstGrid`)."""
    from .preprocessing import _radio as rad

    options = dict(card["input"].get("preprocessing_options") or {})
    if raw.first is not None:  # (brought to the FIRST grid by `radio_first_grid`)
        raw.smoothed = raw.first.smoothed
        return _radio_first_grid_input(raw, np.asarray(raw.data)[:, 0],
                                       raw.first.flags.copy(), raw.first.native, options)
    flags = _coarse_beam_flags(raw)
    data = np.asarray(raw.data)
    if raw.kind == "colour":  # data-set style 8-bit grey PNG/JPEG
        flags = _flag_upsampled(flags, *data.shape[1:3], rad.DATASET_IMAGE_PIXELS, 1.0)
        if data.dtype.kind == "f":  # display values, NaN where masked (tables' masked cells)
            data, flags = _clean_colour(data, flags)
            return rad.preprocess_dataset_image(data[..., 0] * np.float32(255), **options), \
                flags, *_unmeasured(len(data))
        return rad.preprocess_dataset_image(data[..., 0], **options), \
            _flag_constant(data, flags), *_unmeasured(len(data))
    if raw.kind != "bands" or data.shape[1] != 1:
        raise InputError(f"model {card['name']!r} takes one radio image per stamp; got "
                         f"{raw.kind} stamps of shape {data.shape[1:]}")
    if data.dtype == np.uint8:
        flags = _flag_upsampled(flags, *data.shape[2:], rad.DATASET_IMAGE_PIXELS, 1.0)
        return rad.preprocess_dataset_image(data[:, 0], **options), \
            _flag_constant(data, flags), *_unmeasured(len(data))
    images, flags, native = _radio_to_first_grid(raw, data, flags)
    return _radio_first_grid_input(raw, images, flags, native, options)


def _coarse_beam_flags(raw):
    """A copy of ``raw.flags`` with `Flag.EXTRAPOLATED` where the beam is much coarser than
    FIRST's (`coarse_beam`): it blurs the structure the model classifies, whatever the pixel
    grid it was brought to (NVSS or RACS images on the FIRST grid)."""
    flags = raw.flags.copy()
    flags |= np.where(np.broadcast_to(coarse_beam(raw.beam), flags.shape),
                      int(Flag.EXTRAPOLATED), 0).astype(flags.dtype)
    return flags


def first_grid_stamps(kind, dtype, shape, pixel_scale):
    """Would `_radio_input` bring radio stamps of ``kind``, ``dtype``, ``shape`` (one
    stamp's, ``(1, H, W)``) and ``pixel_scale`` (one value or ``(scale_y, scale_x)``, or
    None: unknown) to the FIRST grid (`radio_first_grid` can then do it stamp by stamp)?"""
    from .preprocessing import _radio as rad

    if kind != "bands" or len(shape) != 3 or shape[0] != 1 or pixel_scale is None \
            or np.dtype(dtype) == np.uint8:
        return False
    scales = np.asarray(axis_scales(pixel_scale), dtype=float)
    resample = not np.isclose(scales, rad.FIRST_PIXEL_SCALE_ARCSEC, rtol=1e-3).all()
    return bool(resample or shape[-1] != rad.DATASET_IMAGE_PIXELS)


def radio_first_grid(raw, *, caches=None):
    """The first part of `_radio_input` for radio stamps that it brings to the FIRST grid
    (`first_grid_stamps`): ``raw`` (`RawStamps` of one stamp, or a few) as `RawStamps`
    whose `~RawStamps.data` is on the FIRST grid and `~RawStamps.first` says what was found
    on the native pixels (`FirstGrid`); the same floats and flags, row by row, as those of
    a batch of them. ``caches``: a dict kept between calls on stamps of one shape, pixel
    scale and beam (the smoothing kernel and its transforms)."""
    flags = _coarse_beam_flags(raw)
    with np.errstate(invalid="ignore", divide="ignore"):  # (as `prepare`)
        images, flags, native = _radio_to_first_grid(raw, np.asarray(raw.data), flags,
                                                     caches=caches)
    return RawStamps(raw.kind, images[:, None], bands=raw.bands, pixel_scale=raw.pixel_scale,
                     beam=raw.beam, beam_shape=raw.beam_shape, flags=raw.flags,
                     centre=raw.centre, quantum=raw.quantum,
                     first=FirstGrid(flags, raw.smoothed, native))


def _radio_to_first_grid(raw, data, flags, *, caches=None):
    """The radio images ``data`` (``(N, 1, H, W)``, of ``raw``) on the FIRST grid where
    their pixel scale is known and not FIRST's, or they are not 300 pixels wide (else the
    float32 images, NaN where invalid), their ``flags`` updated (invalid pixels, constant
    images, the field and the pixels; `Flag.EDGE` where the FIRST field about the grid's
    centre runs off the image, `annotate`'s rule: `_radio._field_on_image`) and the rows
    smoothed on their own pixels (``(N,)`` bool); sets ``raw.smoothed``."""
    from .preprocessing import _radio as rad

    # Invalid pixels (NaN, inf, masking sentinels) become NaN: the data-set procedure
    # counts them as empty sky and measures the noise on the valid ones (a median fill
    # would shrink the noise estimate and let noise through the 3-sigma threshold).
    given, data = data, np.asarray(data, dtype=np.float32)
    # where invalid pixels can be set in place: a conversion of the stamps (float64, or
    # FITS's big-endian floats) is this function's own, as are stamps that are scratch
    in_place = data.flags.writeable and (
        (raw.scratch and data is raw.data) or not np.may_share_memory(data, given))
    quantum = None if raw.quantum is None else np.asarray(raw.quantum).reshape(len(data), -1)
    for j in range(len(data)):  # one image at a time: the mask of one image held
        row, keep = slice(j, j + 1), flags[j:j + 1]
        step = None if quantum is None else quantum[row]
        bad = rad.invalid_pixels(data[row])
        if bad.any():
            keep = _flag_non_finite(data[row], bad, keep)
            # invalid pixels 0 for the constant test, then NaN: in a copy (one, made at the
            # first such image; the caller's array is kept), or in place (above)
            if not in_place:
                data, in_place = data.copy(), True
            data[row][bad] = np.float32(0)
            keep = _flag_constant(data[row], keep, step)
            data[row][bad] = np.float32(np.nan)
        else:
            keep = _flag_constant(data[row], keep, step)
        flags[row] = keep
    images = data[:, 0]
    # (scale_y, scale_x) of each image: a tuple is one pair for the batch (pixels that are
    # not square), else one scale, or one per image, for both axes
    given = rad.FIRST_PIXEL_SCALE_ARCSEC if raw.pixel_scale is None else raw.pixel_scale
    scales = np.broadcast_to(np.asarray(given, dtype=float)[..., None] if not isinstance(
        given, tuple) else np.asarray(given, dtype=float), (len(images), 2))
    # the stamp must span the network's field (CROP_PIXELS at 1.8"): else extrapolated
    side = np.min(np.asarray(images.shape[-2:]) * scales, axis=1)
    short = side < rad.STAMP_ANGULAR_SIZE_ARCSEC * (1 - 1e-6)
    coarse = scales.max(axis=1) > 2 * rad.FIRST_PIXEL_SCALE_ARCSEC
    flags |= np.where(short | coarse, int(Flag.EXTRAPOLATED), 0).astype(flags.dtype)
    # a beam finer than FIRST's fades extended emission against the noise per beam: the
    # image is brought to FIRST's beam, on its own pixels where they are finer than FIRST's
    # along some axis (the fine beam is undersampled on the 1.8" grid: smoothed after the
    # resampling, a point source lost 2 % of its peak), else on the FIRST grid (the kernel
    # in the pixels of the grid it is applied on). On pixels finer than FIRST's, an image of
    # a known beam that needs no smoothing is band-limited by it as FIRST's are: the FIRST
    # grid's points are sampled too (block means and bilinear interpolation widened a 5.4"
    # beam: a point source lost 1.6 % of its peak from 1" pixels, 11 % from 0.5")
    native = {}  # row: the image (smoothed) on its own pixels, sampled on the FIRST grid
    # the source's position less each stamp's centre (image pixels, (dy, dx)), where given
    offsets = None
    if raw.centre is not None and np.isfinite(raw.centre).any():
        offsets = np.nan_to_num(np.asarray(raw.centre, dtype=float).reshape(len(images), 2)
                                - (np.asarray(images.shape[-2:]) - 1) / 2)
    # EDGE where the FIRST field about the grid's centre runs off the image: `annotate`'s
    # rule (`_radio._field_on_image`), the field's outermost points along the image's axes
    reach = (rad.DATASET_IMAGE_PIXELS - 1) / 2 * rad.FIRST_PIXEL_SCALE_ARCSEC / scales
    centre = (np.asarray(images.shape[-2:]) - 1) / 2 + (
        np.zeros((len(images), 2)) if offsets is None else offsets)
    y, x = (np.stack([centre[:, k] - reach[:, k], centre[:, k] + reach[:, k]], axis=1)
            for k in (0, 1))
    off_field = ~rad._field_on_image(x, y, images.shape[-2:])
    flags |= np.where(off_field, int(Flag.EDGE), 0).astype(flags.dtype)
    if raw.beam_shape is not None:
        shapes = np.broadcast_to(np.asarray(raw.beam_shape, dtype=float), (len(images), 3))
        raw.smoothed = rad._fine_beams(shapes)
        if raw.pixel_scale is not None:
            finer = scales.min(axis=1) < rad.FIRST_PIXEL_SCALE_ARCSEC * (1 - 1e-3)
            with np.errstate(invalid="ignore"):
                known = np.isfinite(shapes[:, 0]) & (shapes[:, 0] > 0)
            for rows, smooth in ((raw.smoothed & finer, True),
                                 (~raw.smoothed & known & finer, False)):
                # rows of one pixel scale together (a kernel per distinct beam)
                pairs, inverse = np.unique(scales[rows], axis=0, return_inverse=True)
                for k, s in enumerate(pairs):
                    sel = np.flatnonzero(rows)[np.ravel(inverse) == k]
                    s = tuple(s) if s[0] != s[1] else s[0]
                    if smooth:  # a few at a time: only the FIRST-grid samples accumulate
                        native.update(rad._native_to_first_grid(images, sel, shapes, s,
                                                                caches=caches, offsets=offsets))
                    else:  # (one by one: no copy of the rows)
                        for j in sel.tolist():
                            native[j] = rad._sample_beam_limited(
                                images[j:j + 1], s,
                                offset=None if offsets is None else offsets[j])[0]
    if raw.pixel_scale is not None:
        resample = ~np.isclose(scales, rad.FIRST_PIXEL_SCALE_ARCSEC, rtol=1e-3).all(axis=1)
        if resample.any() or images.shape[-1] != rad.DATASET_IMAGE_PIXELS:
            def on_grid(j, image, s):  # (the grid about the source, where it is given)
                if j in native:
                    return native[j]
                s = tuple(s) if s[0] != s[1] else s[0]
                if offsets is None or not offsets[j].any():
                    return rad.resample_to_first_grid(image, s)
                return rad._resample_to_first_grid(image, s, offset=offsets[j])

            images = np.stack([on_grid(j, im, s)
                               for j, (im, s) in enumerate(zip(images, scales))])
    return images, flags, np.isin(np.arange(len(images)), list(native))


def _radio_first_grid_input(raw, images, flags, native, options):
    """The rest of `_radio_input` on the FIRST grid (the noise, the detection check, the
    data-set scaling and the background, edge and ring levels of the data-set window), as it
    returns them: ``images`` ``(N, H, W)`` from `_radio_to_first_grid`, ``native`` its rows
    smoothed on their own pixels."""
    from .preprocessing import _radio as rad

    if raw.smoothed is not None and raw.smoothed.any():
        # the rest: on the FIRST grid
        sel = np.flatnonzero(raw.smoothed & ~native)
        if len(sel):
            shapes = np.broadcast_to(np.asarray(raw.beam_shape, dtype=float), (len(images), 3))
            images = np.array(images)  # a copy: rows not smoothed are kept bit for bit
            images[sel] = rad.smooth_to_first_beam(images[sel], shapes[sel])[0]
    # the noise is measured once, for the detection check and the data-set scaling, with
    # the backgrounds of peak_significance and background_significance: one sort per window
    window = rad._centre_window(images, rad.DATASET_IMAGE_PIXELS, np.nan)
    rms, median, clipped = rad._sigma_clipped_rms_stack(window, background=True)
    faint = ~(rad._peak_over_rms(images, median, rms) >= rad.DETECTION_SIGMA)
    flags |= np.where(faint, int(Flag.NO_SOURCE), 0).astype(flags.dtype)
    level = rad._over_rms(clipped, rms)
    # (an image without noise, e.g. a constant one, is left to measure its own, as before)
    return rad.preprocess_first_cutout(images, rms=rms if np.all(rms > 0) else None,
                                       **options), flags, level, rad._edge_levels(window), \
        rad._ring_levels(window, rms)


def _triplet(raw, card, crop_fraction):
    from .preprocessing import _triplet as tri

    flags = raw.flags.copy()
    if raw.kind not in ("triplet", "bands") or np.shape(raw.data)[1] != 3:
        raise InputError(f"model {card['name']!r} takes (science, reference, difference) "
                         f"triplets; got {raw.kind} stamps of shape {np.shape(raw.data)[1:]}")
    data = np.asarray(raw.data)
    size = card["input"]["shape"][-1]
    centre = None if raw.centre is None or np.isnan(raw.centre).all() else raw.centre
    quantum = raw.quantum
    area = None  # (resampled: the stamp's pixels each pixel of the model's grid averages)
    if raw.pixel_scale is not None or data.shape[-1] != size or data.shape[-2] != size \
            or centre is not None:
        scale = tri.TRIPLET_PIXEL_SCALE if raw.pixel_scale is None else raw.pixel_scale
        # (scale_y, scale_x): each axis by its own scale (pixels that are not square)
        scale = scale if isinstance(scale, tuple) else float(np.atleast_1d(scale)[0])
        # about the candidate's own pixel where known (Rubin: the cutouts' WCS), else n // 2
        data, coverage, on_stamp = tri._resample_triplet(
            data, scale, size=size, model_pixel_scale=tri.TRIPLET_PIXEL_SCALE, min_cover=0.5,
            centre=centre)
        # extrapolated: the stamp does not cover the model's field, or its pixels are more
        # than twice as coarse as the model's (upsampled, as for the other families)
        coarse = max(axis_scales(scale)) > 2 * tri.TRIPLET_PIXEL_SCALE
        flags |= np.where((coverage < 0.999) | coarse, int(Flag.EXTRAPOLATED),
                          0).astype(flags.dtype)
        # the pixels now average blocks of the stamp's (area overlap)
        area = float(np.prod([max(1.0, np.floor(tri.TRIPLET_PIXEL_SCALE / s * (1 + 1e-9)))
                              for s in axis_scales(scale)]))
        if quantum is not None:
            from ._cutouts import _block_quantum

            quantum = _block_quantum(np.asarray(quantum, dtype=np.float64), area)
    else:
        on_stamp = None
    x, nan_fraction = tri.preprocess_triplet(data)
    if on_stamp is not None:
        # only pixels of the data count: the part of the model's field that the stamp does
        # not cover (NaN after resampling) is EXTRAPOLATED's, not BLANK's; the reasons
        # quote this measure, not the fraction of the input stamp's own pixels
        members = _covered_blank_fraction(data, on_stamp)
        nan_fraction = members.max(axis=1)
        raw.blank = BlankMeasure(nan_fraction, members.argmax(axis=1), field=True)
    flags |= np.where(nan_fraction > BLANK_THRESHOLD, int(Flag.BLANK), 0).astype(flags.dtype)
    data = np.asarray(data, dtype=np.float32)
    empty, constant = _empty_or_constant(data, quantum)
    if area is not None:  # judged on the model's grid: the reasons word what was judged
        raw.constant = ConstantMeasure(data, raw.quantum, quantum, area)
    flags |= np.where(empty, int(Flag.BAD_INPUT), 0).astype(flags.dtype)  # outputs masked
    flags |= np.where(constant, int(Flag.CONSTANT), 0).astype(flags.dtype)
    return x, flags


def _covered_blank_fraction(data, on_stamp):
    """Per row of resampled triplets ``data`` (N, 3, H, W) and member, (N, 3), the fraction
    of invalid pixels (NaN, inf, masking sentinels) among the ``on_stamp`` pixels
    (N, H, W): those of the model's field that the input stamp covers. 1 for a row whose
    stamp covers none of them."""
    from .preprocessing._checks import invalid_pixels

    on = np.broadcast_to(on_stamp[:, None], data.shape)
    covered = on_stamp.reshape(len(data), -1).sum(axis=1)[:, None]
    bad = (invalid_pixels(data) & on).reshape(len(data), data.shape[1], -1).sum(axis=2)
    return np.where(covered > 0, bad / np.maximum(covered, 1), 1.0)


#: A difference stamp whose central 3 x 3 pixels average this many robust sigma (or more)
#: below its median shows the candidate negative (none of the 209 real ZTF alerts, stored
#: with the candidate positive, does; most of them negated do).
NEGATIVE_CENTRE_SIGMA = 3.0


def negative_candidates(x):
    """Rows of preprocessed triplets ``x`` (N, 3, H, W; `preprocess_triplet`'s asinh of
    z / 3) whose difference is negative at the centre, where the model expects the
    candidate positive: a difference given as reference - science without its sign."""
    from .preprocessing._triplet import _ASINH_SOFTENING

    c = x.shape[-1] // 2
    centre = x[:, 2, c - 1:c + 2, c - 1:c + 2].astype(np.float64)
    return (_ASINH_SOFTENING * np.sinh(centre)).mean(axis=(1, 2)) <= -NEGATIVE_CENTRE_SIGMA


def _empty_or_constant(data, quantum=None):
    """Per stamp of ``(N, C, H, W)``: has a plane no valid pixel (NaN, inf or masking
    sentinel), has a plane only one valid value (to the precision of a lossily compressed
    image: values that span no more than its quantisation step, ``quantum``, ``(N,)`` or
    ``(N, C)``, `RawStamps.quantum`)? Neither carries information.

    The plain max and min of each plane settle it for planes whose extremes are valid
    (every pixel is then valid); only the other planes are masked, so that clean
    batches cost two reductions, not two masked copies. No all-NaN reductions (they warn).
    """
    flat = data.reshape(len(data), data.shape[1], -1)
    with np.errstate(invalid="ignore"):
        hi, lo = flat.max(axis=2), flat.min(axis=2)  # NaN where a plane has a NaN
        odd = ~((np.abs(hi) < SENTINEL) & (np.abs(lo) < SENTINEL))
    constant, empty = hi == lo, np.zeros(hi.shape, bool)
    if odd.any():
        part = flat[odd]
        valid = np.abs(part) < SENTINEL
        some = valid.any(axis=1)
        top = np.where(valid, part, -np.inf).max(axis=1, initial=-np.inf)
        bottom = np.where(valid, part, np.inf).min(axis=1, initial=np.inf)
        empty[odd], constant[odd] = ~some, some & (top == bottom)
        # (the valid extremes of those planes, for the test below; NaN where none)
        hi[odd], lo[odd] = np.where(some, top, np.nan), np.where(some, bottom, np.nan)
    if quantum is not None:
        q = np.broadcast_to(np.asarray(quantum, dtype=np.float64).reshape(len(data), -1),
                            hi.shape)
        with np.errstate(invalid="ignore", over="ignore"):
            constant |= (hi - lo).astype(np.float64) <= _quantum_tolerance(q, hi, lo)
    return empty.any(axis=1), constant.any(axis=1)


_FAMILIES = {"optical": _optical, "radio": _radio, "triplet": _triplet}


@dataclass
class RadioMeasure:
    """What `Flag.OUT_OF_DISTRIBUTION` of a radio stamp was judged on, row by row, for the
    words of the reasons."""

    #: (N,) the fraction of the network input's pixels above zero, compared with
    #: `astromorph.preprocessing.radio.MAX_POSITIVE_FRACTION`.
    positive: np.ndarray
    #: (N,) the background of the data-set window on the FIRST grid in units of its noise
    #: (`astromorph.preprocessing.radio.background_significance`), compared with
    #: ``MAX_BACKGROUND_SIGMA`` and ``MIN_BACKGROUND_SIGMA``; NaN where not measured (8-bit
    #: and colour images, whose background the data-set scaling has removed).
    background: np.ndarray
    #: (N, 4) the backgrounds of the strips along the bottom, top, left and right edges of
    #: that window, each in units of its own noise (`astromorph.preprocessing._radio.
    #: _edge_levels`), compared with the same bounds; NaN where not measured.
    edges: np.ndarray
    #: (N, 2) the lowest mean of the rings about the centre of that window that lie
    #: significantly below zero, in units of the noise, and the ring's inner radius in pixels
    #: (`astromorph.preprocessing._radio._ring_levels`), compared with
    #: ``MIN_RING_SIGMA``; NaN where no ring is significantly below zero or not measured.
    rings: np.ndarray

    def row(self, j):
        """``(positive, background, edges, ring)`` of row ``j``, as
        `astromorph._predict._explain` takes it."""
        return float(self.positive[j]), float(self.background[j]), tuple(
            float(v) for v in self.edges[j]), tuple(float(v) for v in self.rings[j])


def prepare(model, raw, *, crop_fraction=None):
    """Network input and per-row flags for a batch of raw stamps.

    Parameters
    ----------
    model : Model
    raw : RawStamps
    crop_fraction : float, optional
        For galaxy-morphology models: fraction of the stamp kept around the
        centre (default: the card's convention for full cutouts; `annotate`
        passes 1.0 because it cuts exactly the network's field).

    Returns
    -------
    x : numpy.ndarray, float32, (N, C, H, W)
        ``C`` is 1 for single-band stamps of models whose card says
        ``single_band: replicate`` (`Model.predict` replicates the plane).
    flags : numpy.ndarray, int32, (N,)

    Notes
    -----
    Sets ``raw.blank`` (a `BlankMeasure`, or None) to what `Flag.BLANK` was judged on, and
    ``raw.radio`` (a `RadioMeasure`, or None) to what `Flag.OUT_OF_DISTRIBUTION` was.
    """
    family = model_family(model.card)
    if family not in _FAMILIES:
        raise InputError(f"model {model.name!r}: unknown preprocessing family {family!r}")
    # (the family's function sets them where it judges BLANK, CONSTANT otherwise)
    raw.blank = raw.constant = None
    raw.radio = raw.smoothed = None  # (the radio family's sets them)
    if len(raw.data) == 0:
        return np.zeros((0, *model.input_shape), np.float32), raw.flags.copy()
    with np.errstate(invalid="ignore", divide="ignore"):  # blank stamps in colour stretches
        x, flags = _FAMILIES[family](raw, model.card, crop_fraction)
    flags = np.asarray(flags, dtype=np.int32)
    # the filled part of a stamp that runs over the image edge is EDGE's to report: for such
    # rows the stage that cut (or padded) them judged BLANK on the pixels inside the image
    edge = (raw.flags & int(Flag.EDGE)) != 0
    if raw.filled is not None:  # (stamps over the edge whose field is on the image)
        edge = edge | np.asarray(raw.filled, dtype=bool)
    flags[edge] = (flags[edge] & ~int(Flag.BLANK)) | (raw.flags[edge] & int(Flag.BLANK))
    return np.asarray(x, dtype=np.float32), flags


#: Description of the ``<prefix>_flags`` columns: every bit of `Flag` by value and name.
FLAGS_DESCRIPTION = ("astromorph quality bits (astromorph.Flag, 0 = clean): "
                     + ", ".join(f"{int(f)} {f.name}" for f in Flag))
#: Description of the radio models' ``<prefix>_smoothed`` columns.
SMOOTHED_DESCRIPTION = ("True: the image's restoring beam was finer than FIRST's 5.4 arcsec, "
                        "and it was convolved to the smallest beam containing FIRST's before "
                        "scoring (match_beam)")


def multidimensional_outputs(card):
    """Names of the multidimensional columns `result_columns` makes for a model (its card)."""
    return ["embedding"] if any(spec.get("kind") == "embedding" for spec in card["outputs"]) \
        else []


def result_columns(model, prediction, flags, valid, *, smoothed=None):
    """Table of the model's output columns, one row per input row.

    Parameters
    ----------
    model : Model
    prediction : Prediction or None
        Outputs for the rows where ``valid`` is true (in order).
    flags : numpy.ndarray of int, (N,)
    valid : numpy.ndarray of bool, (N,)
        Rows that were scored; the others get masked values.
    smoothed : numpy.ndarray of bool, (N,), optional
        Radio models: the rows whose image was convolved to a beam that contains FIRST's
        (`astromorph.preprocessing.smooth_to_first_beam`); None: none of them.

    Returns
    -------
    astropy.table.Table
        Columns named by task: ``<prefix>_p_<label>`` and ``<prefix>_label``
        for classifiers, ``<prefix>_score`` (e.g. ``rb_score``) for scores,
        ``embedding`` (multidimensional float32) for embeddings,
        ``<prefix>_<label>`` for regression outputs, and ``<prefix>_flags``; for radio
        models ``<prefix>_smoothed`` (bool) after it.

    Raises
    ------
    astromorph.exceptions.ModelCardError
        When two outputs would make the same column, in any case (loading a card checks
        this).
    """
    n = len(flags)
    valid = np.asarray(valid, dtype=bool)
    prefix = model.card.get("column_prefix", model.name.replace("-", "_"))
    table = Table()

    def put(name, values, description, unit=None, fill=np.nan):
        # in any case: FITS compares column names (TTYPE) without regard to case
        if name.casefold() in {c.casefold() for c in [*table.colnames, f"{prefix}_flags",
                                                      f"{prefix}_smoothed"]}:
            raise ModelCardError(f"two outputs of model {model.name!r} name the column "
                                 f"{name!r} (column_prefix {prefix!r}; column names are "
                                 "compared without regard to case)")
        values = np.asarray(values)
        full = np.zeros((n, *values.shape[1:]), dtype=values.dtype)
        if values.dtype.kind == "f":
            full[...] = fill
        full[valid] = values
        mask = np.broadcast_to(~valid.reshape((-1,) + (1,) * (full.ndim - 1)), full.shape)
        table[name] = MaskedColumn(full, mask=mask.copy(), description=description, unit=unit)

    for spec in model.card["outputs"]:
        name, kind = spec["name"], spec.get("kind", "values")
        values = prediction[name] if prediction is not None and valid.any() else \
            np.zeros((0, *_output_tail(model, spec)), np.float32)
        if kind == "probabilities":
            for j, label in enumerate(spec["labels"]):
                put(f"{prefix}_p_{label}", values[:, j].astype(np.float32),
                    f"{model.name} probability of class {label!r}")
            labels = np.asarray(spec["labels"])
            best = labels[np.argmax(values, axis=1)] if len(values) else \
                np.zeros(0, dtype=labels.dtype)
            put(f"{prefix}_label", best, f"{model.name} most probable class")
        elif kind == "score":
            put(f"{prefix}_score", values.reshape(len(values)).astype(np.float32),
                spec.get("description", f"{model.name} score in [0, 1]"))
        elif kind == "embedding":
            put("embedding", values.astype(np.float32),
                spec.get("description", f"{model.name} L2-normalised embedding vector"))
        else:
            labels = spec.get("labels") or [str(j) for j in range(values.shape[1])]
            names = spec.get("names") or [None] * len(labels)
            for j, (label, readable) in enumerate(zip(labels, names)):
                put(f"{prefix}_{label}", values[:, j].astype(np.float32),
                    f"{model.name} output {label!r}" + (f" ({readable})" if readable else ""))
    table[f"{prefix}_flags"] = np.asarray(flags, dtype=np.int32)
    table[f"{prefix}_flags"].description = FLAGS_DESCRIPTION
    if known_family(model.card) == "radio":  # what was done to the pixels: not a flag
        table[f"{prefix}_smoothed"] = np.zeros(n, bool) if smoothed is None \
            else np.asarray(smoothed, dtype=bool)
        table[f"{prefix}_smoothed"].description = SMOOTHED_DESCRIPTION
    return table


def result_names(model):
    """Names of the columns `result_columns` makes for ``model`` (to check clashes first)."""
    return result_columns(model, None, np.zeros(0, np.int32), np.zeros(0, bool)).colnames


def _output_tail(model, spec):
    if spec.get("kind") == "probabilities":
        return (len(spec["labels"]),)
    if spec.get("kind") == "score":
        return ()
    return (int(spec.get("size", len(spec.get("labels", [])) or 1)),)
