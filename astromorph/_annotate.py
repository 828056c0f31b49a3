"""`annotate`: catalogue + images with WCS -> a copy of the table with model columns."""
import contextvars
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from astropy import units as u
from astropy.table import QTable, Table

from ._adapters import (RawStamps, fixed_field, model_family, prepare, result_columns,
                        result_names, BLANK_THRESHOLD)
from ._cutouts import STAMP_CHUNK, cut_stamps
from ._angles import parse_angles, under_full_turn
from ._flags import Flag
from ._images import closing_files, parse_sky_images
from ._readers._fits import warn_flux_units
from ._model import as_model
from ._predict import single_band, summarise_counts, unscored_flux_notes
from ._progress import progress_bar
from ._stopping import check_stop
from ._version import __version__
from ._warnings import warn
from .exceptions import (AmbiguousInputWarning, InputError, InvalidArgumentError,
                         InvalidArgumentTypeError, UnusableInputWarning)

__all__ = ["annotate", "ANNOTATE_CHUNK"]

log = logging.getLogger(__name__)

#: Sources split into parts together (`_parts`: those of one stamp side in their order, at
#: most `_part_rows` at a time); threads prepare parts at most one each ahead of the model.
ANNOTATE_CHUNK = 4096
#: Stamp pixels of one part of a chunk (a thread's unit of work): at most `STAMP_CHUNK`
#: sources, fewer for big stamps. Cutting and preprocessing hold several float32 and
#: float64 copies of a part's stamps at once (about 8 times their size in all), so
#: 512 stamps of 300 x 300 (radio-morphology) would take some 0.8 GB per thread; 2**23
#: pixels (512 stamps of 128 x 128) cap that at about 0.3 GB.
PART_PIXELS = 2 ** 23

_RA_NAMES = ("ra", "RA", "RAJ2000", "_RAJ2000", "RA_ICRS", "RAdeg", "ra_deg", "RA_deg",
             "ALPHA_J2000", "alpha", "raMean")
_DEC_NAMES = ("dec", "DEC", "Dec", "DEJ2000", "_DEJ2000", "DE_ICRS", "DEdeg", "dec_deg",
              "DEC_deg", "DELTA_J2000", "delta", "decMean")
#: RA and Dec names of one naming family (lower case), preferred together
_PAIRS = (("ra", "dec"), ("raj2000", "dej2000"), ("_raj2000", "_dej2000"),
          ("ra_icrs", "de_icrs"), ("radeg", "dedeg"), ("ra_deg", "dec_deg"),
          ("alpha_j2000", "delta_j2000"), ("alpha", "delta"), ("ramean", "decmean"))
#: column names of Galactic coordinates (lower case), never read as RA/Dec
_GALACTIC_NAMES = {"glon", "glat", "l", "b", "lii", "bii", "gal_l", "gal_b", "gal_long",
                   "gal_lat"}
#: two RA (or Dec) columns found by name agree when no row differs by more on the sky
#: (arcsec): VizieR's sexagesimal RAJ2000 to 0.01 s beside its computed _RAJ2000 agree
_SAME_POSITION_ARCSEC = 0.1
#: radio-morphology: the finest pixel scale (arcsec) at which the stamps of an image whose
#: beam is finer than FIRST's are cut on the image's own pixels (`_native_grids`: FIRST's
#: 1.8" / 4; a stamp then spans some 1270 x 1270 pixels, 40 MB of float32 working copies).
FINEST_STAMP_SCALE = 0.45
#: Stamp pixels that must come from at least this many image pixels per stamp pixel, along
#: both image axes (below, the stamp is upsampled by more than 2x: flagged EXTRAPOLATED).
MIN_ZOOM = 0.5


#: numpy kinds of columns that hold no number of an angle: booleans (True would read as 1),
#: complex numbers, dates and durations, raw bytes
_NOT_ANGLE_KINDS = {"b": "booleans", "c": "complex numbers", "M": "dates", "m": "durations",
                    "V": "raw (void) values"}


def _check_angle_kind(col, what, expected):
    """Refuse a column whose dtype cannot hold angles (``what``: "position column 'ra'";
    ``expected``: what it should hold instead)."""
    dtype = np.asarray(getattr(col, "value", col)).dtype
    if dtype.kind in _NOT_ANGLE_KINDS:
        raise InputError(f"{what} holds {_NOT_ANGLE_KINDS[dtype.kind]} ({dtype}), not angles: "
                         f"give {expected}")


#: unit strings of sexagesimal text columns that astropy does not parse (VizieR's)
_SEXAGESIMAL_UNITS = {"h:m:s": u.hourangle, "hms": u.hourangle, "d:m:s": u.deg, "dms": u.deg}


def _column_unit(col, what, default):
    """The unit of a position or size column (``what``: "position column 'ra'"), ``default``
    where it has none.

    Unit strings astropy does not recognise are read where they name an angle: VizieR's
    sexagesimal 'h:m:s' and 'd:m:s', and FITS spellings such as 'DEGREES' or 'ARCSEC' (in
    lower case, without a plural s); any other is an `InputError` naming it.
    """
    unit = getattr(col, "unit", None)
    if unit is None:
        return default
    if not isinstance(unit, u.UnrecognizedUnit):
        return unit
    name = unit.name.strip().strip("\"'").lower()
    if name in _SEXAGESIMAL_UNITS:
        return _SEXAGESIMAL_UNITS[name]
    for spelling in (name, name[:-1] if name.endswith("s") else ""):
        parsed = u.Unit(spelling, parse_strict="silent") if spelling else None
        if parsed is not None and not isinstance(parsed, u.UnrecognizedUnit) \
                and parsed.physical_type == "angle":
            return parsed
    raise InputError(f"{what} has the unit {unit.name!r}, which astropy does not recognise "
                     "as an angle: give the column an angle unit (e.g. deg, arcsec)")


def _float_values(col):
    """A column's values as floats; masked entries and text that is not a number -> NaN."""
    data = np.ma.getdata(getattr(col, "value", col))
    try:
        values = np.array(data, dtype=float)
    except (TypeError, ValueError):  # text, e.g. from a CSV with sexagesimal angles or a stray word
        text = np.asarray(data)
        if text.dtype.kind == "U":  # each distinct string once, and none with a colon
            values = np.full(text.shape, np.nan)  # (sexagesimal: no number)
            maybe = np.char.find(text, ":") < 0
            distinct, index = np.unique(text[maybe], return_inverse=True)
            values[maybe] = np.array([_to_float(v) for v in distinct], float)[index.ravel()]
        else:
            values = np.array([_to_float(v) for v in data], dtype=float)
    if hasattr(col, "mask"):
        values[np.ma.getmaskarray(col)] = np.nan
    return values


