"""`annotate_stamps`: a table whose rows hold stamps -> the same table with model columns.

Alert brokers and stamp archives hand out tables in which every row carries its own
cutouts: three array columns (science, reference, difference), one column of ``(3, H, W)``
cubes, or the gzipped FITS bytes of alert packets. Each row becomes a `Stamp` as if it had
been read from a file, and goes through the same checks (`_predict._conform`), batching,
preprocessing and flags as `astromorph.predict_files`.
"""
import contextvars
import logging
from copy import deepcopy

import numpy as np

from ._flags import Flag
from ._progress import progress_bar
from ._stopping import check_stop
from ._readers import Stamp
from ._readers._fits import HeaderFacts, _levels_array, read_fits_bytes, warn_flux_units
from ._readers._stamp import common_pixel_scale
from .preprocessing._triplet import _SENTINEL
from ._warnings import warn
from .exceptions import AmbiguousInputWarning, InputError, InvalidArgumentError

__all__ = ["annotate_stamps"]

log = logging.getLogger(__name__)

#: The whole table's row of the first row, while `annotate_dask` scores a partition of a
#: table: the warnings that name rows name those of the whole table.
FIRST_ROW = contextvars.ContextVar("astromorph_first_row", default=0)

#: While `annotate_dask` scores a partition of a table: a list that `annotate_stamps` appends
#: ``(count, where, prefix)`` to, the rows whose ``negative`` value is masked, rather than
#: warning (`annotate_dask` says the whole table's count once, `masked_negative_message`).
MASKED_NEGATIVE = contextvars.ContextVar("astromorph_masked_negative", default=None)


def masked_negative_message(count, where, prefix):
    """The warning that ``count`` rows' ``negative`` value is masked (``where``: the column,
    or ``negative=``), their ``<prefix>_reason`` saying so."""
    return (f"{count} row(s) whose negative value is masked ({where}) scored as positive "
            f"candidates; their {prefix}_reason says so")

#: Rows stacked at a time from numeric array columns (the fast path).
_BLOCK_ROWS = 1024

#: Column names looked for when ``columns`` is not given, by model family; the first
#: complete set in the table is used.
_DEFAULT_COLUMNS = {
    "triplet": (("science", "reference", "difference"), ("sci", "ref", "diff"),
                ("cutoutScience", "cutoutTemplate", "cutoutDifference"),
                ("triplet",), ("stamps",), ("stamp",)),
    "optical": (("stamp",), ("stamps",), ("image",), ("cutout",), ("g", "r", "i")),
    "radio": (("stamp",), ("stamps",), ("image",), ("cutout",)),
}


def annotate_stamps(table, *, model, columns=None, pixel_scale=None, negative=None,
                    centre=None, crop_fraction=None, on_conflict="error", batch_size=256,
                    providers=None, threads=None, precision=None, progress=None, copy=True,
                    match_beam=True):
    """Add model columns to a copy of a table whose rows hold their own stamps.

    Parameters
    ----------
    table : astropy.table.Table or QTable
        One row per candidate or source; it is not modified.
    model : str, os.PathLike or Model
        A shipped model name (e.g. ``"real-bogus"``), a model path or a loaded `Model`.
    columns : str or sequence of str, optional
        Where the stamps are. One column holding a whole stamp per row: a 2-D image, a
        ``(B, H, W)`` cube (a triplet in the order science, reference, difference, or
        bands g, r, i) or an ``(H, W, 3)`` 8-bit colour picture (for the galaxy models, an
        8-bit grey ``(H, W)`` image is a grey picture, as a grey JPEG or PNG in
        `astromorph.predict_files`, not a flux image). Or one column per plane:
        science, reference and difference for ``real-bogus``; g, r and i for the optical
        models (three different columns). Cells may be numeric arrays (masked values count
        as NaN, missing pixels, filled and counted in `Flag.BLANK`, also in 8-bit colour
        pictures, which stay colour pictures, and in the radio data set's 8-bit grey images,
        which stay on its 0-255 scale, filled with the median rounded to an 8-bit level; a
        masked cell, or one whose values are all masked, has no stamp: the row is flagged
        `Flag.MISSING_BAND`) or FITS bytes, compressed (gzip, bzip2, xz, a zip archive of
        one file) or not (the ``stampData`` of ZTF alert cutouts, gzipped; a
        ``{"stampData": ...}`` dict also works), read as
        `astromorph.predict_files` reads a file of those bytes: the WCS gives the pixel
        scale; the restoring beam, pixel unit and saturation level (`Flag.SATURATED`) of
        the header count; a Stokes cube gives its Stokes I plane; in a single column, a
        cube (planes named by BANDn, FILTERn or PLANEn, else in the order above) or one
        image HDU per plane (EXTNAME SCI/REF/DIFF, G/R/I...) is one stamp, as in a file.
        With one column per plane, each cell holds one 2-D image. Default: the first
        complete set
        among ``science/reference/difference``, ``sci/ref/diff``,
        ``cutoutScience/cutoutTemplate/cutoutDifference``, ``triplet``, ``stamps``,
        ``stamp`` (and ``image``, ``cutout``, ``g/r/i`` for the other models).
    pixel_scale : float, (float, float), array_like, Quantity or str, optional
        Pixel scale of the stamps (arcsec/pixel, or an angle per pixel): one value, or for
        pixels that are not square the pair ``(scale_y, scale_x)`` (the step along the rows,
        FITS axis 2, then along the columns, axis 1) as a tuple or two values with a unit
        (in a table of two rows, two values other than a tuple are one per row); or one of
        either per row, ``(N,)`` or ``(N, 2)``, or the name of a column of them (NaN or
        masked: none for that row). It takes precedence over a scale read from FITS bytes.
        A square pair scores as its one value. A value for every row must be finite and
        positive; a row's value that is not flags the row `Flag.BAD_INPUT` (models that
        resample by it: ``real-bogus``, ``radio-morphology``).
        Stamps of another size than the model's grid are resampled to it; without any scale
        they are assumed to be on the model's pixel scale and flagged `Flag.NO_WCS`. The
        galaxy models (``morphology``, ``morphology-gz2``, ``embedding``) have no pixel
        scale: a stamp's field is taken as it is, scaled to its galaxy (``crop_fraction``),
        so a scale given for them changes nothing.
    negative : str or array of bool, optional
        Difference-imaging models: rows (a boolean column name or array) whose difference
        stamp holds the candidate as a *negative* source, e.g. Rubin's ``isNegative``; they
        are negated, as the model takes the candidate positive. ZTF stamps (alert packets,
        brokers) already store it positive for ``isdiffpos = 'f'``: leave them alone.
        A masked value (sign unknown) is read as False: the row is scored as a positive
        candidate, its ``<prefix>_reason`` says so (its flags are unchanged) and an
        `~astromorph.exceptions.AmbiguousInputWarning` counts such rows.
        A row whose difference is negative at the centre after this (its central 3 x 3
        pixels 3 robust sigma or more below its median) is scored as given and its
        ``<prefix>_reason`` says so.
    centre : str, (str, str) or array_like, optional
        Difference-imaging models: the candidate's 0-based pixel ``(x, y)`` in each row's
        stamps (x: the column, FITS axis 1; y: the row, axis 2), where it is not their
        central pixel ``n // 2``, as in cutouts cut at the CCD edge (a ZTF cutout of fewer
        than 63 pixels along an axis holds the candidate at ``xpos - 1`` where cut at the
        quadrant's first column, at 31 where cut at its last; Rubin cutouts: the pixel
        their WCS puts the diaSource at). The name of a column of ``(x, y)`` pairs, the
        names of an x and a y column, or an ``(N, 2)`` array. The model's field is then
        centred on that pixel, as `astromorph.predict_files` centres an alert packet's
        (the row's ``<prefix>_reason`` says so): `Flag.EDGE` where the field runs more than a
        pixel further over the stamps' edge than about their middle, `Flag.BAD_INPUT` for a
        pixel off the stamps; a row whose values are not finite (NaN, masked) is centred on
        ``n // 2``. Rows with a centre are read one at a time (not stacked). Stamps not on
        the model's grid are resampled by their pixel scale (ZTF's are on it: give
        ``pixel_scale=1.0``, else they are flagged `Flag.NO_WCS`).
    crop_fraction : float, optional
        Galaxy models: the central fraction of each stamp that the network sees, as for
        `astromorph.predict_files`. Default: the card's (0.35), for cutouts spanning the
        card's ``cutout_size_per_petro_r90`` x petroR90_r; ``1.0`` for stamps already cut
        to ``stamp_size_per_petro_r90`` x petroR90_r (the network's field). Recorded as
        ``meta["astromorph_crop_fraction"]``. Refused, as by `astromorph.predict_files`,
        for the models whose card fixes their field (``real-bogus``, ``radio-morphology``).
    on_conflict : {"error", "suffix", "replace"}, optional
        What to do when a new column name already exists (see `astromorph.annotate`).
    batch_size : int, optional
        As for `astromorph.predict_files`.
    providers : None, str or list of str, optional
        As for `astromorph.predict_files`.
    threads : int, optional
        As for `astromorph.predict_files`.
    precision : {None, "float32", "int8"}, optional
        As for `astromorph.predict_files`.
    progress : bool or None, optional
        As for `astromorph.predict_files`.
    copy : bool, optional
        True (default): the result holds a copy of every column of ``table``. False: the
        result's columns of ``table`` share their data with it (stamp columns are most of a
        table's memory: 100,000 ZTF triplets take 4.7 GB), so that changing values in one
        changes them in the other; ``table`` itself, its columns and its ``meta``, is
        not modified either way.
    match_beam : bool, optional
        ``radio-morphology``: convolve the stamps of FITS cells in flux units whose header's
        restoring beam (BMAJ, BMIN, BPA, or the AIPS HISTORY card) has a minor axis below
        0.9 times FIRST's 5.4 arcsec to the smallest beam that contains FIRST's before scoring
        (`astromorph.preprocessing.smooth_to_first_beam`; the row's reason says so), as
        `astromorph.predict_files` does for a file of those bytes (default True). Array
        cells carry no beam: they are scored as given.

    Returns
    -------
    Table or QTable
        A copy of ``table`` with the model's columns (e.g. ``rb_score``),
        ``<prefix>_flags`` (bits of `astromorph.Flag`), for radio models
        ``<prefix>_smoothed`` (bool: the FITS cell was smoothed to a beam that contains
        FIRST's, see ``match_beam``) and ``<prefix>_reason`` (why a row is flagged, or what
        was assumed of it; empty when clean). Rows that could not be
        scored (missing or corrupt stamp, wrong shape, template without a positive pixel)
        have masked outputs.

    Raises
    ------
    astromorph.exceptions.InputError
        ``table`` is not a table, a named column does not exist, or no stamp columns are
        found; new column names clash (``on_conflict="error"``).
    astromorph.exceptions.InvalidArgumentError
        A bad option value (named in the message).

    Warns
    -----
    astromorph.exceptions.UnusableInputWarning
        When some rows could not be scored.
    astromorph.exceptions.AmbiguousInputWarning
        When some rows' ``negative`` value is masked (read as False).
    astromorph.exceptions.AstromorphWarning
        Galaxy models: when the headers of some rows' FITS bytes give a pixel unit or zero
        point other than SDSS nanomaggies (said in those rows' ``<prefix>_reason`` too).
    """
    from ._adapters import result_columns
    from ._annotate import FLUX_NOTED, _add_columns, _provenance, add_provenance
    from ._predict import _conform, _Runner, summarise, unscored_flux_notes

    model, family, names, scales, flip, centres = check_options(
        table, model=model, columns=columns, pixel_scale=pixel_scale, negative=negative,
        centre=centre, on_conflict=on_conflict, batch_size=batch_size,
        crop_fraction=crop_fraction, providers=providers, threads=threads,
        precision=precision, copy=copy, match_beam=match_beam)
    n = len(table)
    prefix = model.card.get("column_prefix", model.name.replace("-", "_"))
    unknown = None if flip is None else _row_values(table, negative, n, "negative",
                                                    np.ma.getmaskarray)
    if unknown is not None and unknown.any():  # scored as positive, and said so
        where = f"in {negative!r}" if isinstance(negative, str) else "in negative="
        assumed = (f"negative unknown (masked {where}): the difference read as holding a "
                   "positive candidate")
        if MASKED_NEGATIVE.get() is not None:  # an annotate_dask partition: the table's
            MASKED_NEGATIVE.get().append((int(unknown.sum()), where, prefix))  # count, once
        else:
            warn(masked_negative_message(int(unknown.sum()), where, prefix),
                 AmbiguousInputWarning)
    else:
        unknown = assumed = None

    runner = _Runner(model, family, int(batch_size), crop_fraction,
                     match_beam=bool(match_beam))
    block = None if centres is not None and np.isfinite(centres).all(axis=1).any() \
        else _array_blocks(table, names, family, model.card, scales, flip, unknown, assumed)
    getters = [_cell_getter(table[c]) for c in names]
    units = []  # rows whose FITS header says another pixel unit than nanomaggies
    with progress_bar(n, desc=f"{model.name}", unit="row", enabled=progress,
                      min_total=4 * batch_size) as bar:
        step = max(int(batch_size), _BLOCK_ROWS)
        for start in range(0, n if block else 0, step):
            check_stop()  # an annotate_dask partition whose call has failed: no more
            stop = min(start + step, n)
            for part in block(start, stop):
                runner.add_block(**part)
            bar.update(stop - start)
        for i in range(0 if block else n):
            if i % _BLOCK_ROWS == 0:
                check_stop()
            stamp = _row_stamp(i, [get(i) for get in getters], names, family)
            if unknown is not None and unknown[i]:
                stamp.reason.append(assumed)
            if stamp.usable:
                if scales is not None and not np.isnan(scales[i]).all():  # NaN: no scale
                    # one float, or (scale_y, scale_x) for pixels that are not square
                    stamp.pixel_scale = float(scales[i]) if np.ndim(scales[i]) == 0 \
                        else tuple(scales[i].tolist())
                if flip is not None and flip[i] and stamp.kind in ("triplet", "bands") \
                        and len(stamp.data) == 3:
                    stamp.data = _negate_difference(stamp.data[None])[0]
                if centres is not None and np.isfinite(centres[i]).all():
                    _place(stamp, *centres[i])
                if stamp.usable:
                    _conform(stamp, family, model.card)
                if family == "optical" and stamp.usable and stamp.flux_note:
                    units.append((i, stamp))
            runner.add(stamp)
            bar.update(1)
        runner.finish()
    prediction, flags, valid = runner.collect()
    # as predict_files warns of such files: the rows scored (the others' reasons say why)
    first = FIRST_ROW.get()  # a partition's rows: named as the whole table's
    units = unscored_flux_notes(units, valid, runner.reasons,
                                name=lambda i: f"row {first + i}")
    if units and FLUX_NOTED.get() is not None:  # an annotate_dask partition: one warning
        FLUX_NOTED.get().extend((model.name, text) for text in units)  # for all of them
    elif units:
        warn_flux_units(model, units)

    new = result_columns(model, prediction, flags, valid, smoothed=runner.smoothed_rows())
    new[f"{prefix}_reason"] = runner.reason_column()
    out = table.copy(copy_data=copy)
    if not copy:  # the data are shared, the meta that provenance goes into is not
        out.meta = deepcopy(table.meta)
    provenance = _provenance(model, columns=_add_columns(out, new, on_conflict).values(),
                             crop_fraction=crop_fraction)
    provenance["astromorph_stamp_columns"] = ",".join(names)
    add_provenance(out.meta, provenance)
    summarise(new[f"{prefix}_reason"], flags, valid, what="row", where=f"'{prefix}_reason'")
    return out