def _to_float(value):
    """``float(value)``, or NaN for a value that is no number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def _sexagesimal(col, values, unit):
    """Fill ``values`` (degrees) where a text column holds angles such as '10:00:00.0'
    (``unit``: hours for RA, degrees for Dec; read as astropy's `Angle` reads them, see
    `parse_angles`); entries that do not parse stay NaN."""
    if np.asarray(col).dtype.kind not in "USO":
        return values
    text = np.char.strip(np.asarray(np.ma.getdata(col)).astype(str))
    todo = np.flatnonzero(np.isnan(values) & ~np.ma.getmaskarray(col) & (text != ""))
    if len(todo):
        values[todo] = parse_angles(text[todo], unit)
        if unit == u.hourangle:  # 24h or more is no right ascension (degrees written as hours?)
            parsed = values[todo]  # (astropy's 24 h is 359.99999999999994 degrees)
            limit = (24 * u.hourangle).to_value(u.deg)
            ok = (parsed >= 0) & (parsed < limit)
            # 24 h in floats, but maybe under it in the text ('23:59:59.99999999999999'):
            # decided on the fields; kept as astropy's degrees (`Longitude` too keeps
            # 359.99999999999994, and SkyCoord wraps 360.0 to 0)
            edge = np.flatnonzero((parsed >= limit) & (parsed <= 360.0))
            ok[edge] = under_full_turn(text[todo[edge]], unit)
            values[todo] = np.where(ok, parsed, np.nan)
    return values


def _positions(table, ra_col, dec_col, coord_col, what="catalogue"):
    """SkyCoord of every row and a mask of rows without a usable position; ``what`` names
    ``table`` in the errors and warnings (``"table"`` for `SimilarityIndex`'s)."""
    from astropy.coordinates import SkyCoord  # imported here: it takes a while
    for option, name in (("ra_col", ra_col), ("dec_col", dec_col), ("coord_col", coord_col)):
        if name is not None and not isinstance(name, str):
            raise InvalidArgumentTypeError(f"{option} must be a column name (str), got "
                                           f"{name!r}")
    if coord_col is not None:
        if coord_col not in table.colnames:
            raise InputError(f"no column {coord_col!r} in the {what} (columns: "
                             f"{table.colnames})")
        if not isinstance(table[coord_col], SkyCoord):
            raise InputError(f"coord_col {coord_col!r} is not a SkyCoord column (it holds "
                             f"{type(table[coord_col]).__name__}); use ra_col=/dec_col= for "
                             "separate RA and Dec columns")
        return _checked_coords(table[coord_col])
    if ra_col is None and dec_col is None:
        sky = [n for n in table.colnames if isinstance(table[n], SkyCoord)]
        if sky:
            return _checked_coords(table[sky[0]])
    ra_found, dec_found = _position_candidates(table, ra_col, dec_col)
    ra_col, dec_col = (found[0] if found else None for found in (ra_found, dec_found))
    galactic = [n for n in table.colnames if n.lower() in _GALACTIC_NAMES]
    how = ("Galactic coordinates are not read as RA/Dec: give a SkyCoord column, e.g. "
           "table['coord'] = SkyCoord(l=..., b=..., unit='deg', frame='galactic')")
    missing = [name for name, col in (("RA", ra_col), ("Dec", dec_col)) if col is None]
    if missing:
        raise InputError(f"the {what} has no {' or '.join(missing)} column (columns: "
                         f"{table.colnames}); pass ra_col=/dec_col= (--ra-col/--dec-col) or a "
                         "SkyCoord column" + (f"; {galactic}: {how}" if galactic else ""))
    for col in (ra_col, dec_col):
        if col not in table.colnames:
            raise InputError(f"no column {col!r} in the {what} (columns: {table.colnames})")
        if col in galactic:
            raise InputError(f"position column {col!r}: its name is that of a Galactic "
                             f"coordinate; {how}")

    def degrees(col, text_unit):
        """Degrees, and where they are numbers read as degrees for want of a unit (a mask);
        numbers in the column's unit (default deg), text angles in ``text_unit``."""
        c = table[col]
        _check_angle_kind(c, f"position column {col!r}", "numbers (degrees, or the column's "
                          "angle unit) or sexagesimal text")
        unit = _column_unit(c, f"position column {col!r}", u.deg)
        if text_unit == u.hourangle and unit == u.h:  # RA in hours of time (VizieR's 'h')
            unit = u.hourangle
        # text in the unit that a sexagesimal unit string names ('d:m:s' RA: degrees)
        text_unit = _SEXAGESIMAL_UNITS.get(
            str(getattr(c, "unit", None)).strip().strip("\"'").lower(), text_unit)
        numbers = _float_values(c)
        assumed = np.isfinite(numbers) if getattr(c, "unit", None) is None \
            else np.zeros(len(numbers), bool)
        try:
            values = (numbers * unit).to_value(u.deg)
        except u.UnitsError:
            raise InputError(f"position column {col!r} is in {unit}, not an angle") from None
        return _sexagesimal(c, values, text_unit), assumed

    for col in (ra_col, dec_col):
        if np.ndim(table[col]) != 1:
            per_row = np.shape(table[col])[1:]  # (the shape of no row: checked on none)
            raise InputError(f"position column {col!r} must hold one value per row, got "
                             f"{int(np.prod(per_row))} (shape {per_row} per row)")
    (ra, ra_assumed), (dec, dec_assumed) = degrees(ra_col, u.hourangle), degrees(dec_col, u.deg)
    ra_outside = _unitless_degrees(what, ((ra_col, ra, ra_assumed, 0.0, 360.0),
                                          (dec_col, dec, dec_assumed, -90.0, 90.0)))
    # columns of the default names beside the ones used: a word where they disagree
    cos_dec = np.cos(np.radians(np.where(np.abs(dec) <= 90, dec, 0.0)))
    for axis, found, used, text_unit, scale in (("RA", ra_found, ra, u.hourangle, cos_dec),
                                                ("Dec", dec_found, dec, u.deg, 1.0)):
        for other in found[1:]:
            try:
                values = degrees(other, text_unit)[0]
            except InputError:
                values = np.full(len(used), np.nan)
            arcsec = np.abs((values - used + 180) % 360 - 180) * scale * 3600
            if (np.isfinite(values) != np.isfinite(used)).any() or \
                    (arcsec > _SAME_POSITION_ARCSEC).any():
                warn(f"the {what} has several {axis} columns {found} that disagree: "
                     f"{found[0]!r} is used; pass ra_col=/dec_col= (--ra-col/--dec-col) to "
                     "choose", AmbiguousInputWarning)
                break
    beyond = np.abs(np.nan_to_num(dec)) > 90
    swap = _swapped_hint(ra_col, ra, dec_col, dec)
    if swap:  # (not named as a warning of its own in the error above)
        warn(f"the {what}'s Dec column {dec_col!r} has {np.count_nonzero(beyond)} values "
             f"beyond +-90 degrees (first {dec[np.flatnonzero(beyond)[0]]:g}; their rows have "
             f"no position), and its RA column {ra_col!r} none; {swap}",
             AmbiguousInputWarning)
    bad = ~(np.isfinite(ra) & np.isfinite(dec)) | beyond | ra_outside
    ra, dec = np.where(bad, 0.0, ra), np.where(bad, 0.0, dec)
    return SkyCoord(ra * u.deg, dec * u.deg), bad


def _swapped_hint(ra_col, ra, dec_col, dec):
    """Words saying that the RA and Dec columns may be swapped (and how to pass them the
    other way round), or "": where the Dec column (degrees) has values beyond +-90 that an
    RA can be (within +-360: not a sentinel such as -999) and every RA is within
    [-90, 90], as a Dec is. Nothing can be said where both columns are within [-90, 90]."""
    beyond = np.abs(np.nan_to_num(dec)) > 90
    finite_ra = ra[np.isfinite(ra)]
    if not (beyond.any() and (np.abs(dec[beyond]) <= 360).all() and finite_ra.size
            and (np.abs(finite_ra) <= 90).all()):
        return ""
    return (f"are the columns swapped? If so, pass ra_col={dec_col!r}, dec_col={ra_col!r} "
            "(--ra-col/--dec-col)")


def _unitless_degrees(what, columns):
    """Check the numbers of position columns read as degrees for want of a unit; return the
    rows whose unitless RA cannot be degrees (to be flagged, as a Dec beyond the pole is).

    ``columns``: ``(name, degrees, assumed, low, high)`` of the RA and the Dec column, with
    the mask of the values that were unitless numbers and the range of degrees they may be
    in. Reading them as degrees is the convention of catalogues (a CSV file cannot say
    otherwise), logged at INFO level with the columns' names. An RA column none of whose
    numbers exceeds 180 may be written from -180 to 180: its negative values are wrapped
    (-10 is 350). A column none of whose numbers is in the range is in no unit that can be
    assumed (arcsec written as plain numbers): an `InputError` naming it and its first
    value. Single values out of range are sentinels (-999) or typos: their rows are flagged,
    not wrapped onto the sky (-999 degrees of RA would be 81). Columns with a unit (degrees
    included) are astropy's to wrap.
    """
    unitless = []
    outside = [np.zeros(len(values), bool) for _, values, _, _, _ in columns]
    for k, (name, values, assumed, low, high) in enumerate(columns):
        if not assumed.any():
            continue
        unitless.append(name)
        if k == 0 and not (values[assumed] > 180.0).any():  # an RA from -180 to 180
            low = -180.0
        out = assumed & ~((values >= low) & (values <= high))
        if out[assumed].all():
            first = values[np.flatnonzero(assumed)[0]]
            swap = "" if k == 0 else _swapped_hint(columns[0][0], columns[0][1], name, values)
            raise InputError(
                f"position column {name!r} has no unit and is read as degrees, but no value "
                f"of it is one (from {low:g} to {high:g}): first {first:g}; give the column "
                f"its unit (e.g. table[{name!r}].unit = 'arcsec')"
                + (f"; or, as its RA column {columns[0][0]!r} is within [-90, 90], {swap}"
                   if swap else ""))
        outside[k] = out
    if unitless:
        log.info("the %s's position column(s) %s have no unit: read as degrees (an RA in "
                 "hours: table[%r].unit = 'hourangle')", what,
                 ", ".join(repr(n) for n in unitless), columns[0][0])
    return outside[0]


def _position_candidates(table, ra_col, dec_col):
    """The RA and Dec columns that may hold the positions, the one used first in each
    (`_paired_first`): ``[ra_col]`` where given, else those found by name or UCD
    (`_position_columns`); likewise for Dec. An empty name is a column that is not there,
    not "find it"."""
    ra_found = _position_columns(table, _RA_NAMES, "pos.eq.ra") if ra_col is None else [ra_col]
    dec_found = (_position_columns(table, _DEC_NAMES, "pos.eq.dec") if dec_col is None
                 else [dec_col])
    return _paired_first(ra_found, dec_found)


def _family(name):
    """Naming family of an RA or Dec column ('raj2000' for RAJ2000 and DEJ2000), or None."""
    key = name.lower()
    for ra, dec in _PAIRS:
        if key in (ra, dec):
            return ra
    return None


def _paired_first(ra_found, dec_found):
    """The RA and Dec candidates with, first, an RA and a Dec of one naming family (RAJ2000
    with DEJ2000, not with a 'dec' of another epoch) where the catalogue has such a pair."""
    for ra in ra_found:
        same = [d for d in dec_found if _family(d) is not None and _family(d) == _family(ra)]
        if same:
            return ([ra] + [r for r in ra_found if r != ra],
                    [same[0]] + [d for d in dec_found if d != same[0]])
    return ra_found, dec_found


def _named_columns(table, names):
    """The columns of ``table`` of the names ``names``, in their order, then those of the
    same names in other case ('Ra' for 'ra')."""
    exact = [n for n in names if n in table.colnames]
    lower = [n.lower() for n in names]
    other = sorted((n for n in table.colnames if n not in exact and n.lower() in lower),
                   key=lambda n: lower.index(n.lower()))
    return exact + other


def _position_columns(table, names, ucd):
    """The columns of ``table`` of the names ``names`` (`_named_columns`), else those whose
    UCD names the main position on that axis (``pos.eq.ra;meta.main``, as VOTables of TAP
    services and VizieR mark it)."""
    found = _named_columns(table, names)
    if found:
        return found
    return [n for n in table.colnames
            if {ucd, "meta.main"} <= {word.strip().lower() for word in str(
                (getattr(table[n].info, "meta", None) or {}).get("ucd", "")).split(";")}]


def _checked_coords(coords):
    """A SkyCoord column and the mask of its rows without a usable position (masked or
    non-finite); those rows are moved to a placeholder so that they are flagged `BAD_INPUT`
    only, as rows with bad RA/Dec values are."""
    from astropy.coordinates import SkyCoord, UnitSphericalRepresentation

    sph = coords.represent_as(UnitSphericalRepresentation)
    bad = np.zeros(len(coords), bool)
    values = []
    for angle in (sph.lon, sph.lat):
        if getattr(angle, "mask", None) is not None:
            bad |= np.broadcast_to(np.asarray(angle.mask), bad.shape)
            angle = angle.unmasked
        deg = np.asarray(angle.to_value(u.deg), dtype=float)
        bad |= ~np.isfinite(deg)
        values.append(deg)
    if not bad.any():
        return coords, bad
    lon, lat = (np.where(bad, 0.0, v) * u.deg for v in values)
    fixed = coords.copy()
    fixed[bad] = SkyCoord(fixed.frame.realize_frame(
        UnitSphericalRepresentation(lon[bad], lat[bad])), **{
            a: getattr(fixed, a) for a in fixed._extra_frameattr_names})
    return fixed, bad


def _size_values(table, size_col):
    """The size column ``size_col`` of ``table`` in arcsec (numbers in the column's angle
    unit, arcsec by default; NaN where masked or no number), or None where not given;
    `InputError` for a column that is not there or holds no angles."""
    if size_col is None:
        return None
    if size_col not in table.colnames:
        raise InputError(f"no size column {size_col!r} in the catalogue "
                         f"(columns: {table.colnames})")
    col = table[size_col]
    _check_angle_kind(col, f"size column {size_col!r}",
                      "numbers (arcsec, or the column's angle unit)")
    unit = _column_unit(col, f"size column {size_col!r}", u.arcsec)
    try:
        return (_float_values(col) * unit).to_value(u.arcsec)
    except u.UnitsError as exc:
        raise InputError(f"size column {size_col!r} is in {unit}, not an angle ({exc})") from None


def _stamp_side(stamp_size):
    """``stamp_size`` (a number in arcsec or an angle Quantity) in arcsec, checked."""
    try:
        side = u.Quantity(stamp_size, u.arcsec)
        side = None if isinstance(stamp_size, (bool, np.bool_)) else float(side.to_value(u.arcsec))
    except (u.UnitsError, TypeError, ValueError):
        side = None
    if side is None or not (np.isfinite(side) and side > 0):
        raise InvalidArgumentError(f"stamp_size must be a positive angle (a number in arcsec or "
                                   f"an angular Quantity), got {stamp_size!r}")
    return side


def check_scale_options(card, *, size_col=None, stamp_size=None):
    """Raise `InvalidArgumentError` when ``size_col`` or ``stamp_size`` is given for a
    model (its ``card``) whose card fixes the field of every stamp (`fixed_field`): the
    option could not be honoured, and is refused rather than ignored; or when both are
    given to a galaxy model (one would be left unused)."""
    field = fixed_field(card)
    given = [(name, value) for name, value in (("size_col", size_col),
                                               ("stamp_size", stamp_size))
             if value is not None]
    if field is None and len(given) == 2:
        raise InvalidArgumentError(f"pass size_col={size_col!r} or stamp_size={stamp_size} "
                                   "(--size-col or --stamp-size), not both")
    if field is None or not given:
        return
    shown = ", ".join(f"{name}={value if isinstance(value, u.Quantity) else repr(value)} "
                      f"(--{name.replace('_', '-')})" for name, value in given)
    raise InvalidArgumentError(
        f"{shown}: model {card['name']!r} cannot honour "
        f"{'it' if len(given) == 1 else 'them'}: its card fixes the field of every stamp "
        f"({field}); leave {'it' if len(given) == 1 else 'them'} out (they apply to the "
        "galaxy models)")


def _grid(model, family, n, sizes, stamp_size):
    """Stamp side in pixels, per-source pixel scale (arcsec), crop fraction, bad rows."""
    spec = model.card["input"].get("angular_size") or {}
    bad = np.zeros(n, bool)
    if family == "optical":
        from .preprocessing import _optical

        npix = model.input_shape[-1]
        if stamp_size is not None:
            side = np.full(n, _stamp_side(stamp_size))
        elif sizes is not None:
            factor = spec.get("stamp_size_per_petro_r90",
                              _optical.stamp_size_from_petrosian(1.0))
            side = factor * sizes
        elif spec.get("pixel_scale_arcsec"):
            side = np.full(n, spec["pixel_scale_arcsec"] * npix)
        else:
            raise InputError(
                f"model {model.name!r} expects galaxy-scaled stamps ({spec.get('kind')}): pass "
                "size_col= (--size-col: a Petrosian R90 radius column) or stamp_size= "
                "(--stamp-size: the stamp side)")
        bad = ~(np.isfinite(side) & (side > 0))
        return npix, np.where(bad, 1.0, side) / npix, 1.0, bad
    if family == "radio":
        from .preprocessing import _radio

        npix = int(spec.get("size_pix", _radio.DATASET_IMAGE_PIXELS))
        scale = float(spec.get("pixel_scale_arcsec", _radio.FIRST_PIXEL_SCALE_ARCSEC))
        return npix, np.full(n, scale), None, bad
    npix = int(spec.get("size_pix", model.input_shape[-1]))
    scale = float(spec.get("pixel_scale_arcsec", 1.0))
    return npix, np.full(n, scale), None, bad


def _native_grids(images, choice, scale, npix):
    """radio-morphology stamps of an image of known beam (``match_beam``): the stamp side
    (pixels) and pixel scale (arcsec) of each source, ``(sides, scale)`` (``npix`` and
    ``scale`` as given where unchanged).

    The stamps of an image whose header gives a beam, on pixels finer than FIRST's 1.8",
    are cut at the image's own pixel scale (the finer of its two sides; at least
    `FINEST_STAMP_SCALE`), wide enough for the radio adapter to smooth them there whole
    where the beam is finer than FIRST's (`smooth_to_first_beam` smooths it) and then
    sample the FIRST grid by cubic convolution, as it does for a cutout of the image given
    to `predict_files`: cut at 1.8" and smoothed there, the fine beam is undersampled (a
    stamp differed from `predict_files`' by 11 % of its peak); cut at 1.8" (block means,
    bilinearly), a beam that needs no smoothing is widened (a point source seen through
    FIRST's beam lost 1.6 % of its peak from 1" pixels). ``choice`` is `_choose_images` of
    every source in the one band of ``images``.

    The side is odd, ``2 * _native_half_side + 1``. `_cut_band` cuts these stamps on the
    image's own pixels where its grid is the stamp's (`cut_stamps` ``on_pixels``: a
    north-up image of square pixels), about the pixel nearest the source, and the radio
    adapter samples the FIRST grid about the source (`RawStamps.centre`): once, from the
    image's pixels, where interpolating the stamp about the source and then sampling the
    grid from it blurred the image twice (the stamp's pixels the bilinear means of the
    image's; the FIRST grid 0.6 to 1.5 % of its peak from the grid sampled straight from
    the image, at 1", but for a source on a pixel centre or corner).
    """
    from astropy.wcs.utils import proj_plane_pixel_scales

    from .preprocessing import _radio as rad

    best, off = choice
    sides = np.full(len(scale), npix)
    for k, image in enumerate(images):
        rows = (best == k) & ~off
        if image.beam is None or not rows.any():
            continue
        with image.lock:
            finest = np.min(proj_plane_pixel_scales(image.wcs)) * 3600.0
        if not (np.isfinite(finest) and finest > 0
                and finest < rad.FIRST_PIXEL_SCALE_ARCSEC * (1 - 1e-3)):
            continue
        fine = max(float(finest), FINEST_STAMP_SCALE)
        scale = np.where(rows, fine, scale)
        sides[rows] = 2 * rad._native_half_side(fine, size=rad.DATASET_IMAGE_PIXELS) + 1
    return sides, scale


def _parts(rows, sides, stamp_bands):
    """A chunk's sources ``rows`` in parts: those of one stamp side (``sides``, per
    catalogue row) together, in their order, at most `_part_rows` of them."""
    parts, of = [], sides[rows]
    for side in dict.fromkeys(of.tolist()):  # (in order of first appearance)
        group = rows[of == side] if (of != side).any() else rows
        per_part = _part_rows(side * side * stamp_bands)
        parts += [group[s:s + per_part] for s in range(0, len(group), per_part)]
    return parts


def _footprint(image):
    """An image's shape and the sky of its four corners, its centre and the pixel beside
    it (to about 0.004 arcsec; None for a point off the projection, e.g. the corners of an
    all-sky map), or None where its WCS places none of them."""
    ny, nx = image.data.shape[-2:]
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    x = np.array([0, nx - 1, 0, nx - 1, cx, cx + 1], float)
    y = np.array([0, 0, ny - 1, ny - 1, cy, cy], float)
    try:
        points = np.round(np.array(image.wcs.celestial.pixel_to_world_values(x, y)), 6)
    except Exception:  # noqa: BLE001 - a WCS that cannot say is not taken for a band
        return None
    if not np.isfinite(points).any():
        return None
    # NaN != NaN: as None, points off the sky compare equal between two images
    return (ny, nx, *(v if np.isfinite(v) else None for v in points.ravel().tolist()))


def _warn_unnamed_bands(images):
    """Images without a band name are tiles of one mosaic; two that cover the same pixels
    cannot be, and are most likely bands whose headers do not name them: say so (one pass
    over the images, however many tiles)."""
    seen, pair = {}, None
    for image in images:
        key = _footprint(image)
        if key is not None and key in seen:
            pair = (seen[key], image)
            break
        seen.setdefault(key, image)
    if pair is not None:
        warn(f"images {pair[0].name} and {pair[1].name} have no band name (no BAND or FILTER "
             "keyword) and cover the same pixels: all the unnamed images are read as tiles of "
             "one band and scored as a single band; if they are bands, name them (a dict "
             "{'g': ..., 'r': ..., 'i': ...}, bands=, or --band on the command line)",
             AmbiguousInputWarning)


def _band_plan(model, family, groups):
    """Bands (image groups) to cut, in the order the preprocessing wants them."""
    names = list(groups)
    if family == "triplet":
        need = ["science", "reference", "difference"]
        missing = [b for b in need if b not in groups]
        if missing:
            raise InputError(f"model {model.name!r} needs science, reference and difference "
                             f"images; missing {missing} (image bands found: {names}; set "
                             "EXTNAME/BAND in the headers or pass a dict of images)")
        return need
    if family == "optical" and {"g", "r", "i"} <= set(groups):
        return ["g", "r", "i"]
    if family == "optical" and names == ["unknown"]:
        _warn_unnamed_bands(groups["unknown"])
    if len(names) == 1:
        return names
    pick = single_band(names)  # as predict_files takes one band of several
    takes = "g, r and i together, or one band" if family == "optical" else "one band"
    warn(f"model {model.name!r}: images of bands {names} given; using band {pick!r} "
         f"alone (the model takes {takes})", AmbiguousInputWarning)
    return [pick]


def _image_frames(images):
    """The astropy frame of each image's WCS, or the `InputError` of the first image in a
    frame astropy cannot place (`_celestial_frame`): checked for every image before any
    source is read or transformed."""
    from ._cutouts import _celestial_frame

    frames = []
    for image in images:
        with image.lock:
            frames.append(_celestial_frame(image.wcs, image.name))
    return frames


def _frame_key(frame):
    """What tells apart the celestial frames of images for transforming positions into them
    once per frame: its name and equinox."""
    return frame.name + str(getattr(frame, "equinox", ""))


def _sky_positions(images, coords, frames=None):
    """Every source in each image: ``(lon, lat, x, y, up_angle)`` per image.

    Longitude and latitude in degrees in the image's celestial frame (``frames``, from
    `_image_frames`, computed here when not given), the 0-based pixel position from its
    WCS (one transform per image, shared by all the parts that `_cut_band` cuts), and the
    position angle in that frame of ICRS north (`_icrs_north`), the stamps' up direction.
    """
    if frames is None:
        frames = _image_frames(images)
    transformed, sky = {}, []
    for image, frame in zip(images, frames):
        key = _frame_key(frame)
        if key not in transformed:
            try:
                c = coords.transform_to(frame)
                transformed[key] = (c.spherical.lon.deg, c.spherical.lat.deg,
                                    _icrs_north(coords, frame))
            except Exception as exc:  # noqa: BLE001 - astropy's transforms raise many types
                raise InputError(f"the positions (a SkyCoord in the {coords.frame.name} frame) "
                                 f"cannot be transformed to the {frame.name} frame of image "
                                 f"{image.name} or to ICRS: {type(exc).__name__}: {exc}") from exc
        lon, lat, up = transformed[key]
        px, py = image.world_to_pixel(lon, lat)
        sky.append((lon, lat, np.asarray(px), np.asarray(py), up))
    return sky


def _icrs_north(coords, frame):
    """Position angle (degrees east of ``frame``'s north) of ICRS north at ``coords``:
    0 in ICRS; about 90 deg near the Galactic north pole of a Galactic image."""
    from astropy.coordinates import ICRS

    if isinstance(frame, ICRS):
        return np.zeros(len(coords))
    icrs = coords.icrs
    tip = icrs.directional_offset_by(0 * u.deg, 1 * u.arcsec).transform_to(frame)
    angle = icrs.transform_to(frame).position_angle(tip).deg
    return np.where(np.isfinite(angle), angle, 0.0)


def _margins(image, px, py):
    """Distance (arcsec) of each position inside the image's border, each pixel axis in
    its pixels' side on the sky (`_pixel_sides`: tiles of different pixel scales compare);
    negative outside."""
    ny, nx = image.shape
    sx, sy = _pixel_sides(image)
    margin = np.minimum.reduce([(px + 0.5) * sx, (nx - 0.5 - px) * sx, (py + 0.5) * sy,
                                (ny - 0.5 - py) * sy])
    return np.where(np.isfinite(margin), margin, -np.inf)


def _pixel_sides(image):
    """The sides (arcsec) of the image's pixels along its x and y axes, at its reference
    point (1, 1 where its WCS cannot say)."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    with image.lock:
        sides = proj_plane_pixel_scales(image.wcs) * 3600.0
    return sides if np.all(np.isfinite(sides) & (sides > 0)) else np.ones(2)


def _has_data(image, px, py, inside):
    """Whether the pixel under each position is finite (False outside: ``~inside``), read by
    `SkyImage.peek` (a compressed image not decompressed whole for it)."""
    data = np.zeros(len(px), bool)
    if inside.any():
        ny, nx = image.shape
        x = np.clip(np.rint(px[inside]), 0, nx - 1).astype(np.int64)
        y = np.clip(np.rint(py[inside]), 0, ny - 1).astype(np.int64)
        data[inside] = np.isfinite(image.peek(y * nx + x))
    return data


def _choose_images(images, sky, rows):
    """The image of one band that each of the sources ``rows`` is cut from, and whether it
    lies off them all: ``(best, off)``.

    An image with data under the source beats one with a blank pixel there (the padding of
    a rotated tile, a chip gap), however far from its edge; else the one where it lies
    farthest from the edge on the sky (not in pixels: a finer tile's); the first of equals.
    The data decide only between images that the source lies on, and only where the first
    of those it lies farthest inside has no data under it, so the pixels are read for the
    sources on two or more images alone, first in that one (a compressed tile is read by
    the rows of its compression that hold them, not decompressed whole).
    """
    margins = np.array([_margins(image, sky[k][2][rows], sky[k][3][rows])
                        for k, image in enumerate(images)]).reshape(len(images), len(rows))
    data = np.zeros(margins.shape, bool)  # (False where it decides nothing)
    several = np.count_nonzero(margins > 0, axis=0) > 1
    if several.any():
        farthest = np.argmax(margins, axis=0)  # (the first of equals)
        ask = [several & (farthest == k) for k in range(len(images))]
        for k, image in enumerate(images):
            on = ask[k]
            data[k, on] = _has_data(image, sky[k][2][rows[on]], sky[k][3][rows[on]],
                                    np.ones(np.count_nonzero(on), bool))
        # with data there, it is chosen whatever the others hold; else all are read
        blank = several & ~data[farthest, np.arange(len(rows))]
        for k, image in enumerate(images):
            on = blank & (margins[k] > 0) & (farthest != k)
            data[k, on] = _has_data(image, sky[k][2][rows[on]], sky[k][3][rows[on]],
                                    np.ones(np.count_nonzero(on), bool))
    best_margin = np.full(len(rows), -np.inf)
    best_data = np.zeros(len(rows), bool)
    best = np.full(len(rows), -1)
    for k, margin in enumerate(margins):
        better = (data[k] > best_data) | ((data[k] == best_data) & (margin > best_margin))
        best_margin[better] = margin[better]
        best_data[better] = data[k, better]
        best[better] = k
    return best, best_margin < 0


def _saturated(image, px, py):
    """Whether a pixel of ``image`` within `SATURATION_RADIUS` pixels of the pixel under
    each position (the pixels of the data, before any resampling) reaches the image's
    saturation level (`Flag.SATURATED`); False everywhere where the header gives none."""
    from ._readers._stamp import SATURATION_RADIUS, central_disk, reaches_saturation

    if image.saturation is None or not len(px):
        return np.zeros(len(px), bool)
    ny, nx = image.shape
    side = 2 * SATURATION_RADIUS + 1
    dy, dx = (d - SATURATION_RADIUS for d in central_disk((side, side)))
    with np.errstate(invalid="ignore"):  # a NaN position: off the image below
        y = np.rint(py)[:, None].astype(np.int64) + dy  # (sources, pixels of the disk)
        x = np.rint(px)[:, None].astype(np.int64) + dx
    on = (y >= 0) & (y < ny) & (x >= 0) & (x < nx)
    values = image.take(np.clip(y, 0, ny - 1) * nx + np.clip(x, 0, nx - 1))
    values[~on] = np.nan  # off the image: no data
    return reaches_saturation(values, image.saturation)


def _plan_reads(images, sky, sides):
    """Tell each image how many stamp pixels it will give (dense images are read whole at
    once); ``sides``: the stamp side of each source (pixels)."""
    for image, (_, _, px, py, _) in zip(images, sky):
        image.plan_samples(int(np.sum(sides[_margins(image, px, py) > 0] ** 2)))


def _field_off_image(image, lon, lat, up_angle, reach):
    """radio-morphology: whether the FIRST grid's points about each source (``lon``,
    ``lat``: degrees in the image's frame; ``up_angle`` as `cut_stamps` takes it; the
    outermost points ``reach`` arcsec from the source along the stamp's axes) run off the
    image: past -0.5 or ``n - 0.5`` (0-based pixels, as astropy's WCS counts them), where
    `cut_stamps` samples no pixel (`Flag.EDGE`), the test it makes of a stamp cut at the
    FIRST grid's 1.8", made of the field whatever the stamp's side; `predict_files`'
    rule too (`_radio._field_on_image`, of the field about a cutout's centre). The points
    of a 9 x 9 grid spanning the field are tested (exact to a small fraction of a pixel on
    any projection a stamp is cut from). True for a point that the WCS cannot place."""
    from ._cutouts import _stamp_offsets, _tangent_to_sky
    from .preprocessing._radio import _field_on_image

    if not len(lon):
        return np.zeros(0, bool)
    nodes = np.linspace(-1.0, 1.0, 9)
    xi, eta = _stamp_offsets(nodes, 1.0, np.full(len(lon), float(reach)), up_angle)
    glon, glat = _tangent_to_sky(np.radians(lon)[:, None, None],
                                 np.radians(lat)[:, None, None], xi, eta)
    x, y = (np.reshape(v, (len(lon), -1))
            for v in image.world_to_pixel(np.degrees(glon), np.degrees(glat)))
    return ~_field_on_image(x, y, image.shape)


def _cut_band(images, sky, npix, scale, rows, choice=None, *, field=None, native=None):
    """Stamps of the sources ``rows`` from the best image of one band (mosaic aware).

    ``sky`` holds the positions of all sources in each image's frame
    (`_sky_positions`); ``choice``, the image of every source (`_choose_images` of all the
    catalogue's rows; made here for ``rows`` where not given). Each image is told of the
    sources cut from it (`SkyImage.done_sources`). Returns the stamps
    ``(len(rows), npix, npix)`` (NaN for a source off every image), their flags
    (`OFF_IMAGE`, `EDGE`, `BLANK`, `EXTRAPOLATED`, `SATURATED`) and ``(beam, shape,
    quantum, filled, offset)``: the beam (arcsec) of the image each was cut from (NaN where
    unknown), its shape on the stamp, the quantisation spread of a flat area in each stamp
    (`StampResult.quantum`; 0 where the image's pixels are as written), the rows whose
    stamp runs over the image's edge where the model's field does not (filled, not EDGE)
    and the source's position on each stamp less its centre (`StampResult.offset`,
    ``(len(rows), 2)``: 0 but on stamps cut on an image's own pixels).

    ``native``: radio-morphology, the catalogue's rows (bool) whose stamps `_native_grids`
    cuts at an image's own pixel scale: cut on its own pixels where its grid is theirs
    (`cut_stamps` ``on_pixels``).

    ``field``: radio-morphology, the reach (arcsec) of the FIRST grid's outermost points
    from the source: `Flag.EDGE` where they run off the image (`_field_off_image`), whatever
    the stamp's side (stamps cut on an image's own pixels, `_native_grids`, reach further,
    for the smoothing); else where the stamp's pixels do.
    """
    n = len(rows)
    stamps = None
    flags = np.zeros(n, np.int32)
    filled = np.zeros(n, bool)
    beam = np.full(n, np.nan)  # of the image each stamp is cut from (BMAJ), NaN if unknown
    quantum = np.zeros(n)
    shape = np.full((n, 3), np.nan)  # its major, minor axes and PA (north up on the stamps)
    offset = np.zeros((n, 2))  # the source on each stamp less its centre (dy, dx)
    if choice is None:
        best_image, off = _choose_images(images, sky, rows)
    else:
        best_image, off = choice[0][rows], choice[1][rows]
    flags[off] |= Flag.OFF_IMAGE
    for k, image in enumerate(images):
        sel = np.flatnonzero((best_image == k) & ~off)
        if not len(sel):
            continue
        lon, lat, up = (sky[k][j][rows[sel]] for j in (0, 1, 4))
        on_pixels = native is not None and bool(native[rows[sel]].all())
        res = cut_stamps(image, lon, lat, size=npix, pixel_scale=scale[rows][sel], up_angle=up,
                         on_pixels=on_pixels)
        beam[sel] = np.nan if image.beam is None else image.beam
        quantum[sel] = res.quantum
        offset[sel] = res.offset
        if image.beam is not None:
            # the stamps' up points to position angle ``up`` in the image's frame (ICRS
            # north on a Galactic map), where BPA is measured: on them the beam's major
            # axis lies at BPA - up from up towards east (left)
            shape[sel, 0] = float(image.beam)
            shape[sel, 1] = getattr(image.beam, "minor", image.beam)
            shape[sel, 2] = getattr(image.beam, "pa", 0.0) - up
        saturated = _saturated(image, sky[k][2][rows[sel]], sky[k][3][rows[sel]])
        image.done_sources(len(sel))  # (a tile lets go of its pixels, copies after its last)
        if len(sel) == n:  # all from one image (no copy)
            stamps = res.stamps
        else:
            if stamps is None:
                stamps = np.full((n, npix, npix), np.nan, np.float32)
            stamps[sel] = res.stamps
        edge = res.outside > 0
        if field is not None:  # (the model's field, not the stamp's margin)
            # (not ``off``: that names the rows of every image, OFF_IMAGE, still needed)
            field_off = _field_off_image(image, lon, lat, up, field)
            filled[sel] = edge & ~field_off
            edge = field_off
        for hit, flag in ((saturated, Flag.SATURATED), (edge, Flag.EDGE),
                          (res.blank > BLANK_THRESHOLD, Flag.BLANK),
                          (res.zoom < MIN_ZOOM, Flag.EXTRAPOLATED)):
            flags[sel] |= np.where(hit, int(flag), 0).astype(np.int32)
    if stamps is None:  # every source off every image: a view, no memory per source
        # (a part of a survey catalogue is mostly off a small image; callers keep the
        # stamps of the usable rows only)
        stamps = np.broadcast_to(np.float32(np.nan), (n, npix, npix))
    return stamps, flags, (beam, shape, quantum, filled, offset)


def annotate(table, images, *, model, ra_col=None, dec_col=None, coord_col=None,
             size_col=None, stamp_size=None, bands=None, on_conflict="error",
             batch_size=256, providers=None, threads=None, precision=None, progress=None,
             match_beam=True):
    """Add model columns to a copy of a catalogue, from images with a WCS.

    Each source gets a stamp resampled from the image that contains it (the
    one where it lies farthest from the edge on the sky, among those with data
    under it, so tiled mosaics just work) onto the model's angular grid, north up and
    east left, with the WCS honoured (rotation, flips, SIP
    distortion); the stamps are preprocessed exactly as in training and
    scored in batches.

    Parameters
    ----------
    table : astropy.table.Table or QTable
        The catalogue; it is not modified.
    images : path, HDU, HDUList, NDData, (array, WCS), (array, header), list of these, or dict
        Images with a celestial WCS. A dict maps bands (``"g"``, ``"r"``,
        ``"i"``; ``"science"``, ``"reference"``, ``"difference"``) to an
        image or a list of tiles; otherwise bands come from the FITS headers
        or ``bands=``. FITS files are memory-mapped.
    model : str, path or Model
        A shipped model name (e.g. ``"morphology"``), a model path, or a
        loaded `Model`.
    ra_col, dec_col : str, optional
        RA and Dec columns (degrees, or Quantity; numbers without a unit are
        read as degrees, an RA with no value above 180 from -180 to 180; a
        unitless column none of whose values is in [0, 360] (RA) or [-90, 90]
        (Dec) is an `~astromorph.exceptions.InputError`; single such values
        flag their rows ``BAD_INPUT``). Default: the first
        SkyCoord column, else common names (``ra``/``dec``, ``RAJ2000``...;
        an `~astromorph.exceptions.AmbiguousInputWarning` where two of them
        disagree), else the columns of UCD ``pos.eq.ra;meta.main`` and
        ``pos.eq.dec;meta.main`` (a VOTable's). Galactic columns (``GLON``,
        ``l``...) are refused.
    coord_col : str, optional
        A SkyCoord column to use.
    size_col : str, optional
        For galaxy-scaled models: a column of Petrosian R90 radii (arcsec
        unless it has a unit); the stamp spans the multiple of it that the
        model card records (``angular_size.stamp_size_per_petro_r90``).
        Refused (`~astromorph.exceptions.InvalidArgumentError`) by the models
        whose card fixes their field (``real-bogus``, ``radio-morphology``).
    stamp_size : Quantity or float, optional
        Stamp side (arcsec) for every source, instead of ``size_col`` (not
        both); refused, as ``size_col``, by the models whose card fixes their field.
    bands : sequence of str, optional
        Band of each image in a list of images (used as given; one that names another
        band than the image's header gives an `AmbiguousInputWarning`, as a dict key does).
    on_conflict : {"error", "suffix", "replace"}, optional
        What to do when a new column name already exists, in any case
        (``OPT_LABEL`` and ``opt_label`` are one column for FITS, whose
        TTYPE ignores case): raise `~astromorph.exceptions.InputError`
        (default), add ``_2``, ``_3``... to the new names (the same suffix to
        every column of the run, the first one free for all of them), or
        replace the existing column (in its place).
    batch_size : int, optional
        Stamps per model call (passed to `Model.predict`).
    providers : None, str or list of str, optional
        Passed to `load_model`.
    threads : int, optional
        ONNX Runtime intra-op threads (passed to `load_model`), and the
        number of threads that cut and preprocess stamps (default: the CPU
        count, at most 8).
    precision : {None, "float32", "int8"}, optional
        Model variant (passed to `load_model`): ``"int8"`` is a quantised
        copy that is faster on CPUs (its card gives its own held-out metrics).
    progress : bool or None, optional
        Progress bar (default: on a terminal, for long runs).
    match_beam : bool, optional
        ``radio-morphology``: convolve the stamps of an image whose restoring beam (header
        BMAJ, BMIN, BPA, or the AIPS HISTORY card; circular where only BMAJ is given) has a
        minor axis below 0.9 times FIRST's 5.4 arcsec to the smallest beam that contains
        FIRST's (FIRST's own where the major axis is below 5.4 arcsec) before scoring
        (`astromorph.preprocessing.smooth_to_first_beam`), as the model was trained at
        FIRST's resolution (default True; ``--no-match-beam``). Such an image's stamps are
        cut on its own pixels where these are finer than FIRST's 1.8 arcsec (at least
        0.45 arcsec), smoothed there and sampled on the FIRST grid, as `predict_files`
        treats a cutout of it; so are those of an image whose beam needs no smoothing, which
        are sampled on the FIRST grid as given (cubic convolution: the beam band-limits
        them, as FIRST's pixels sample its own).

    Returns
    -------
    Table or QTable
        A copy of ``table`` with the model's columns (see
        `astromorph.predict_files` for their names) and ``<prefix>_flags``
        (bits of `astromorph.Flag`), for radio models ``<prefix>_smoothed`` (bool: the
        stamp was smoothed to a beam that contains FIRST's, see ``match_beam``). Rows
        that could not be scored (off every image, missing band, bad size) have masked
        outputs. ``meta``
        gets the provenance keys (``astromorph_model``,
        ``astromorph_model_sha256``, ``astromorph_columns``...); those of an
        earlier annotation of the table are kept as ``astromorph_run1_*``...

    Raises
    ------
    astromorph.exceptions.InputNotFoundError
        An image file does not exist (the message names it; an `InputError` too).
    astromorph.exceptions.InputError
        ``table`` is not a table, it has no RA/Dec (or named) column, its SkyCoord
        column cannot be transformed to an image's frame, an image cannot be
        read (a FITS file that ends inside the data of an HDU, plain or compressed,
        also where that HDU is a MASK astromorph does not use; a header that gives
        BSCALE, BZERO or BLANK twice with different values) or has no celestial WCS
        (or one in a frame astropy cannot place: helioecliptic, supergalactic...), a
        galaxy-scaled model gets no
        ``size_col``/``stamp_size``; new column names clash (``on_conflict="error"``).
    astromorph.exceptions.MissingDependencyError
        An image file is Unix-compressed (``.Z``) and the optional package uncompresspy,
        with which astropy reads it, is not installed.
    astromorph.exceptions.InvalidArgumentError
        A bad option value (named in the message).
    astromorph.exceptions.ModelNotFoundError
        Unknown model (and the other errors of `load_model`).
    """
    from .preprocessing._checks import check_bool

    match_beam = check_bool(match_beam, "match_beam")
    model = check_options(table, model=model, ra_col=ra_col, dec_col=dec_col,
                          coord_col=coord_col, size_col=size_col, stamp_size=stamp_size,
                          on_conflict=on_conflict, batch_size=batch_size, providers=providers,
                          threads=threads, precision=precision)
    family = model_family(model.card)
    out = table.copy()
    n = len(out)
    sky_images = parse_sky_images(images, bands=bands, triplet=family == "triplet")
    with closing_files(sky_images):  # the FITS files opened here are closed at the end
        groups = {}
        for im in sky_images:
            groups.setdefault(im.band or "unknown", []).append(im)
        plan = _band_plan(model, family, groups)
        used_images = [im for band in plan for im in groups[band]]

        # every image's frame checked before any row of the catalogue is read
        frames = {band: _image_frames(groups[band]) for band in plan}
        coords, bad_pos = _positions(out, ra_col, dec_col, coord_col)
        sizes = _size_values(out, size_col)
        npix, scale, crop, bad_size = _grid(model, family, n, sizes, stamp_size)

        flags = np.zeros(n, np.int32)
        flags[bad_pos | bad_size] |= Flag.BAD_INPUT
        valid = np.zeros(n, bool)
        smoothed = np.zeros(n, bool)  # radio: the rows whose stamp was smoothed
        sky = {band: _sky_positions(groups[band], coords, frames[band]) for band in plan}
        # the image each source is cut from, in each band; each image is told how many
        choice = {band: _choose_images(groups[band], sky[band], np.arange(n)) for band in plan}
        sides = np.full(n, npix)  # stamp side of each source (pixels)
        native = None  # radio: the rows cut at an image's own pixel scale (`_native_grids`)
        # radio: EDGE where the FIRST grid's points run off the image (`_cut_band`)
        field = (npix - 1) / 2 * float(scale[0]) if family == "radio" and n else None
        if family == "radio" and match_beam:  # (one band)
            sides, scale = _native_grids(groups[plan[0]], choice[plan[0]], scale, npix)
            native = sides != npix
        for band in plan:
            _plan_reads(groups[band], sky[band], sides)
        for band in plan:
            best, off = choice[band]
            counts = np.bincount(best[~off], minlength=len(groups[band]))
            for image, count in zip(groups[band], counts):
                image.expect_sources(count)
        kind = "triplet" if family == "triplet" else "bands"

        def stamps_to_input(rows):
            """Cut, check and preprocess the sources ``rows`` (runs in worker threads)."""
            stack, row_flags = [], flags[rows].copy()
            off = np.zeros((len(plan), len(rows)), bool)
            beam = np.full(len(rows), np.nan)  # the coarsest of the bands' beams
            shape = np.full((len(rows), 3), np.nan)  # and its shape
            side = int(sides[rows[0]])  # (one side per part: `_parts`)
            quantum = np.zeros((len(rows), len(plan)))  # per band (`StampResult.quantum`)
            filled = np.zeros(len(rows), bool)  # stamps over the edge, not the field
            offset = np.zeros((len(rows), 2))  # the sources on the stamps less their centres
            for k, band in enumerate(plan):
                stamps, f, (band_beam, band_shape, quantum[:, k], band_filled, band_offset) = \
                    _cut_band(groups[band], sky[band], side, scale, rows, choice[band],
                              field=field, native=native)
                filled |= band_filled
                offset += band_offset  # (radio: one band)
                coarser = band_beam > np.where(np.isnan(beam), -np.inf, beam)
                shape[coarser] = band_shape[coarser]
                beam = np.fmax(beam, band_beam)
                stack.append(stamps)
                row_flags |= f
                off[k] = (f & int(Flag.OFF_IMAGE)) != 0
            # on the images of some bands but not of others: a missing band, not off the sky
            some = off.any(axis=0) & ~off.all(axis=0)
            row_flags[some] = (row_flags[some] & ~int(Flag.OFF_IMAGE)) | int(Flag.MISSING_BAND)
            # rows without a usable position or size were cut at a placeholder: their only
            # flag is BAD_INPUT (not the edge or extrapolation bits of the placeholder)
            row_flags[(flags[rows] & int(Flag.BAD_INPUT)) != 0] = int(Flag.BAD_INPUT)
            usable = (row_flags & int(Flag.unusable())) == 0
            if usable.all():
                data = stack[0][:, None] if len(stack) == 1 else np.stack(stack, axis=1)
            else:  # the usable rows only (those off the images: not copied, not stacked)
                data = np.stack([s[usable] for s in stack], axis=1)
            raw = RawStamps(kind, data, bands=tuple(plan),
                            pixel_scale=scale[rows][usable], beam=beam[usable],
                            beam_shape=shape[usable] if match_beam else None,
                            flags=row_flags[usable], scratch=True,  # (stamps not read again)
                            quantum=quantum[usable] if quantum.any() else None,
                            filled=filled[usable] if filled.any() else None,
                            # (radio: the FIRST grid sampled about the source, `_cut_band`)
                            centre=(side - 1) / 2 + offset[usable] if offset.any() else None)
            x, row_flags[usable] = prepare(model, raw, crop_fraction=crop)
            scored = (row_flags[usable] & int(Flag.unusable())) == 0  # e.g. an all-NaN band
            smooth = np.zeros(len(rows), bool)  # (this part's rows of ``smoothed``)
            if raw.smoothed is not None:
                smooth[np.flatnonzero(usable)[raw.smoothed & scored]] = True
            if not scored.all():
                x, usable = x[scored], usable & ((row_flags & int(Flag.unusable())) == 0)
            return rows, x, row_flags, usable, smooth

        predictions, scored = [], []
        order = _processing_order(sky[plan[0]], [choice[band] for band in plan],
                                  [groups[band] for band in plan])
        workers = _workers(threads)
        # the model-free work of the parts is shared among threads (numpy, scipy and ONNX
        # Runtime release the GIL); the model scores each part as soon as it is ready.
        # While it scores one, each thread prepares at most one more (`_ahead`): the
        # network inputs of a whole chunk are never all held waiting for a slower model.
        parts = (part for start in range(0, n, ANNOTATE_CHUNK)
                 for part in _parts(order[start:start + ANNOTATE_CHUNK], sides, len(plan)))
        with ThreadPoolExecutor(workers) as pool, \
                progress_bar(n, desc=f"annotate {model.name}", unit="src", enabled=progress,
                             min_total=ANNOTATE_CHUNK) as bar:
            for rows, x, row_flags, usable, smooth in _ahead(pool, stamps_to_input, parts,
                                                             workers):
                check_stop()  # an annotate_dask partition whose call has failed: no more
                flags[rows], smoothed[rows] = row_flags, smooth
                valid[rows[usable]] = True
                if len(x):
                    predictions.append(model.predict(x, batch_size=batch_size, progress=False))
                    scored.append(rows[usable])
                x = None  # (not held while the next part is awaited)
                bar.update(len(rows))
        if family == "optical":  # the images a scored source was cut from, once scored
            _flux_units(model, used_images, [(groups[band], choice[band]) for band in plan],
                        valid)
        prediction = _concat(predictions, scored)
        columns = result_columns(model, prediction, flags, valid, smoothed=smoothed)
        used = _add_columns(out, columns, on_conflict)
        add_provenance(out.meta, _provenance(model, used_images, used.values(), crop))
        unplaced = np.flatnonzero(bad_pos | bad_size)
        if len(unplaced):  # one warning (one for all the partitions of annotate_dask)
            # (no row number: that of an annotate_dask partition is not the table's)
            # (what it counts: not the rows off every image, flagged OFF_IMAGE and logged)
            summarise_counts(n, len(unplaced), 0,
                             "position" if bad_pos[unplaced[0]] else "size",
                             what="row", where="BAD_INPUT (32)", message=_UNPLACED,
                             row=int(unplaced[0]))
        n_off = int(np.count_nonzero(flags & Flag.OFF_IMAGE))
        if n_off:
            log.info("%d of %d sources lie outside every image", n_off, n)
        # the sources with a usable position and size (not those whose stamp has no data,
        # flagged BAD_INPUT too), those on the images, and those of them on blank pixels
        placed = ~(bad_pos | bad_size)
        on = placed & ((flags & int(Flag.OFF_IMAGE)) == 0)
        blank = on & ((flags & int(Flag.BAD_INPUT)) != 0)
        counts = tuple(int(np.count_nonzero(m)) for m in (placed, on, blank))
        sink = PLACED.get()
        if sink is not None:  # an annotate_dask partition: the warnings below are its to say
            sink.append(counts)
        if counts[0] and not counts[1]:  # not one source on the images
            # (no count: annotate_dask gives one warning for the partitions that give it)
            warn(_NONE_ON_IMAGES + ": every source with a position is off every image (flag "
                 "OFF_IMAGE, outputs masked)" + _unitless_ra_hint(out, ra_col, dec_col, coord_col),
                 UnusableInputWarning)
        elif counts[1] and counts[2] == counts[1]:  # on the images, but not one on data
            warn(_no_data_message(counts[2], n_off), UnusableInputWarning)
        return out


def _flux_units(model, images, choices, valid):
    """Warn of the ``images`` whose header gives a flux unit other than nanomaggies
    (`warn_flux_units`) that a scored source (``valid``) was cut from: an image that no
    source lies on, or whose sources were cut from another tile or not scored (no finite
    pixel), is not named, its pixels never used. ``choices``: each band's images and their
    `_choose_images` of every source. In an `annotate_dask` partition (`FLUX_NOTED` holds a
    list) the texts go to that list, for one warning of the whole call."""
    cut = set()
    for band_images, (best, off) in choices:
        cut.update(id(band_images[k]) for k in np.unique(best[valid & ~off]))
    noted = [(k, im) for k, im in enumerate(images) if im.flux_note]
    units = unscored_flux_notes(noted, [id(im) in cut for im in images],
                                name=lambda k: images[k].name)
    sink = FLUX_NOTED.get()
    if sink is not None:
        sink.extend((model.name, text) for text in units)
    else:
        warn_flux_units(model, units)


#: `annotate`'s warning for the rows without a usable position or size (`summarise_counts`).
_UNPLACED = ("{bad} of {n} {what}(s) have no usable position or size (NaN, masked, unreadable "
             "or out of range; first: {first}): flagged {where}, outputs masked (rows off "
             "every image are flagged OFF_IMAGE and not counted here)")


#: How `annotate`'s warning that not one source lies on the images begins, and that of its
#: warning that not one of the sources on the images lies on data (`_no_data_message`):
#: statements about the whole table, which `annotate_dask` makes from every partition's.
_NONE_ON_IMAGES = "no source lies on the images"
_NO_DATA = "no source on the images has data under it"


def _no_data_message(n_blank, n_off):
    """`annotate`'s warning for a table whose ``n_blank`` sources on the images all lie on
    blank pixels, ``n_off`` others off every image (those without a usable position or
    size, said apart, left aside)."""
    off = f"; {n_off} other(s) lie off every image (flag OFF_IMAGE)" if n_off else ""
    return (f"{_NO_DATA}: the {n_blank} source(s) on the images lie on blank pixels (a band "
            "of each has no finite pixel under its stamp: NaN, BLANK or masked; flagged "
            f"BAD_INPUT, outputs masked){off}")


def check_options(table, *, model, ra_col=None, dec_col=None, coord_col=None, size_col=None,
                  stamp_size=None, on_conflict="error", batch_size=256, providers=None,
                  threads=None, precision=None, match_beam=True):
    """The checks `annotate` makes before it opens any image (`annotate_dask` makes them
    before it sends any task), with `annotate`'s options; return the loaded model.

    The table, the option values, the model (loaded by `as_model`), the options it cannot
    honour, the columns the new ones would clash with, and the catalogue's position and
    size columns (their names, kinds and units, read on none of its rows).
    """
    from .preprocessing._checks import check_bool

    check_table(table, caller="annotate")
    check_on_conflict(on_conflict)
    check_bool(match_beam, "match_beam")
    from ._predict import check_batch_size

    check_batch_size(batch_size)
    model = as_model(model, providers=providers, threads=threads, precision=precision)
    _workers(threads)
    check_scale_options(model.card, size_col=size_col, stamp_size=stamp_size)
    check_clashes(table, result_names(model), on_conflict)
    none = table[:0]
    _positions(none, ra_col, dec_col, coord_col)
    _grid(model, model_family(model.card), 0, _size_values(none, size_col), stamp_size)
    return model


def _unitless_ra_hint(table, ra_col, dec_col, coord_col):
    """For a catalogue none of whose sources lies on the images: a hint where its RA column
    (as `_positions` chose it, `_position_candidates`) has no unit and values that look like
    hours (all from 0 to 24) or radians (to 2 pi), which were read as degrees; else ""."""
    from astropy.coordinates import SkyCoord

    if coord_col is not None or (ra_col is None and dec_col is None and any(
            isinstance(table[n], SkyCoord) for n in table.colnames)):
        return ""
    name = _position_candidates(table, ra_col, dec_col)[0][0]
    col = table[name]
    if getattr(col, "unit", None) is not None or np.asarray(col).dtype.kind not in "iuf":
        return ""
    values = _float_values(col)
    values = values[np.isfinite(values)]
    if not len(values) or values.min() < 0 or values.max() >= 24:
        return ""
    radians = " or radians ('rad')" if values.max() < 2 * np.pi else ""
    return (f"; the RA column {name!r} has no unit and all its values are under 24, read as "
            f"degrees: if they are hours ('hourangle'){radians}, give the column that unit "
            f"(table[{name!r}].unit = 'hourangle')")


def _workers(threads):
    """Threads for the model-free stages: ``threads`` if given, else the CPU count (at most 8)."""
    from ._session import check_threads

    if threads is not None and check_threads(threads) < 0:
        raise InvalidArgumentError(f"threads must be >= 0 (0 = the default), got {threads!r}")
    if threads:
        return max(1, int(threads))
    return max(1, min(8, os.cpu_count() or 1))


def _ahead(pool, func, items, depth):
    """``func`` of each of ``items`` in their order, run in ``pool``: at most ``depth``
    items are submitted beyond the one whose result the caller holds (`Executor.map`
    submits them all at once, and their results wait, in memory, for the caller)."""
    from collections import deque

    pending = deque()
    try:
        for item in items:
            pending.append(pool.submit(func, item))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # an error or a caller that stops early: the parts not begun are not run
        for future in pending:
            future.cancel()


def _part_rows(stamp_pixels):
    """Sources in one part of a chunk, for stamps of ``stamp_pixels`` pixels (all bands)."""
    return max(1, min(STAMP_CHUNK, PART_PIXELS // stamp_pixels))


def _processing_order(sky, choices=(), groups=()):
    """Sources in order of their pixel row in the first image of a band (``sky`` from
    `_sky_positions`), positions outside its WCS last.

    Consecutive parts then cut neighbouring image rows: fewer cache and TLB misses when
    sampling, and a memory-mapped image is read nearly in sequence, not at random.

    Where a band has several images (a mosaic), or some are decompressed when sampled
    (tile-compressed files), the sources are first grouped by the image they are cut from
    in each such band (``choices``, from `_choose_images`, of the bands whose images are
    ``groups``; those off every image of a band last), by the first band's, then within
    it by the next band's, and so on: one tile is decompressed or converted whole
    (`SkyImage.resident`) at a time, once, and let go after its last source
    (`SkyImage.done_sources`); the tiles of the other bands, whose boundaries need not
    fall on the first band's, are taken one after the other within each tile of the first
    (by rows, each would be held from the first row of its sources to the last).
    """
    py = sky[0][3]
    row = np.where(np.isfinite(py), py, np.inf)
    keys = [np.where(off, len(images), best) for (best, off), images in zip(choices, groups)
            if len(images) > 1 or any(im._loader is not None for im in images)]
    return np.lexsort((row, *keys[::-1]))  # (lexsort's last key is its first)


def _concat(predictions, rows):
    """One `Prediction` of the scored rows in catalogue order, from the parts'
    ``predictions`` and the catalogue rows each part scored (``rows``); None where no
    part scored any."""
    if not predictions:
        return None
    from ._model import Prediction

    back = np.argsort(np.concatenate(rows), kind="stable")
    return Prediction({k: np.concatenate([p[k] for p in predictions])[back]
                       for k in predictions[0]},
                      list(predictions[0]._outputs.values()))


def check_on_conflict(on_conflict):
    """Raise `InvalidArgumentError` unless ``on_conflict`` is a known policy
    (`InvalidArgumentTypeError` for a value that is no string)."""
    from .preprocessing._checks import check_choice

    check_choice(on_conflict, "on_conflict", ("error", "suffix", "replace"))


def check_table(table, *, caller=None):
    """Raise `InputError` unless ``table`` is an astropy Table (or QTable), with a hint for
    a file name or a (pandas or Dask) DataFrame; ``caller`` names the function in the message."""
    if isinstance(table, Table):
        return
    hint = ""
    if isinstance(table, (str, os.PathLike)):
        hint = " (read the file with Table.read first)"
    elif type(table).__name__ == "DataFrame":  # pandas or Dask
        hint = (" (from a DataFrame: astropy.table.Table.from_pandas(df), with df.compute() "
                "first for a Dask one)")
    what = f"{caller} needs" if caller else "the table must be"
    raise InputError(f"{what} an astropy Table or QTable, got {type(table).__name__}{hint}")


def _same_column(table, names):
    """{name: the column of ``table`` it would clash with} for those of ``names`` that
    clash: the column of that name, else one whose name differs only by case (one column
    in FITS, whose TTYPE is compared without regard to case, as TOPCAT, cfitsio and SQL
    compare column names)."""
    folded = {}
    for column in table.colnames:
        folded.setdefault(column.casefold(), column)
    return {name: name if name in table.colnames else folded[name.casefold()]
            for name in names if name.casefold() in folded}


def check_clashes(table, names, on_conflict):
    """Raise `InputError` naming the columns of ``table`` that new columns ``names`` would
    overwrite, when ``on_conflict`` is ``"error"`` (callers check before costly work), or
    when ``table`` is not a table. A name that differs from a column's only by case clashes
    with it (`_same_column`)."""
    check_table(table)
    clashes = _same_column(table, names)
    if clashes and on_conflict == "error":
        shown = list(clashes.values())
        cased = [f"{old!r} and {new!r}" for new, old in clashes.items() if old != new]
        raise InputError(f"the table already has column(s) {shown}"
                         + (f" ({'; '.join(cased)} differ only by case: one column for FITS "
                            "and most table tools)" if cased else "")
                         + "; pass on_conflict='suffix' or 'replace' (--on-conflict on the "
                         "command line) to add the new ones anyway")


def _add_columns(table, columns, on_conflict):
    """Add the columns of the table ``columns`` to ``table`` (in place) by the policy
    ``on_conflict`` (see `check_on_conflict`); return {new column name: name used}.
    Names are compared without regard to case (`check_clashes`): ``"replace"`` replaces
    ``OPT_LABEL`` by ``opt_label``, and a suffix is free in any case."""
    check_clashes(table, columns.colnames, on_conflict)
    have = _same_column(table, columns.colnames)
    suffix = ""
    if on_conflict == "suffix" and have:
        # one suffix for all the run's columns, free for each of them (a run's columns
        # stay together: morph_p_spiral_3 goes with morph_label_3, never with morph_label_2)
        k = 2
        while _same_column(table, [f"{name}_{k}" for name in columns.colnames]):
            k += 1
        suffix = f"_{k}"
    used = {}
    for name in columns.colnames:
        new, index = name + suffix, None  # None: appended
        old = have.get(name)
        if old is not None and on_conflict == "replace":
            index = table.colnames.index(old)  # the new column takes the old one's place
            table.remove_column(old)
        col = columns[name]
        if isinstance(table, QTable) and getattr(col, "unit", None) is not None:
            col = col.quantity if hasattr(col, "quantity") else col
        table.add_column(col, name=new, index=index)
        used[name] = new
    return used


#: The names the caller gave the images (path -> name), for a run that opens them by other
#: paths: `annotate_dask`'s partitions get them absolute, but record them as given.
RECORDED_IMAGE_NAMES = contextvars.ContextVar("astromorph_recorded_image_names", default={})
#: The files of the images that a whole `annotate_dask` call uses (their paths), recorded in
#: the provenance of each partition, which is sent only the tiles its sources can lie on;
#: None: those of the images the call reads.
RECORDED_IMAGE_FILES = contextvars.ContextVar("astromorph_recorded_image_files", default=None)
#: Where it holds a list (an `annotate_dask` partition), `annotate` appends how many rows of
#: its table have a usable position and size, how many of those lie on the images, and how
#: many of these on blank pixels (no finite pixel in a band's stamp): from which
#: `annotate_dask` says, for the whole table, that no source lies on the images, or that
#: none of those on the images lies on data (a partition without a usable position or size
#: can neither give nor contradict either).
PLACED = contextvars.ContextVar("astromorph_placed", default=None)
#: Where it holds a list (an `annotate_dask` partition), `annotate` appends to it the
#: ``"name: note"`` texts of its flux-unit warning (`_flux_units`), as ``(model name,
#: text)``, instead of giving it: `annotate_dask` gives one warning naming the images of all
#: the partitions.
FLUX_NOTED = contextvars.ContextVar("astromorph_flux_noted", default=None)


def _provenance(model, images=(), columns=(), crop_fraction=None):
    """Flat, FITS-friendly provenance keywords for table meta (``columns``: the names of
    the columns the run added; ``crop_fraction``: as given to `prepare`)."""
    meta = {
        "astromorph_version": __version__,
        "astromorph_model": model.name,
        "astromorph_model_version": str(model.version),
        "astromorph_model_sha256": model.sha256,
        "astromorph_model_precision": model.precision,
        "astromorph_providers": ",".join(model.providers),
        "astromorph_preprocessing": str(model.card["input"].get("preprocessing")),
    }
    if model_family(model.card) == "optical":  # the field the network saw
        from .preprocessing._optical import CROP_FRACTION

        meta["astromorph_crop_fraction"] = float(CROP_FRACTION if crop_fraction is None
                                                 else crop_fraction)
    if images:
        given = RECORDED_IMAGE_NAMES.get()
        names = RECORDED_IMAGE_FILES.get()
        names = {im.name.split("[")[0] for im in images} if names is None else names
        meta["astromorph_images"] = ",".join(sorted({given.get(n, n) for n in names}))
    if columns:
        meta["astromorph_columns"] = ",".join(columns)
    return meta


def add_provenance(meta, provenance):
    """Add a run's `_provenance` keys to table ``meta`` (in place).

    Those of an earlier run that differ (another model or variant, other images, other
    columns) are kept, renamed ``astromorph_run<k>_<key>`` (k = 1, 2... in the order of
    the runs), so that the columns already in the table keep their provenance.
    """
    earlier = {k: v for k, v in meta.items()
               if k.startswith("astromorph_") and not re.match(r"astromorph_run\d+_", k)}
    if earlier and earlier != provenance:
        k = 1
        while any(key.startswith(f"astromorph_run{k}_") for key in meta):
            k += 1
        for key, value in earlier.items():
            del meta[key]
            meta[f"astromorph_run{k}_{key[len('astromorph_'):]}"] = value
    meta.update(provenance)