def check_options(table, *, model, columns=None, pixel_scale=None, negative=None,
                  centre=None, on_conflict="error", batch_size=256, crop_fraction=None,
                  providers=None, threads=None, precision=None, copy=True, match_beam=True):
    """The checks `annotate_stamps` makes before it reads any stamp (`annotate_dask` makes
    them before it sends any task), with its options; return the loaded model, its family,
    the stamp columns, and the rows' pixel scales, ``negative`` values and ``centre``
    pixels ``(y, x)`` (each or None)."""
    from ._adapters import model_family, result_names
    from ._annotate import check_clashes, check_on_conflict, check_table
    from ._model import as_model
    from ._predict import check_batch_size, check_crop_fraction
    from .preprocessing._checks import check_bool

    check_table(table, caller="annotate_stamps")
    check_bool(match_beam, "match_beam")
    check_on_conflict(on_conflict)
    check_bool(copy, "copy")
    check_batch_size(batch_size)
    check_crop_fraction(crop_fraction)
    model = as_model(model, providers=providers, threads=threads, precision=precision)
    check_crop_fraction(crop_fraction, model.card)
    prefix = model.card.get("column_prefix", model.name.replace("-", "_"))
    check_clashes(table, result_names(model) + [f"{prefix}_reason"], on_conflict)  # before work
    family = model_family(model.card)
    names = _stamp_columns(table, columns, family)
    n = len(table)
    scales = _pixel_scale_rows(table, pixel_scale, n)
    flip = _row_values(table, negative, n, "negative", _bools)
    if flip is not None and family != "triplet":
        raise InvalidArgumentError(f"negative= (--negative-col) applies to difference-imaging "
                                   f"models; {model.name!r} is {_a(family)} model")
    if centre is not None and family != "triplet":
        raise InvalidArgumentError(f"centre= (--centre-col) applies to difference-imaging "
                                   f"models; {model.name!r} is {_a(family)} model")
    return model, family, names, scales, flip, _centre_rows(table, centre, n)


# ----------------------------------------------------------------------------- columns
def _a(word):
    """``word`` with its indefinite article: 'an optical', 'a radio'."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _stamp_columns(table, columns, family):
    """Names of the stamp columns: given (checked) or the first default set present."""
    if columns is None:
        for names in _DEFAULT_COLUMNS.get(family, ()):
            if all(c in table.colnames for c in names):
                return list(names)
        tried = " or ".join("/".join(c) for c in _DEFAULT_COLUMNS.get(family, ()))
        raise InputError(f"no stamp columns found (looked for {tried}); name them with "
                         f"columns= (--stamp-col), or cut stamps from images with annotate() "
                         f"(--image); the table has {table.colnames}")
    try:
        names = [columns] if isinstance(columns, str) else list(columns)
    except TypeError:  # e.g. a number: not iterable
        names = []
    if not names or not all(isinstance(c, str) for c in names):
        raise InvalidArgumentError(f"columns must be a column name or a sequence of them, got "
                                   f"{columns!r}")
    missing = [c for c in names if c not in table.colnames]
    if missing:
        raise InputError(f"stamp column(s) {missing} not in the table (columns: "
                         f"{table.colnames})")
    if len(set(names)) < len(names):  # one plane as g, r and i, or as a whole triplet
        raise InvalidArgumentError(f"columns names a column more than once: {names}; a "
                                   "single band is given as one column (columns='name')")
    need = {"triplet": (1, 3), "optical": (1, 3), "radio": (1,)}.get(family, (1,))
    if len(names) not in need:
        raise InvalidArgumentError(f"a {family} model takes its stamps from "
                                   f"{' or '.join(map(str, need))} column(s), got {names}")
    return names


def _arcsec(values):
    """Arcsec per pixel of numbers or angles (per pixel); masked values NaN (no scale)."""
    import astropy.units as u

    mask = getattr(values, "mask", None)  # MaskedColumn, numpy or astropy masked values
    values = getattr(values, "unmasked", values)  # astropy's Masked Quantity
    if isinstance(values, u.Quantity):
        if values.unit.physical_type == "angle":
            out = values.to_value(u.arcsec)
        elif (values.unit * u.pixel).physical_type == "angle":
            out = (values * u.pixel).to_value(u.arcsec)  # angle / pixel
        else:
            raise ValueError(f"unit {values.unit.to_string()!r} is neither an angle nor an "
                             "angle per pixel")
    else:
        out = np.asarray(np.ma.getdata(values), dtype=float)
    if mask is not None and np.any(mask):
        out = np.where(mask, np.nan, out)
    return out


def one_pixel_pair(value, n):
    """Whether ``pixel_scale=value`` for a table of ``n`` rows is one pair ``(scale_y,
    scale_x)`` for every row: a tuple of two values, or two values of any kind when the
    table has not two rows (in a table of two rows, two values other than a tuple are one
    per row, as they were before pairs)."""
    return not isinstance(value, str) and np.shape(_quantities(value)) == (2,) \
        and (n != 2 or isinstance(value, tuple))


def _quantities(value):
    """A tuple or list holding Quantities (``(0.75 * u.arcsec, 0.5 * u.arcsec)``) as one
    Quantity; any other value as it is."""
    import astropy.units as u

    if isinstance(value, (tuple, list)) and any(isinstance(v, u.Quantity) for v in value):
        try:
            return u.Quantity(value)
        except (TypeError, ValueError, u.UnitsError) as exc:
            raise InvalidArgumentError(f"pixel_scale={value!r} cannot be used: {exc}") from None
    return value


def _shown(value):
    """``value`` for a message: its repr where short, else its type and shape."""
    text = repr(value)
    return text if len(text) <= 80 else f"{type(value).__name__} of shape {np.shape(value)}"


def _pixel_scale_rows(table, value, n):
    """Pixel scales (arcsec/pixel) of the ``n`` rows from ``pixel_scale=value``: None, or
    ``(n,)`` (one scale per row, for both axes) or ``(n, 2)`` (``(scale_y, scale_x)`` per
    row) floats, NaN where a row has none (NaN or masked). ``value``: one number or angle
    (per pixel), one pair (`one_pixel_pair`), one of either per row, or the name of a column
    of one of either per row. A value given for all rows must be finite and positive; a
    row's values are checked when the row is scored (its row flagged, `Flag.BAD_INPUT`)."""
    if value is None:
        return None
    what = "pixel_scale"
    given = value
    if isinstance(value, str):
        if value not in table.colnames:
            raise InputError(f"pixel_scale column {value!r} not in the table")
        what = f"pixel_scale column {value!r}"
        value = table[value]
        if getattr(value, "unit", None) is not None and not hasattr(value, "to_value"):
            value = value.quantity
    pair = one_pixel_pair(given, n)
    try:
        out = _arcsec(_quantities(value))
    except InvalidArgumentError:
        raise
    except Exception as exc:  # noqa: BLE001 - unit or dtype errors
        shown = what if isinstance(given, str) else f"pixel_scale={_shown(given)}"
        raise InvalidArgumentError(f"{shown} cannot be used: {exc}") from None
    if np.ndim(out) == 0 or pair:  # one value or one pair for every row
        if not (np.all(np.isfinite(out)) and np.all(out > 0)):
            raise InvalidArgumentError(f"pixel_scale must be positive, got {_shown(given)}")
        return np.broadcast_to(out, (n, *np.shape(out)))
    out = np.asarray(out, dtype=float)
    if out.shape not in ((n,), (n, 2)):
        raise InvalidArgumentError(
            f"{what} has {out.shape} values for a table of {n} rows: give one value, a pair "
            f"(scale_y, scale_x), or one of either per row (shape ({n},) or ({n}, 2))")
    return out


def _centre_rows(table, value, n):
    """The candidates' 0-based pixels ``(y, x)`` of the ``n`` rows from ``centre=value``
    (`annotate_stamps`): None, or ``(n, 2)`` floats, NaN where a row has none (masked)."""
    if value is None:
        return None
    names = [value] if isinstance(value, str) else list(value) if isinstance(
        value, (tuple, list)) and len(value) == 2 and all(isinstance(v, str) for v in value) \
        else None
    if names is not None:
        missing = [c for c in names if c not in table.colnames]
        if missing:
            raise InputError(f"centre column(s) {missing} not in the table (columns: "
                             f"{table.colnames})")
        cols = [table[c] for c in names]
        value = cols[0] if len(cols) == 1 else np.ma.stack(
            [np.ma.asarray(c, dtype=float) for c in cols], axis=-1)
    try:
        out = np.ma.asarray(getattr(value, "value", value), dtype=float)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"centre={_shown(value)} cannot be used: {exc}") from None
    if out.shape != (n, 2):
        raise InvalidArgumentError(f"centre has {out.shape} values for a table of {n} rows: "
                                   f"give one (x, y) pixel per row, shape ({n}, 2)")
    return np.ma.filled(out, np.nan)[:, ::-1]


def _place(stamp, y, x):
    """Centre the model's field of ``stamp`` on its 0-based pixel ``(y, x)`` (`centre=`), or
    flag `Flag.BAD_INPUT` a pixel off the stamp."""
    ny, nx = stamp.data.shape[-2:]
    # (the API's and the CLI's names, as the errors give them: a reason is written once)
    if not (-0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5):
        stamp.flag(Flag.BAD_INPUT, f"the candidate's pixel given by centre= (--centre-col) "
                   f"(x, y = {x:.2f}, {y:.2f}; 0-based) is off the {nx}x{ny} stamp")
        return
    stamp.centre = (float(y), float(x))
    stamp.reason.append(f"candidate at pixel (x, y = {x:.2f}, {y:.2f}; 0-based), given by "
                        "centre= (--centre-col): the model's field centred there")


def _bools(values):
    values = np.asarray(getattr(values, "filled", lambda v: values)(False))
    if values.dtype.kind != "b":
        raise InvalidArgumentError(f"negative must be boolean (True: the difference holds a "
                                   f"negative candidate), got dtype {values.dtype}")
    return values


def _row_values(table, value, n, what, convert):
    """Per-row values of an option: None, a scalar, a column name or an array."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in table.colnames:
            raise InputError(f"{what} column {value!r} not in the table")
        value = table[value]
        if getattr(value, "unit", None) is not None and not hasattr(value, "to_value"):
            value = value.quantity
    try:
        out = convert(value)
    except Exception as exc:  # noqa: BLE001 - unit or dtype errors
        if isinstance(exc, InvalidArgumentError):
            raise
        raise InvalidArgumentError(f"{what}={value!r} cannot be used: {exc}") from None
    out = np.broadcast_to(out, (n,)) if np.ndim(out) == 0 else np.asarray(out)
    if out.shape != (n,):
        raise InvalidArgumentError(f"{what} has {out.shape} values for a table of {n} rows")
    return out


# ----------------------------------------------------------------------------- cells
def _cell_getter(col):
    """``get(i)``: the raw cell ``i`` of a stamp column.

    Fixed-width bytes columns (``Table(rows=...)`` makes them from bytes values) are read
    at their full width: astropy would hand back ``str`` and numpy strips trailing NUL
    bytes, which belong to gzip and FITS data; trailing padding is harmless to both.
    A masked cell of an object column is an empty one (astropy would hand back the
    cell's array fully masked, read as all NaN).
    """
    mask = np.ma.getmaskarray(col) if hasattr(col, "mask") else None
    if col.dtype.kind == "O" and mask is not None and mask.any():
        return lambda i: None if mask[i] else col[i]
    if col.dtype.kind != "S":
        return col.__getitem__
    data = np.asarray(col)

    def get(i):
        return None if mask is not None and mask[i] else data[i:i + 1].tobytes()
    return get


def _cell(value, triplet_hint=False, grey_picture=False):
    """``(array, pixel_scale, colour, read)`` of one table cell (``colour``: an 8-bit
    ``(H, W, 3)`` picture, whose masked pixels are NaN display values; ``read``: for FITS
    bytes, the list of `Stamp` that `read_fits_bytes` makes of them, as of a file of those
    bytes, ``array`` and ``pixel_scale`` then None, else None); ``(None, None, False,
    None)`` when empty. ``triplet_hint``: for a difference-imaging model, as for files.
    ``grey_picture``: an 8-bit grey image is the colour picture of its grey
    (`_grey_picture`), as for the galaxy models."""
    empty = None, None, False, None
    if value is None or value is np.ma.masked:
        return empty
    if isinstance(value, str):
        raise ValueError("holds text, not an image or FITS bytes")
    value = _payload(value)
    if value is None:
        return empty
    if isinstance(value, (bytes, bytearray, np.bytes_, memoryview)):
        blob = bytes(value)
        if not blob:
            return empty
        return None, None, False, read_fits_bytes(blob, source="", triplet_hint=triplet_hint)
    if isinstance(value, np.ma.MaskedArray) and value.size and np.ma.getmaskarray(value).all():
        return empty  # a fully masked cell (of a multidimensional MaskedColumn)
    if grey_picture and _is_grey(np.shape(value), getattr(value, "dtype", None)):
        value = _grey_picture(value)
    colour = _is_colour(np.shape(value), getattr(value, "dtype", None))
    data = _unmasked(value, colour=colour)
    if data.dtype.kind == "b":
        raise ValueError("holds booleans, not pixel values")
    if data.dtype.kind not in "iuf":
        raise ValueError(f"cell of dtype {data.dtype} is neither an image nor FITS bytes")
    return data, None, colour or _is_colour(data.shape, data.dtype), None


def _payload(value):
    """The stamp of a cell: the ``stampData`` of a ``{"stampData": ...}`` dict (an alert
    cutout), else the cell itself."""
    return value.get("stampData") if isinstance(value, dict) else value


def _is_colour(shape, dtype):
    """Whether cells of ``shape`` and ``dtype`` are ``(H, W, 3)`` 8-bit colour pictures."""
    return len(shape) == 3 and shape[-1] == 3 and dtype == np.uint8


def _is_grey(shape, dtype):
    """Whether cells of ``shape`` and ``dtype`` are 8-bit grey images, ``(H, W)`` or
    ``(1, H, W)``: the radio data set's images, on its 0-255 scale."""
    return (len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)) and dtype == np.uint8


def _grey_picture(value, rows=False):
    """An 8-bit grey image, ``(H, W)`` or ``(1, H, W)`` (``rows``: a stack of them, ``(N,
    H, W)`` or ``(N, 1, H, W)``), as the ``(H, W, 3)`` (``(N, H, W, 3)``) colour picture of
    its grey, masks kept: the galaxy models read it as a display image, as
    `~astromorph.preprocessing.preprocess_single_band` reads ``uint8`` and
    `astromorph.predict_files` a grey JPEG or PNG, not as fluxes in nanomaggies."""
    masked = isinstance(value, np.ma.MaskedArray)
    # plain arrays: an astropy column of one row indexes [..., None] as a cell
    value = np.ma.array(value, subok=False, copy=False) if masked else np.asarray(value)
    value = value.reshape(value.shape[:1 if rows else 0] + value.shape[-2:])
    return (np.ma.repeat if masked else np.repeat)(value[..., None], 3, axis=-1)


def _fill_grey(data):
    """8-bit grey radio images ``(N, 1, H, W)`` whose masked pixels made them floats (NaN
    where masked) back on the data set's 8-bit scale: ``(images, flags, words)``, the
    images uint8 again, their missing pixels filled with the image's median rounded to an
    8-bit level, flagged as `astromorph._adapters._clean` flags them (`Flag.BLANK` past
    5%), with the words for those flags."""
    from ._adapters import _clean
    from ._predict import _explain

    filled, flags = _clean(data, np.zeros(len(data), np.int32))
    flags &= ~np.int32(Flag.CONSTANT)  # the adapter sets it on the filled image, with words
    words = [_explain(Stamp("", None, kind="bands", data=d), int(f)) if f else []
             for d, f in zip(data, flags)]
    return np.round(filled).astype(np.uint8), flags, words


def _unmasked(value, colour=False):
    """A numeric array with its masked values NaN (integer data with masked values become
    float32 to hold them; 8-bit ``colour`` pictures display values in [0, 1], float32, as
    `~astromorph.preprocessing.preprocess_colour_cutout` reads them); other values as
    arrays."""
    from .preprocessing._optical import _unmasked_display

    if not isinstance(value, np.ma.MaskedArray):
        return np.asarray(value)
    if value.dtype.kind in "iu" and np.ma.getmaskarray(value).any():
        if colour:
            return _unmasked_display(value)
        value = value.astype(np.float32)
    return value.filled(np.nan) if value.dtype.kind == "f" else np.asarray(value)


def _negate_difference(data, rows=None):
    """A copy of stamps ``data`` (N, 3, H, W) with the difference (plane 3) negated, in all
    rows or those where ``rows`` is True; in float32 for integer data, where negation
    would wrap around (-5 is 65531 in uint16; -(-32768) is -32768 in int16)."""
    if data.dtype.kind in "iu":
        data = data.astype(np.float32)
    diff = data[:, 2:]
    diff = -diff if rows is None else np.where(rows[:, None, None, None], -diff, diff)
    return np.concatenate([data[:, :2], diff], axis=1)


def _row_stamp(i, cells, names, family):
    """The `Stamp` of row ``i`` from its cells (one per stamp column). FITS bytes are read
    as a file of those bytes is (`read_fits_bytes`): one column of them gives the file's
    stamp (a cube's planes as bands or a triplet, one image HDU per band or triplet
    member), several give a 2-D plane each, with what their headers say of the beam, pixel
    unit and saturation level of each plane, as `~astromorph._readers._fits.read_fits`
    gives them to a file of one HDU per plane."""
    stamp = Stamp(str(i), None, index=i)
    planes, scales, facts, colour = [], [], [], False
    steps = []  # each plane's quantisation step (`Stamp.quantum`: lossy FITS bytes), else 0
    for name, value in zip(names, cells):
        try:
            data, s, colour, read = _cell(value, triplet_hint=family == "triplet",
                                          grey_picture=family == "optical" and len(names) == 1)
        except ValueError as exc:
            return stamp.flag(Flag.BAD_INPUT, f"{name}: {exc}")
        if read is not None:  # FITS bytes
            if len(read) > 1:
                return stamp.flag(Flag.BAD_INPUT, f"{name}: a stack of {len(read)} stamps (a "
                                  "4-D image), not one stamp")
            read = read[0]
            if read.kind is None:  # unusable (`Stamp.flag` clears the kind)
                stamp.reason.extend(f"{name}: {r}" for r in read.reason)
                return stamp.flag(read.flags)
            if len(names) == 1:  # the file's stamp, as the row's
                read.source, read.index, read.header_hdu = stamp.source, i, None
                return read
            if read.kind != "bands" or len(read.data) != 1:
                return stamp.flag(Flag.BAD_INPUT,
                                  f"{name}: shape {read.data.shape}, not a 2-D image")
            data, s = read.data[0], read.pixel_scale
            said = HeaderFacts(read.beam, read.flux_note,
                               None if read.saturation is None else float(read.saturation[0]))
            step = 0.0 if read.quantum is None else float(read.quantum[0])
        elif data is None:
            planes.append(None)
            continue
        else:
            said, step = None, 0.0
        if len(names) > 1 and np.ndim(data) != 2:
            return stamp.flag(Flag.BAD_INPUT, f"{name}: shape {np.shape(data)}, not a 2-D image")
        planes.append(data)
        scales.append(s)
        facts.append(said)
        steps.append(step)
    missing = [nm for nm, p in zip(names, planes) if p is None]
    if missing:
        return stamp.flag(Flag.MISSING_BAND, f"no stamp in {', '.join(missing)}")
    scale, problem = common_pixel_scale(scales)
    if len(planes) > 1:
        shapes = {p.shape for p in planes}
        if len(shapes) > 1:
            return stamp.flag(Flag.BAD_INPUT, "stamps differ in shape (" + ", ".join(
                f"{nm} {'x'.join(map(str, p.shape[::-1]))}" for nm, p in zip(names, planes)) + ")")
        if problem:  # one size, different fields: not aligned pixel for pixel
            return stamp.flag(Flag.BAD_INPUT, f"stamps {problem}")
        data = np.stack(planes).astype(np.float32, copy=False)
        stamp.kind = "triplet" if family == "triplet" else "bands"
        stamp.bands = None if family == "triplet" else tuple(names) if set(names) == set("gri") \
            else None
        stamp.quantum = np.array(steps) if any(steps) else None
    else:
        data = planes[0]
        if colour:
            stamp.kind = "colour"  # masked pixels: display values in [0, 1], NaN
        elif data.ndim in (2, 3):
            data = data[None] if data.ndim == 2 else data
            stamp.kind = "bands"
            cell = _payload(cells[0])  # the array a float stamp was made from
            if family == "radio" and data.dtype.kind == "f" \
                    and _is_grey(np.shape(cell), getattr(cell, "dtype", None)):
                filled, flags, words = _fill_grey(data[None])  # masked pixels: data-set scale
                data, stamp.flags = filled[0], stamp.flags | int(flags[0])
                stamp.reason.extend(words[0])
        else:
            return stamp.flag(Flag.BAD_INPUT, f"{names[0]}: shape {data.shape}, not an image, "
                              "cube or colour picture")
    stamp.data, stamp.pixel_scale = data, scale
    facts = [f or HeaderFacts() for f in facts]  # None: an array cell, which says nothing
    if any(f != HeaderFacts() for f in facts):  # FITS bytes whose headers say something
        # the coarsest of the planes' beams, as annotate takes the coarsest of the bands'
        stamp.beam = max((f.beam for f in facts if f.beam is not None), default=None)
        notes = [(nm, f.flux_note) for nm, f in zip(names, facts) if f.flux_note]
        if notes:  # the first, as for a file of one HDU per band
            stamp.flux_note = f"{notes[0][1]} ({notes[0][0]})"
        if stamp.kind != "colour" and len(data) == len(facts):  # a level for each plane
            stamp.saturation = _levels_array([f.saturation for f in facts])
    return stamp


# ----------------------------------------------------------------------------- array columns
def _array_blocks(table, names, family, card, scales, flip, unknown=None, assumed=None):
    """``block(start, stop)``: the `_Runner.add_block` arguments of rows ``start:stop`` (a
    list, one per run of rows sharing a dtype), or None when the cells need the per-row
    path.

    Numeric array columns (one stamp per column and row: a fixed-shape ``Column``,
    ``MaskedColumn`` or ``Quantity``) give the stamps of many rows as one stack: the
    columns stacked, masked values NaN (a fully masked cell: no stamp, `Flag.MISSING_BAND`
    as `_row_stamp` gives it), ``negative`` rows negated (``unknown``: rows whose
    ``negative`` is masked, which get the words ``assumed``), all with array
    operations. The checks the per-row path makes of each stamp (`_row_stamp`,
    `astromorph._predict._conform`) depend here on the column shapes only, so they are
    made once, on a probe stamp, except for the template check, made on the stack. Object
    columns (FITS bytes, dicts, ragged arrays), text, and column shapes that the per-row
    path flags go that way.
    """
    import astropy.units as u
    from astropy.table import Column

    from ._predict import _conform, template_problem

    cols = [table[c] for c in names]
    if not len(table) or not all(
            (isinstance(c, Column) or type(c) is u.Quantity) and c.dtype.kind in "iuf"
            for c in cols):
        return None
    cell = cols[0].shape[1:]
    picture = family == "optical" and len(cols) == 1 and _is_grey(cell, cols[0].dtype)
    if len(cols) > 1:
        if len(cell) != 2 or any(c.shape[1:] != cell for c in cols):
            return None
        kind = "triplet" if family == "triplet" else "bands"
        bands = None if family == "triplet" else tuple(names) if set(names) == set("gri") \
            else None
        dtype = np.float32
        shape = (len(cols), *cell)
    elif _is_colour(cell, cols[0].dtype):
        kind, bands, dtype, shape = "colour", None, cols[0].dtype, cell
    elif picture:  # 8-bit grey images, for the galaxy models: their grey pictures
        kind, bands, dtype, shape = "colour", None, cols[0].dtype, (*cell[-2:], 3)
    elif len(cell) in (2, 3):
        kind, bands, dtype = "bands", None, cols[0].dtype
        shape = cell if len(cell) == 3 else (1, *cell)
    else:
        return None
    # the checks of the per-row path, on a stamp of that shape without and with a pixel scale
    probes = []
    for scale in (None, 1.0):
        data = np.ones(shape, dtype)
        probe = _conform(Stamp("probe", None, kind=kind, data=data, bands=bands,
                               pixel_scale=scale), family, card)
        if not probe.usable or probe.data is not data:
            return None
        probes.append(probe)
    negate = flip is not None and kind in ("triplet", "bands") and shape[0] == 3
    grey = family == "radio" and len(cols) == 1 and kind == "bands" and _is_grey(cell, dtype)

    def block(start, stop):
        """Rows ``start:stop`` as runs of rows (one `_Runner.add_block` each): in an integer
        column, the rows with masked pixels (which become floats, NaN where masked) apart
        from the others, which keep the dtype, groups and results of an unmasked column."""
        if len(cols) > 1 or cols[0].dtype.kind not in "iu" \
                or not isinstance(cols[0], np.ma.MaskedArray):
            return [run(start, stop)]
        masked = np.ma.getmaskarray(cols[0][start:stop]).reshape(stop - start, -1).any(axis=1)
        cuts = [0, *(np.flatnonzero(np.diff(masked)) + 1), stop - start]
        return [run(start + a, start + b) for a, b in zip(cuts[:-1], cuts[1:])]

    def run(start, stop):
        parts, empty = [], []
        for c in cols:
            part = c[start:stop]
            if picture:
                part = _grey_picture(part, rows=True)
            if isinstance(part, np.ma.MaskedArray):  # a fully masked cell: no stamp
                mask = np.ma.getmaskarray(part).reshape(len(part), -1)
                empty.append(mask.all(axis=1))
            else:
                empty.append(np.zeros(len(part), dtype=bool))
            parts.append(_unmasked(part, colour=kind == "colour"))  # masked values: NaN
        if len(parts) > 1:
            data = np.stack(parts, axis=1).astype(np.float32, copy=False)
        else:
            data = parts[0] if parts[0].ndim == len(shape) + 1 else parts[0][:, None]
        if negate and flip[start:stop].any():  # a new array: the table is not modified
            data = _negate_difference(data, flip[start:stop])
        if scales is None:
            known = np.zeros(stop - start, dtype=bool)
            scale = np.full(stop - start, np.nan)
        else:  # (rows,) or (rows, 2): (scale_y, scale_x)
            scale = np.array(scales[start:stop], dtype=float)
            # NaN (both axes): no scale; inf, or one axis NaN: flagged when scored
            known = ~np.isnan(scale).reshape(stop - start, -1).all(axis=1)
        flags = np.where(known, probes[1].flags, probes[0].flags).astype(np.int32)
        reasons = [list(probes[int(k)].reason) for k in known]
        if grey and data.dtype.kind == "f":  # masked pixels: on the data-set scale (uint8)
            data, filled, words = _fill_grey(data)
            flags |= filled
            for j in np.flatnonzero(filled):  # first, as on the per-row path
                reasons[j][:0] = words[j]
        missing = np.any(empty, axis=0)
        for j in np.flatnonzero(missing):  # as `_row_stamp` says it
            flags[j] = int(Flag.MISSING_BAND)
            reasons[j] = ["no stamp in " + ", ".join(nm for nm, e in zip(names, empty) if e[j])]
        if unknown is not None:  # rows whose negative value is masked: read as positive
            for j in np.flatnonzero(unknown[start:stop]):  # where the per-row path says it:
                # after a missing stamp's words, before those of the checks (NO_WCS...)
                reasons[j].insert(len(reasons[j]) if missing[j] else 0, assumed)
        if probes[0].kind == "triplet":
            template = data[:, 1]
            with np.errstate(invalid="ignore"):  # NaN, inf and masking sentinels: no values
                valid = np.abs(template) < _SENTINEL
            axes = (1, 2)
            bad = valid.any(axis=axes) & (np.where(valid, template, -np.inf).max(axis=axes) <= 0)
            bad &= ~missing
            for j in np.flatnonzero(bad):  # rare: the words, as the per-row check gives them
                problem = template_problem(template[j])
                if problem:
                    flags[j] |= int(Flag.BAD_INPUT)
                    reasons[j].append(problem)
        return dict(index=np.arange(start, stop), kind=probes[0].kind, data=data,
                    bands=probes[0].bands, flags=flags, reasons=reasons, scales=scale)
    return block
