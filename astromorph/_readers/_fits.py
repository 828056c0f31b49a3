"""FITS stamps: a fast parser for simple images, astropy for the rest."""
import functools
import io
import os
import re
import warnings
import zipfile
import zlib
from lzma import LZMAError
from typing import NamedTuple

import numpy as np

from .._flags import Flag
from ._compressed import (COMPRESSIONS, LZW_MAGIC, UNCOMPRESS, ArchiveError, CorruptStream,
                          TruncatedStream, _stream_error, check_stream, compression_of,
                          decompress, first_bytes, open_stream)
from ._stamp import Stamp, common_pixel_scale, pixel_scales
from .._warnings import catch_warnings, first_few, warn
from ..exceptions import AstromorphWarning

__all__ = ["Beam", "HeaderFacts", "band_keyword", "band_of_header", "beam_of_header",
           "cut_header", "flux_unit_note", "header_facts", "inherited_primary", "normalise_band",
           "not_fits_start", "parse_fits_bytes", "read_fits", "read_fits_bytes",
           "repeated_scaling", "saturation_of_header", "stokes_i", "truncated_file",
           "unsigned_integers", "warn_flux_units"]

_MEMBERS = ("science", "reference", "difference")

#: EXTNAME (or plane name) -> triplet member index.
_TRIPLET_NAMES = {"SCIENCE": 0, "SCI": 0, "NEW": 0, "SEARCH": 0,
                  "REFERENCE": 1, "REF": 1, "TEMPLATE": 1, "TEMPL": 1, "TMPL": 1,
                  "DIFFERENCE": 2, "DIFF": 2, "DIF": 2}
#: HDUs that hold auxiliary planes, never a band.
#: (HSC: MASK, VARIANCE; HST drizzled: WHT, CTX; DES coadds: MSK, WGT; JWST i2d: ERR, CON,
#: WHT, VAR_POISSON, VAR_RNOISE, VAR_FLAT.)
_AUX_EXTNAMES = frozenset({"MASK", "MSK", "UNCERT", "UNCERTAINTY", "VARIANCE", "VAR", "WEIGHT",
                           "WHT", "WGT", "ERR", "ERROR", "DQ", "IVAR", "INVVAR", "SIGMA", "RMS",
                           "NOISE", "PSF", "BPM", "FLAGS", "EXPMAP", "EXPOSURE", "EXP", "NEXP",
                           "CTX", "CONTEXT", "CON", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT"})
_BAND_RE = re.compile(r"(?:^|[^a-z])([ugrizy])(?:$|[^a-z])")
#: ZTF's filter codes (IRSA products, file names).
_ZTF_CODES = {"zg": "g", "zr": "r", "zi": "i"}
#: Photometric systems whose band letters are not SDSS bands: Gaia's G spans 330-1050 nm.
_NOT_SDSS_RE = re.compile(r"gaia")
#: EXTNAMEs that name no band: generic image HDU names (and triplet roles, `_TRIPLET_NAMES`).
_GENERIC_EXTNAMES = frozenset({"PRIMARY", "IMAGE", "SCI", "DATA", "COMPRESSED_IMAGE"})

#: Header keywords of a photometric zero point (AB magnitude of one data unit), as DES, HSC,
#: ZTF and other pipelines write them; FLUXMAG0 (the flux of magnitude 0) is read as one too.
_ZERO_POINT_KEYS = ("MAGZERO", "MAGZP", "MAGZPT", "ZEROPT", "ZPTMAG", "PHOTZP", "ZP", "ZPT")
#: The zero point of SDSS nanomaggies, the unit the galaxy models' stretch is set for.
NANOMAGGY_ZERO_POINT = 22.5
_NANOMAGGIES = re.compile(r"nanomagg|nmgy", re.IGNORECASE)
_COUNTS = re.compile(r"\b(counts?|adu|dn|electrons?|e-|photons?)\b", re.IGNORECASE)

#: The first bytes of a FITS file (its SIMPLE card's keyword and value indicator), which
#: bytes that are to be FITS are compared with; those compared are shown where they differ.
_FITS_START = b"SIMPLE  ="
#: Files up to this size that hold a single simple HDU are parsed without astropy.
_FAST_MAX_BYTES = 16 << 20
#: Decompressed bytes of a large compressed file whose first bytes are not FITS, and not
#: within two bytes of `_FITS_START` either, read before it is refused as not FITS
#: (`check_stream`: a stream corrupt in them is said corrupt): a misnamed multi-GB
#: ``.tar.gz`` is not read to its end. One within two bytes of it, a FITS file that may be
#: corrupt in its first card (a bad CRC is found at the stream's end), is read through.
_NOT_FITS_READ_BYTES = 16 << 20
#: First bytes of the files that astropy opens and the compressions of `COMPRESSIONS` do not
#: name: a FITS header (astropy takes ``SIMPLE`` with its value out of place, warning) and
#: a Unix-compressed (``.Z``) file, which it reads with the optional package uncompresspy.
_ASTROPY_STARTS = (b"SIMPLE", LZW_MAGIC)


def normalise_band(name):
    """A one-letter band (``"g"``) from a filter name such as ``"SDSS g"``, ``"HSC-G"``,
    ``"g.MP9401"``, ``"SDSS/r"`` or ZTF's ``"zr"``: a lone letter u, g, r, i, z or y
    (no other letter beside it); the stripped name itself, in lower case, when there is no
    such letter (``"F606W"``: ``"f606w"``) or the name is of a system whose letters are not
    SDSS bands (``"Gaia G"``: ``"gaia g"``), ``None`` for an empty name. The one reader of
    band names, for annotate's images and for stamps."""
    if name is None:
        return None
    text = str(name).strip()
    if not text:
        return None
    low = text.lower()
    if low in _ZTF_CODES:
        return _ZTF_CODES[low]
    m = None if _NOT_SDSS_RE.search(low) else _BAND_RE.search(low)
    return m.group(1) if m else low


def inherited_primary(header, primary):
    """``primary``, the file's primary header, where an image extension's ``header`` may
    take keywords from it, else None: the FITS keyword inheritance convention, by which an
    extension whose header says ``INHERIT = F`` inherits none of the primary header's
    keywords (``INHERIT = T``, or no INHERIT keyword, lets it). The one rule of every reader
    here that falls back to the primary header (band, unit, saturation level, beam).

    A sloppy header's string or integer for the logical says no too: ``'F'``, ``'FALSE'``,
    ``'N'``, ``'NO'`` (any case) or 0; any other value inherits."""
    if primary is None or header is None:
        return primary
    return None if _says_no(header.get("INHERIT", None)) else primary


def _says_no(value):
    """Whether a FITS logical keyword's value is false: F, or as a sloppy header writes it
    (the string 'F', 'FALSE', 'N' or 'NO', the integer 0)."""
    if isinstance(value, (bool, np.bool_)):
        return not value
    if isinstance(value, (int, np.integer)):
        return value == 0
    return isinstance(value, str) and value.strip().upper() in ("F", "FALSE", "N", "NO")


def flux_unit_note(header, primary=None):
    """What a FITS header says of its pixel unit where that is not SDSS nanomaggies (zero point
    `NANOMAGGY_ZERO_POINT`), e.g. ``"BUNIT='count'"`` or ``"MAGZERO=30"``; None where it says
    nanomaggies or nothing recognisable (an unknown BUNIT such as 'nominal' is no claim).

    ``primary``: the file's primary header, whose keywords are read where ``header`` (an
    image extension) lacks them: HSC calexp files keep FLUXMAG0 there (not where the
    extension says ``INHERIT = F``, `inherited_primary`).
    """
    primary = inherited_primary(header, primary)
    if primary is not None:
        header = {k: header.get(k) if header.get(k) is not None else primary.get(k)
                  for k in ("BUNIT",) + _ZERO_POINT_KEYS + ("FLUXMAG0",)}

    bunit = str(header.get("BUNIT") or "").strip()
    if _NANOMAGGIES.search(bunit):
        return None
    if bunit and (_COUNTS.search(bunit) or _is_unit(bunit)):
        return f"BUNIT={bunit!r}"
    for key in _ZERO_POINT_KEYS + ("FLUXMAG0",):
        value = header.get(key)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            continue
        if key == "FLUXMAG0":
            if not value > 0:
                continue
            zp = 2.5 * np.log10(float(value))
            shown = f"FLUXMAG0={value:g} (zero point {zp:.4g})"
        else:
            zp, shown = float(value), f"{key}={value:g}"
        if np.isfinite(zp) and abs(zp - NANOMAGGY_ZERO_POINT) > 0.01:
            return shown
        return None  # the first zero point given is the one read
    return None


@functools.lru_cache(maxsize=256)
def _is_unit(text):
    """Whether astropy reads ``text`` (a BUNIT value) as a unit; cached, as the stamps of one
    table or archive repeat a few BUNIT values."""
    import astropy.units as u

    with catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)
        unit = u.Unit(text, parse_strict="silent")
    return not isinstance(unit, u.UnrecognizedUnit)


def warn_flux_units(model, noted):
    """Warn, once, of the images whose FITS header gives a unit or zero point other than
    the SDSS nanomaggies that the galaxy models' stretch is set for: ``noted`` holds
    ``"name: note"`` for each (`flux_unit_note`). Such images give black or saturated
    stamps and wrong classes without any flag. ``model``: the `Model`, or its name."""
    if noted:
        name = getattr(model, "name", model)
        warn(f"model {name!r} takes images in SDSS nanomaggies per pixel (AB zero point "
             f"{NANOMAGGY_ZERO_POINT:g}, 0.396 arcsec pixels), but the headers say otherwise: "
             f"{first_few(noted, '; ')}. The pixels are used as they are (no conversion), so the "
             "stamps may come out black or saturated and the classes be wrong without any flag: "
             f"convert them first, data * 10**(-0.4 * (zeropoint - {NANOMAGGY_ZERO_POINT:g})) "
             "* (0.396 / pixel_scale)**2 (docs/annotate.md), or ignore this warning if they are "
             "in nanomaggies already", AstromorphWarning)


def _two_files(offset, compression):
    """Reason for a file that holds FITS files one after the other (``cat a.fits b.fits``,
    or ``cat a.fits.gz b.fits.gz``: gzip members one after the other); ``compression``:
    that of the file (`compression_of`), or None."""
    joined = f"{compression}-compressed files joined with cat" if compression \
        else "files joined with cat"
    return (f"holds more than one FITS file: a second primary header (SIMPLE) starts at byte "
            f"{offset}{' of the uncompressed data' if compression else ''}, as in {joined}; not "
            "scored, since which image is meant is unknown: split the file")


def _card_value(raw):
    """Python value of a FITS card value field (text after ``= ``)."""
    raw = raw.strip()
    if raw.startswith("'"):
        out, i = [], 1
        while i < len(raw):
            c = raw[i]
            if c == "'":
                if raw[i + 1:i + 2] == "'":
                    out.append("'")
                    i += 2
                    continue
                break
            out.append(c)
            i += 1
        return "".join(out).rstrip()
    raw = raw.split("/", 1)[0].strip()
    if raw == "T":
        return True
    if raw == "F":
        return False
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw.replace("D", "E"))
    except ValueError:
        return raw


def _padded(nbytes):
    """``nbytes`` rounded up to whole 2880-byte FITS blocks: the space an HDU's data take."""
    return -(-nbytes // 2880) * 2880


def _buffer_reader(buf):
    """``read(offset, n)`` on bytes in memory (for `_read_header`)."""
    return lambda offset, n: buf[offset:offset + n]


def _parse_header(buf, start):
    """`_read_header` of the header at byte ``start`` of ``buf``: cards (key -> raw value
    text, first occurrence), keys in order, and the offset after the END block."""
    return _read_header(_buffer_reader(buf), start)


def _read_header(read, start):
    """`_parse_header` of a stream read by ``read(offset, n)`` (which returns up to ``n``
    bytes): cards, keys in order, and the offset after the END block. `ValueError` when
    the stream ends before an END card."""
    cards, keys = {}, []
    pos = start
    while True:
        block = read(pos, 2880)
        if len(block) < 2880:
            raise _HeaderCut(pos - start + len(block))
        pos += 2880
        for i in range(0, 2880, 80):
            key = block[i:i + 8].rstrip()
            if key == b"END":
                return cards, keys, pos
            if block[i + 8:i + 10] == b"= ":
                k = key.decode("ascii", "replace")
                keys.append(k)
                if k not in cards:
                    cards[k] = block[i + 10:i + 80].decode("ascii", "replace")
            elif key == b"HISTORY" and b"BMAJ=" in block[i + 8:i + 80]:
                # the AIPS beam card (`beam_of_header`): the last one is the beam in force
                cards["HISTORY"] = block[i + 8:i + 80].decode("ascii", "replace")


class _HeaderCut(ValueError):
    """A FITS stream that ends inside a header, after ``held`` bytes of it, without its END
    card (`_read_header`)."""

    def __init__(self, held):
        super().__init__(f"truncated FITS header ({held} bytes, no END card)")
        self.held = held


_FAST_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def _keyword(get, key):
    """``get(key)``; NaN for a card that astropy cannot parse (``CRVAL1 = NaN``: its
    `VerifyError`; wcslib reads such a card as absent, a zero)."""
    try:
        return get(key, None)
    except Exception as exc:  # noqa: BLE001 - astropy's VerifyError (imported only then)
        from astropy.io.fits.verify import VerifyError

        if isinstance(exc, VerifyError):
            return np.nan
        raise


def _linear_matrix(get, axes=(1, 2)):
    """The matrix (degrees per pixel on celestial axes) of the header read by ``get`` that
    turns pixel offsets along the axes ``axes`` (FITS numbers) into intermediate world
    coordinates, as wcslib reads it (PCi_j, where given, over CDi_j), and the keywords of
    each of its elements, as ``'CD1_1 = 0'``; `TypeError` or `ValueError` for a keyword
    that is no number."""
    def card(key, default):
        value = _keyword(get, key)
        if value is None:
            return default, f"{key} absent"
        value = float(value)
        return value, f"{key} = {value:g}"

    cd = [[f"CD{i}_{j}" for j in axes] for i in axes]
    pc = [[f"PC{i}_{j}" for j in axes] for i in axes]
    given = lambda keys: any(get(k, None) is not None for row in keys for k in row)  # noqa: E731
    if given(cd) and not given(pc):
        cards = [[card(k, 0.0) for k in row] for row in cd]
        return (np.array([[v for v, _ in row] for row in cards]),
                [[[s] for _, s in row] for row in cards])
    cards = [[card(k, float(i == j)) for j, k in enumerate(row)] for i, row in enumerate(pc)]
    cdelt = [card(f"CDELT{i}", 1.0) for i in axes]
    matrix = np.array([[cdelt[i][0] * v for v, _ in row] for i, row in enumerate(cards)])
    return matrix, [[[cdelt[i][1], s] for _, s in row] for i, row in enumerate(cards)]


def _point_problem(get, axes=(1, 2)):
    """Why the reference point (CRVALi, CRPIXi of the axes ``axes``) of the header read by
    ``get`` is no finite number, naming the keywords, or None (`wcs_matrix_problem`)."""
    point = []
    for key in [f"CRVAL{i}" for i in axes] + [f"CRPIX{i}" for i in axes]:
        try:
            value = float(_keyword(get, key) or 0.0)
        except (TypeError, ValueError):
            continue
        if not np.isfinite(value):
            point.append(f"{key} = {value:g}")
    if point:
        return f"{', '.join(point)}: a reference point that is not a finite number"
    return None


def _default_scale_problem(get, axes=(1, 2)):
    """Why the celestial axes ``axes`` (FITS numbers) of the header read by ``get`` have
    no pixel scale but FITS's default, naming the keywords, or None (`wcs_matrix_problem`).

    A header without a CD matrix whose CDELTi and PCi_j are all absent for an axis ``i``
    (CTYPE, CRVAL and CRPIX alone): wcslib silently takes CDELTi = 1 (degree per pixel).
    Absent elements of a CD matrix are zeros instead (a zero row, said by
    `wcs_matrix_problem`); PCi_j without CDELTi give the scale that PC holds.
    """
    absent = lambda key: _keyword(get, key) is None  # noqa: E731
    if not all(absent(f"CD{i}_{j}") for i in axes for j in axes):
        return None
    rows = [i for i in axes if absent(f"CDELT{i}") and all(absent(f"PC{i}_{j}") for j in axes)]
    if not rows:
        return None
    if len(rows) == len(axes):
        return (f"no {', '.join(f'CDELT{i}' for i in rows)}, CDi_j or PCi_j keyword: no pixel "
                "scale (wcslib silently takes FITS's default of 1 degree/pixel)")
    i = rows[0]
    return (f"no CDELT{i}, CDi_j or PC{i}_j keyword: world axis {i} gets no pixel scale "
            "(wcslib silently takes FITS's default of 1 degree/pixel)")


def wcs_matrix_problem(get, axes=(1, 2)):
    """Why the celestial axes ``axes`` (FITS numbers) of the WCS of a header read by
    ``get`` cannot place pixels on the sky, naming the keywords, or None.

    A reference point (CRVALi, CRPIXi) that is NaN or infinite, no pixel scale keyword at
    all (no CDELTi, CDi_j or PCi_j: `_default_scale_problem`), and a pixel scale matrix
    with a zero row or column (``CD1_1 = CD1_2 = 0``, ``CDELT1 = 0``), singular or not
    finite. wcslib refuses some of these, but silently repairs others: a CD matrix whose row
    and column of an axis are both zero (absent) gets 1 (degree per pixel) on its diagonal,
    as an axis without CDELTi does, a ``CRVAL1 = NaN`` card is read as 0; so the header's
    keywords are looked at, not astropy's WCS. Keywords that are text are left to the WCS
    parsers (None here).
    """
    point = _point_problem(get, axes) or _default_scale_problem(get, axes)
    if point:
        return point
    try:
        matrix, keys = _linear_matrix(get, axes)
    except (TypeError, ValueError):
        return None
    names = lambda cells: ", ".join(dict.fromkeys(k for c in cells for k in c))  # noqa: E731
    every = [[c[0] for row in keys for c in row]] + [c[1:] for row in keys for c in row]
    if not np.all(np.isfinite(matrix)):
        return f"{names(every)}: a non-finite pixel scale matrix"
    zero_rows, zero_cols = ~matrix.any(axis=1), ~matrix.any(axis=0)
    columns = list(zip(*keys))
    for what, zeros, cells in (("row", zero_rows, keys), ("column", zero_cols, columns)):
        for k in np.flatnonzero(zeros):
            zero = [[c for c in cell if c.endswith((" = 0", " = -0", " absent"))]
                    for cell in cells[k]]
            common = set.intersection(*(set(z) for z in zero))  # CDELT1 = 0 zeroes row 1
            shown = names([sorted(common)]) if common else names(zero)
            why = (f"world axis {axes[k]} gets no pixel scale" if what == "row" else
                   f"a step along pixel axis {axes[k]} goes nowhere on the sky")
            if zero_rows[k] and zero_cols[k] and len(keys[0][0]) == 1:  # a CD matrix
                why += "; wcslib silently fills in 1 degree/pixel there"
            return f"{shown}: the pixel scale matrix has a zero {what} ({why})"
    if np.linalg.det(matrix) == 0:
        return f"{names(every)}: a singular pixel scale matrix (determinant 0)"
    return None


#: Celestial axis pairs (longitude, latitude) whose keywords the fast parser reads.
_LON_LAT = {"RA--": "DEC-", "GLON": "GLAT", "ELON": "ELAT", "SLON": "SLAT", "HPLN": "HPLT"}
#: Projections that the fast parser reads: zenithal ones (native pole at the reference
#: point, where wcslib takes any LONPOLE and ignores LATPOLE) and some others, none of which
#: needs a PVi_m parameter.
_ZENITHAL = frozenset({"TAN", "SIN", "ARC", "STG", "ZEA"})
_PROJECTIONS = _ZENITHAL | {"CAR", "MER", "SFL", "AIT", "MOL", "PAR"}
#: WCS keywords of an axis (group 2 or 3: its number), which give wcslib its number of axes.
_AXIS_KEY = re.compile(r"^(?:(?:CTYPE|CUNIT|CRVAL|CDELT|CRPIX|CROTA)(\d+)"
                       r"|(?:PC|CD)(\d+)_(\d+)|P[VS](\d+)_\d+)$")
#: The first letters of the keywords of `_AXIS_KEY` and `_PROJECTION_KEY`.
_WCS_INITIALS = frozenset("CPAB")
#: Keywords of projection parameters and SIP polynomials (the fast parser reads no such WCS).
_PROJECTION_KEY = re.compile(r"^(?:P[VS]\d+_\d+|PROJP\d+|(?:A|B|AP|BP)_(?:ORDER|\d+_\d+))$")


def _finite_or_absent(get, key):
    """Whether keyword ``key`` is absent or a finite number (not a logical)."""
    value = get(key, None)
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                             and bool(np.isfinite(value)))


def _plain_wcs(get, keys):
    """``"none"`` for a header without any CTYPE keyword, ``"plain"`` for one whose WCS the
    fast parser reads as wcslib would (`_scale_from_cards`), else ``"astropy"``.

    Plain: CTYPE1 and CTYPE2 a longitude and the latitude of its frame, in that order
    (``RA---TAN``, ``DEC--TAN``) with one projection of `_PROJECTIONS`; no projection
    parameter or SIP keyword (`_PROJECTION_KEY`); a latitude CRVAL2 within +-90 degrees
    (wcslib refuses a zenithal projection's reference point beyond the pole); LONPOLE and
    LATPOLE absent, or finite numbers for a zenithal projection (which reads no LATPOLE);
    and any further axis (``NAXIS``, ``WCSAXES`` or a keyword such as ``CDELT3`` make one)
    absent of CTYPE or a ``STOKES`` or ``FREQ`` axis, without CUNIT (``Hz`` for FREQ),
    CROTA, PC or CD keywords, with a finite non-zero CDELT (wcslib refuses a singular
    matrix on any axis) and finite CRVAL and CRPIX. Everything else (an unknown
    projection ``RA---XYZ``, mismatched ``RA---TAN``/``GLAT-TAN``, a lone celestial axis,
    a celestial third axis, a spectral axis wcslib cannot read...) is left to astropy, so
    that an image is read alike whether it is a primary HDU or an extension.
    """
    numbers, projection = {}, False
    for key in keys:
        if key[:1] not in _WCS_INITIALS:  # (this runs for every stamp: most keys end here)
            continue
        m = _AXIS_KEY.match(key)
        if m:
            numbers[key] = max(int(n) for n in m.groups() if n is not None)
        projection = projection or _PROJECTION_KEY.match(key) is not None
    axes = max([2, *numbers.values()] + [v for v in (get("NAXIS", 0), get("WCSAXES", 0))
                                          if isinstance(v, int) and not isinstance(v, bool)])
    ctypes = [get(f"CTYPE{i}", None) for i in range(1, axes + 1)]
    if all(c is None for c in ctypes):
        return "none"
    c1, c2 = (c if isinstance(c, str) else "" for c in ctypes[:2])
    lon, lat = c1[:4], c2[:4]
    if not (len(c1) == len(c2) == 8 and _LON_LAT.get(lon) == lat and c1[4] == c2[4] == "-"
            and c1[5:] == c2[5:] and c1[5:] in _PROJECTIONS):
        return "astropy"
    if projection:
        return "astropy"
    crval2 = get("CRVAL2", None)
    if isinstance(crval2, (int, float)) and not isinstance(crval2, bool) and abs(crval2) > 90:
        return "astropy"
    for key in ("LONPOLE", "LATPOLE"):
        if get(key, None) is not None and (c1[5:] not in _ZENITHAL
                                           or not _finite_or_absent(get, key)):
            return "astropy"
    for i in range(3, axes + 1):
        ctype = ctypes[i - 1]
        if ctype not in (None, "STOKES", "FREQ"):
            return "astropy"
        if get(f"CUNIT{i}", None) not in ((None, "Hz") if ctype == "FREQ" else (None,)):
            return "astropy"
        if any(numbers[k] == i and k.startswith(("PC", "CD", "CROTA")) for k in numbers):
            return "astropy"
        cdelt = get(f"CDELT{i}", 1.0)
        if not all(_finite_or_absent(get, f"{k}{i}") for k in ("CRVAL", "CRPIX", "CDELT")) \
                or cdelt == 0:
            return "astropy"
    return "plain"


def _scale_from_cards(get, keys):
    """Pixel scale (arcsec; `pixel_scales`: a pair for pixels that are not square) from
    linear celestial WCS keywords of a header read by ``get`` whose keywords are ``keys``;
    None if not celestial or degenerate (`wcs_matrix_problem`); ``"astropy"`` when only a
    full WCS parse can tell (`_plain_wcs`: anything but a plain WCS, which wcslib may
    refuse, as it refuses ``RA---XYZ`` or ``CRVAL2 = 95``)."""
    plain = _plain_wcs(get, keys)
    if plain != "plain":
        return None if plain == "none" else "astropy"
    for k in ("CUNIT1", "CUNIT2"):
        unit = get(k, None)
        if unit is not None and str(unit).strip().lower() not in ("deg", "degree", "degrees", ""):
            return "astropy"
    try:
        cd, _ = _linear_matrix(get)
    except (TypeError, ValueError):
        # a keyword that is no number (CDELT1 = 'abc'): a malformed WCS gives no pixel
        # scale (Flag.NO_WCS, as for astropy's parse failures); no reason to drop the image
        return None
    # what `wcs_matrix_problem` checks, with the matrix read once (this runs for every cell
    # of a table of FITS bytes): a finite reference point, a scale not FITS's default, a
    # finite matrix without a zero row or column, a non-zero determinant
    with np.errstate(invalid="ignore"):
        det = np.linalg.det(cd)
    if not (np.isfinite(cd).all() and cd.any(axis=0).all() and cd.any(axis=1).all()
            and det != 0) or _point_problem(get) or _default_scale_problem(get):
        return None
    scale = pixel_scales(cd)
    return scale if np.all(np.isfinite(scale)) and np.all(np.asarray(scale) > 0) else None


def unsigned_integers(raw, bscale=1.0, bzero=0.0):
    """The unsigned integers (native ``uint16``, ``uint32``, ``uint64``) that the signed FITS
    integers ``raw`` stand for where the scaling is FITS's convention for them (BSCALE 1,
    BZERO ``2**(BITPIX-1)``), or None for any other scaling or pixel type: the sign bit
    flipped, exactly (through floats, ``raw + 2**63`` loses every value below 1024 in float64,
    ``raw + 2**31`` every one below 128 in float32)."""
    bits = raw.dtype.itemsize * 8
    if raw.dtype.kind != "i" or bscale != 1 or bzero != 2 ** (bits - 1):
        return None
    unsigned = raw.astype(raw.dtype.newbyteorder("=")).view(f"u{bits // 8}")
    return unsigned ^ np.array(1 << (bits - 1), unsigned.dtype)


def _physical(raw, bscale=1.0, bzero=0.0, blank=None):
    """Physical values of FITS data: BSCALE/BZERO applied, BLANK -> NaN; native float32.
    Values beyond the float32 range (float64 pixels of 1e300, a large BSCALE) become
    +-inf, missing pixels like the masking sentinels they are, without numpy's overflow
    warning."""
    with np.errstate(over="ignore"):
        if raw.dtype.kind in "iu":
            blank_mask = (raw == blank) if blank is not None else None
            unsigned = unsigned_integers(raw, bscale, bzero)
            if unsigned is not None:
                out = unsigned.astype(np.float32)
            elif bscale != 1 or bzero != 0:
                out = (raw.astype(np.float64) * bscale + bzero).astype(np.float32)
            else:
                out = raw.astype(np.float32)
            if blank_mask is not None and blank_mask.any():
                out[blank_mask] = np.nan
            return out
        out = raw.astype(np.float32)
        if bscale != 1 or bzero != 0:
            with np.errstate(invalid="ignore"):  # inf * 0 or inf - inf: NaN, missing too
                out = out * np.float32(bscale) + np.float32(bzero)
        return out


#: Header keywords that scale the pixels or mark the blank ones (`_physical`).
_SCALING_KEYS = ("BSCALE", "BZERO", "BLANK")


def repeated_scaling(header):
    """Words for a scaling keyword (BSCALE, BZERO, BLANK) that the astropy ``header`` gives
    more than once with different values, naming it and the values; None where each is given
    once, or repeated with one value. astropy scales the pixels by the last copy (and blanks
    those of the last BLANK) but gives the first as the header's value, without a word:
    which one is meant cannot be told, so every reader refuses such an image rather than
    guess."""
    for key in _SCALING_KEYS:
        if key in header and header.count(key) > 1:
            values = [_card_value(card.image[10:]) for card in header.cards
                      if card.keyword == key]
            if len(set(values)) > 1:
                shown = ", ".join(repr(v) for v in values)
                return (f"{key} is given {len(values)} times, with different values ({shown}): "
                        "which one applies cannot be told (astropy applies the last, its "
                        f"header gives the first); keep the one {key} card meant")
    return None


#: Pan-STARRS1's asinh compression constant, 2.5 log10(e).
_PS1_ALPHA = 2.5 * np.log10(np.e)


def linear_fluxes(values, get):
    """Pixel values of an image as linear fluxes: Pan-STARRS1 stack images (``BSOFTEN``
    and ``BOFFSET`` in the header) store ``alpha * asinh((L - BOFFSET) / (2 BSOFTEN))`` of
    the linear fluxes ``L`` (alpha = 2.5 log10(e)), undone here into a new float32 array;
    ``values`` themselves (no copy) for any other header."""
    soften, offset = get("BSOFTEN"), get("BOFFSET")
    if soften is None or offset is None:
        return values
    out = np.asarray(values, np.float32) / np.float32(_PS1_ALPHA)  # a new array
    with np.errstate(over="ignore"):  # beyond float32: inf, then a masking sentinel
        np.sinh(out, out=out)
    out *= np.float32(2 * float(soften))
    out += np.float32(float(offset))
    return out


def _fast_fits(buf, *, primary_only, want_scale):
    """Parse a simple FITS primary image without astropy.

    Returns ``(data, pixel_scale, get)`` or ``None`` when the file is not simple enough
    (extensions other than auxiliary ones, `_auxiliary_only`, unless ``primary_only``;
    a BITPIX or NAXIS it does not read, random groups, tile compression, a WCS that needs
    astropy): the caller then uses astropy. ``get(key, default=None)`` reads the primary
    header's values (parsed, `_card_value`); its ``keys()`` lists the keywords present.
    Raises `ValueError` for a truncated file (`_TruncatedData`: also where the primary
    image is whole but an HDU after it is not, or where its header is cut short,
    `cut_header`, with ``primary_only``).
    """
    cards, keys, end = _parse_header(buf, 0)
    if not keys or keys[0] != "SIMPLE" or _card_value(cards["SIMPLE"]) is not True:
        return None
    values = {}

    def get(key, default=None):
        if key not in values:
            values[key] = _card_value(cards[key]) if key in cards else default
        return values[key] if values[key] is not None else default

    if any(key in cards and keys.count(key) > 1 for key in _SCALING_KEYS):
        return None  # a scaling keyword given twice: astropy's reader says whether it differs
    bitpix, naxis = get("BITPIX"), get("NAXIS")
    if bitpix not in _FAST_DTYPES or not isinstance(naxis, int) or not 2 <= naxis <= 4 \
            or get("GROUPS") is True or "ZIMAGE" in cards:
        return None
    shape = [get(f"NAXIS{i}") for i in range(1, naxis + 1)]
    if not all(isinstance(s, int) and s > 0 for s in shape):
        return None
    count = int(np.prod(shape))
    nbytes = count * abs(bitpix) // 8
    padded = _padded(nbytes)
    if len(buf) < end + nbytes:
        raise _TruncatedData("HDU 0", nbytes, len(buf) - end)
    if primary_only and len(buf) > end + padded:
        # the extensions after it are not read (MASK, UNCERT, ...), but one that the stream
        # ends inside of (its data, or its header, without its END card) means a damaged
        # file, refused as `read_fits` refuses it
        truncated = truncated_data(_buffer_reader(buf), start=end + padded, first=1)
        if truncated:
            raise _TruncatedData(*truncated)
        cut = cut_header(_buffer_reader(buf), start=end + padded, first=1)
        if cut:
            raise ValueError(cut)
    if not primary_only and len(buf) > end + padded and not _auxiliary_only(buf, end + padded):
        # extensions (or another file, or bytes that are neither) follow: astropy looks at
        # each HDU, whatever EXTEND says (it reads a file's extensions without EXTEND = T,
        # as a larger file of it is read), unless they are all whole auxiliary ones
        return None
    scale = None
    if want_scale:
        scale = _scale_from_cards(get, cards)
        if scale == "astropy":
            return None
    raw = np.frombuffer(buf, dtype=_FAST_DTYPES[bitpix], count=count, offset=end)
    raw = raw.reshape(shape[::-1])
    data = linear_fluxes(_physical(raw, float(get("BSCALE", 1.0)), float(get("BZERO", 0.0)),
                                   get("BLANK") if bitpix > 0 else None), get)
    get.keys = cards.keys  # the keywords present (`header_facts` skips a header without any)
    return data, scale, get


def _auxiliary_only(buf, pos):
    """Whether the HDUs of ``buf`` from ``pos`` on are all soundly laid out extensions with
    an auxiliary EXTNAME (`_AUX_EXTNAMES`: the MASK and UNCERT of Rubin cutouts), which
    `read_fits` skips: the primary image is then the one image, as astropy would find.
    Each HDU is whole, its header (with its END card) and data, to the end of ``buf``."""
    for _ in range(_MAX_HDUS):
        if pos == len(buf):
            return True
        try:
            cards, keys, end = _parse_header(buf, pos)
        except ValueError:  # trailing bytes, a truncated header: astropy says what they are
            return False
        problem, size = _header_problem(cards, extension=True) if keys[:1] == ["XTENSION"] \
            else ("not an extension", None)
        name = str(_card_value(cards.get("EXTNAME", "''"))).strip().upper()
        pos = end + _padded(size) if not problem else None
        if problem or name not in _AUX_EXTNAMES or len(buf) < pos:
            return False
    return False


def _e_exponents(header):
    """``header``, or a copy of it whose number cards written with a D exponent
    (``CDELT1 = -2.5D-04``, as FITS allows) are rewritten with an E: wcslib reads such a
    card as its digits before the D (-2.5 degrees), astropy's header and the fast reader
    as the number it is. Such a card is rewritten as it stands, its D an E (formatted
    anew, a card whose comment fills it would be cut, with astropy's warning)."""
    from astropy.io.fits import Card, Header
    from astropy.io.fits.verify import VerifyWarning

    def value_part(card):  # (after the value indicator: a HIERARCH keyword runs past col 10)
        return card.image.partition("=")[2].partition("/")[0]

    def d_exponent(card):
        if "D" not in value_part(card).upper():
            return False
        try:
            value = card.value
        except Exception:  # noqa: BLE001 - an unparsable card: left to the WCS parsers
            return False
        return isinstance(value, float)

    def with_e(card):
        key, _, rest = card.image.partition("=")
        value, slash, comment = rest.partition("/")  # (a number: no quote)
        with catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)
            new = Card.fromstring(key + "=" + value.replace("D", "E").replace("d", "E")
                                  + slash + comment)
            try:
                if new.keyword == card.keyword and new.value == card.value:
                    return new
            except Exception:  # noqa: BLE001 - (not read back: formatted anew)
                pass
            return Card(card.keyword, card.value, card.comment)

    if not any(d_exponent(card) for card in header.cards):
        return header
    # a new Header of the cards (not insert and delete: astropy warns of the duplicate
    # keyword that an insertion makes for a moment, and of every repeated card)
    return Header([with_e(card) if d_exponent(card) else card
                   for card in header.copy().cards])  # (written with an E)


def _header_scale(header):
    """Pixel scale (arcsec; `pixel_scales`: a pair for pixels that are not square) of the
    celestial WCS of an astropy header, or None where it has none, a degenerate one
    (`wcs_matrix_problem`), one that astropy cannot parse, or no positive finite scale."""
    from astropy.wcs import WCS, FITSFixedWarning

    from .._cutouts import _check_wcs

    # a cube's header (three axes: the planes of a triplet or of bands) with a SIP or TPV
    # distortion: astropy refuses SIP beyond two axes and wcslib cannot take TPV's celestial
    # part, so its first two axes, where the sky is, are read alone (a broken third axis
    # without a distortion stays a header with no usable WCS)
    naxis = 2 if _axis_count(header) > 2 and _distorted(header) else None
    header = _e_exponents(header)
    with catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=naxis)
            axes = (wcs.wcs.lng + 1, wcs.wcs.lat + 1)
            if not wcs.has_celestial or wcs_matrix_problem(header.get, axes):
                return None  # (a degenerate matrix: wcslib may have made one up)
            # a scale keyword that is no number (CDELT1 = 'abc'), which wcslib drops for
            # its default: no pixel scale (TypeError or ValueError), as the fast parser has it
            _linear_matrix(header.get, axes)
            # (checks that the WCS can place pixels; its scale keywords were read above,
            # so CDELTi = 1 written out is 1 degree/pixel, not `_unset_scale_problem`);
            # `celestial` is a new WCS at each call (a copy of the whole WCS): built once
            celestial = wcs.celestial
            _check_wcs(celestial, "header")
            scale = pixel_scales(celestial.pixel_scale_matrix)
        except Exception:  # noqa: BLE001 - malformed WCS keywords: no usable WCS
            return None
    return scale if np.all(np.isfinite(scale)) and np.all(np.asarray(scale) > 0) else None


def _distorted(header):
    """Whether a header declares a SIP or TPV distortion, or projection parameters
    (`_PROJECTION_KEY`: PVi_m, SIP polynomials...)."""
    ctypes = " ".join(str(header.get(f"CTYPE{i}", "")) for i in (1, 2)).upper()
    return ("-SIP" in ctypes or "-TPV" in ctypes
            or any(_PROJECTION_KEY.match(key) for key in header.keys()))


def _axis_count(header):
    """The number of WCS axes a header declares (WCSAXES, else NAXIS), 0 if unreadable."""
    for key in ("WCSAXES", "NAXIS"):
        value = header.get(key)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
    return 0


# ----------------------------------------------------------------------------- diagnosis
_VALID_BITPIX = (8, 16, 32, 64, -32, -64)
_MAX_HDUS = 1000


def _shown(raw):
    """A card value as written in the header: ``'abc'`` for text, ``-64`` for numbers."""
    value = _card_value(raw)
    if isinstance(value, str) and raw.strip().startswith("'"):
        return f"'{value}'"
    return raw.split("/", 1)[0].strip() or "(empty)"


def _closed_string(raw):
    """Whether the card value field ``raw`` is a FITS string closed by its quote (``''``
    inside it a quote)."""
    raw = raw.strip()
    if not raw.startswith("'"):
        return False
    i = 1
    while i < len(raw):
        if raw[i] == "'":
            if raw[i + 1:i + 2] != "'":
                return True
            i += 1
        i += 1
    return False


def _header_problem(cards, extension):
    """Words for the first structural keyword of a header that no reader can use, or None;
    also the size in bytes of the HDU's data when the header is sound."""
    def whole(key, *, required=True, low=0, high=None, what=None):
        if key not in cards:
            return (f"no {key} keyword" if required else None), None
        raw = cards[key]
        value = _card_value(raw)
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{key} = {_shown(raw)} is not a whole number", None
        if value < low:
            return f"{key} = {_shown(raw)} is {'negative' if value < 0 else 'below ' + str(low)}" \
                f"{': ' + what if what else ''}", None
        if high is not None and value > high:
            return f"{key} = {_shown(raw)} is above {high}{': ' + what if what else ''}", None
        return None, value

    def axes(prefix):
        problem, bitpix = whole(f"{prefix}BITPIX", low=-64)
        if problem:
            return problem, None
        if bitpix not in _VALID_BITPIX:
            return (f"{prefix}BITPIX = {_shown(cards[prefix + 'BITPIX'])} is not a FITS pixel "
                    "type (8, 16, 32, 64, -32 or -64)"), None
        problem, naxis = whole(f"{prefix}NAXIS", high=999,
                               what="a FITS array has 0 to 999 axes")
        if problem:
            return problem, None
        lengths = []
        for i in range(1, naxis + 1):
            if f"{prefix}NAXIS{i}" not in cards:
                return (f"{prefix}NAXIS = {naxis} but there is no {prefix}NAXIS{i} keyword "
                        f"(an array of {naxis} axes needs {prefix}NAXIS1 to "
                        f"{prefix}NAXIS{naxis})"), None
            problem, n = whole(f"{prefix}NAXIS{i}", what="an axis length is 0 or more")
            if problem:
                return problem, None
            lengths.append(n)
        return None, (bitpix, lengths)

    if extension and "XTENSION" in cards and not _closed_string(cards["XTENSION"]):
        # (astropy: "Unparsable card (XTENSION)", the HDU read as corrupted: dropped from a
        # plain file, and in a compressed one the HDUs after it read from earlier bytes)
        raw = cards["XTENSION"].split("/", 1)[0].strip()
        return (f"XTENSION = {raw or '(empty)'} is "
                + ("a string without its closing quote" if raw.startswith("'")
                   else "not a string in quotes")), None
    problem, shape = axes("")
    if problem:
        return problem, None
    bitpix, lengths = shape
    pcount, gcount = 0, 1
    groups = bool(lengths) and lengths[0] == 0 and _card_value(cards.get("GROUPS", "F")) is True
    if extension or groups:
        for key, low in (("PCOUNT", 0), ("GCOUNT", 1 if extension else 0)):
            problem, value = whole(key, required=extension, low=low)
            if problem:
                return problem, None
            if key == "PCOUNT" and value is not None:
                pcount = value
            elif value is not None:
                gcount = value
    if _card_value(cards.get("ZIMAGE", "F")) is True:  # tile-compressed image
        problem, _ = axes("Z")
        if problem:
            return problem, None
    count = int(np.prod(lengths[1:] if groups else lengths, dtype=object)) if lengths else 0
    return None, abs(bitpix) // 8 * gcount * (pcount + count)


def _hdu_label(i, cards):
    """``"HDU 0 (primary)"``, ``"HDU i"``, or ``"HDU i, EXTNAME 'X'"`` for an extension of
    that name (``cards``: as `_read_header` gives them)."""
    name = _card_value(cards["EXTNAME"]) if "EXTNAME" in cards else None
    label = "HDU 0 (primary)" if i == 0 else f"HDU {i}"
    return f"{label}, EXTNAME {name!r}" if name and i else label


def malformed_header(read, max_hdus=_MAX_HDUS):
    """Words for a header keyword that makes a FITS stream unreadable, or None.

    ``read(offset, n)`` returns up to ``n`` bytes of the (uncompressed) stream. Walks the
    HDUs and checks the keywords that give the data's size and layout (BITPIX, NAXIS,
    NAXISn, PCOUNT, GCOUNT; ZBITPIX, ZNAXIS, ZNAXISn of tile-compressed images), so that a
    file astropy cannot open is described as an astronomer would: ``"HDU 0 (primary):
    NAXIS1 = 'abc' is not a whole number"`` rather than ``"unsupported operand type(s)"``.
    None when every header found is sound (the cause lies elsewhere, e.g. truncation).
    """
    pos = 0
    for i in range(max_hdus):
        try:
            cards, keys, pos = _read_header(read, pos)
        except ValueError:
            return None  # truncated, or the end of the stream: nothing to say here
        if keys[:1] != ["SIMPLE" if i == 0 else "XTENSION"]:
            return None  # not an HDU (trailing bytes): astropy's message says it
        problem, size = _header_problem(cards, extension=i > 0)
        if problem:
            return f"{_hdu_label(i, cards)}: {problem}"
        pos += _padded(size)
    return None


def truncated_data(read, max_hdus=_MAX_HDUS, *, start=0, first=0, malformed=None):
    """The first HDU of a FITS stream whose data run past its end, or None: ``(label, size,
    held)``, its `_hdu_label`, the bytes of data its header gives and the bytes that follow
    the header. ``read(offset, n)`` as for `malformed_header`, whose walk over the HDUs this
    is; None too where a header is malformed or cut short (that is said otherwise).
    ``start``: the byte at which the walk begins, that of HDU ``first`` (after HDUs already
    read whole); ``malformed``: a list to which the malformed header found is added, in the
    words of `malformed_header` (the same walk: a compressed stream is decompressed once)."""
    pos = start
    for i in range(first, max_hdus):
        try:
            cards, keys, pos = _read_header(read, pos)
        except ValueError:
            return None
        if keys[:1] != ["SIMPLE" if i == 0 else "XTENSION"]:
            return None
        problem, size = _header_problem(cards, extension=i > 0)
        if problem:
            if malformed is not None:
                malformed.append(f"{_hdu_label(i, cards)}: {problem}")
            return None
        held = 0
        while held < size:  # in pieces: a large HDU is not read into memory whole
            got = len(read(pos + held, min(size - held, 1 << 20)))
            if not got:
                break
            held += got
        if held < size:
            return _hdu_label(i, cards), size, held
        pos += _padded(size)
    return None


def cut_header(read, name=None, *, start=0, first=0):
    """The reason for a FITS stream that ends inside the header of an extension, without
    its END card, or None. astropy warns only that it could not validate that header
    ("There may be extra bytes after the last HDU") and drops the HDU (a MASK, a band): the
    reason says so, ``"truncated FITS file NAME: the header of HDU k ends after N bytes,
    without its END card"`` (``"truncated FITS data: ..."`` where ``name`` is None).
    ``read(offset, n)`` as for `malformed_header`, whose walk over the HDUs this is, their
    data skipped (not read); None too where the bytes after the last whole HDU begin no
    header (not ``XTENSION``: trailing bytes, astropy's warning stands), where a header is
    malformed (said otherwise) or where the stream ends inside an HDU's data
    (`truncated_data`). ``start``: the byte at which the walk begins, that of HDU
    ``first`` (after HDUs already read)."""
    pos = start
    for i in range(first, _MAX_HDUS):
        if i and read(pos, 8) != b"XTENSION":
            return None
        try:
            cards, keys, pos = _read_header(read, pos)
        except _HeaderCut as exc:
            if not i:
                return None  # (a primary header cut short: astropy cannot open the file)
            where = f"file {name}" if name else "data"
            return (f"truncated FITS {where}: the header of HDU {i} ends after {exc.held} "
                    "bytes, without its END card")
        if keys[:1] != ["SIMPLE" if i == 0 else "XTENSION"]:
            return None
        problem, size = _header_problem(cards, extension=i > 0)
        if problem:
            return None
        pos += _padded(size)
    return None


def truncated_file(path, name=None, *, malformed=None):
    """The reason (`_truncated`) for the FITS file ``path``, compressed or not (gzip, bzip2,
    xz, the one file of a zip archive), whose stream ends inside the data of one of its HDUs
    (`truncated_data`), or None. ``name``: the file's name in the reason (``path`` where
    None). astropy does not read the data of the HDUs it skips (a MASK, UNCERT), nor warn of
    a compressed stream that ends inside them (it knows no size of one): this walk through
    the stream, one decompression of it, says so, and a compressed stream found corrupt
    (its CRC check failed, bad data) to its end, where it was read (a header damaged by it
    stops the walk), is said corrupt; one that ends before its end marker after whole HDUs
    (cut in the padding of the last, or in a header) is said truncated (`TruncatedStream`),
    as `decompress` says of a small file. ``malformed``: as for `truncated_data`. Raises
    `OSError`, or `ArchiveError` for a zip archive not of one file."""
    read, close, _ = _file_reader(path)
    try:
        truncated = truncated_data(read, malformed=malformed)
        if not truncated:  # (a walk that stopped early: bytes that are no header)
            read.drain()
    finally:
        close()
    name = os.fspath(path) if name is None else name
    if read.corrupt:  # the stream ends there as a cut one does, but is not cut
        return read.corrupt_reason(name)
    if truncated:
        return _truncated(*truncated, name)
    if read.cut:  # every HDU whole, the stream cut after them (in the padding, its end)
        return TruncatedStream(read.compression, read.cut).reason(name)
    return None


class _TruncatedData(ValueError):
    """A FITS stream that ends inside the data of its HDU ``label`` (``size`` bytes by its
    header, ``held`` in the stream), in the words of `_truncated`."""

    def __init__(self, label, size, held):
        super().__init__(_truncated(label, size, held))
        self.parts = (label, size, held)


def _truncated(label, size, held, name=None):
    """The reason for a FITS stream whose HDU ``label`` has ``size`` bytes of data by its
    header and ``held`` in the stream (`truncated_data`); ``name``: the file's name."""
    where = f"file {name}" if name else "data"
    return (f"truncated FITS {where}: the header of {label} gives {size} bytes of data, the "
            f"{'file holds' if name else 'bytes hold'} {held}")


def _malformed(problem, name=None):
    """The reason for a FITS stream with a malformed header (``problem``, from
    `malformed_header`); ``name``: the file's name, where there is a file."""
    return f"malformed FITS header in {name + ' ' if name else ''}{problem}"


class _StreamReader:
    """``read(offset, n)`` on the open (decompressed) file ``f`` of a FITS file compressed
    as ``compression`` (None: not compressed): the bytes, fewer at the end of the stream,
    none past it or where it cannot be read. ``corrupt``: the decompressor's words where a
    compressed stream was found corrupt (a bad CRC, bad deflate data), not cut short (its
    end marker missing: `EOFError`), else None; said by `corrupt_reason`. ``cut``: the
    decompressor's words where the stream ended before its end marker, else None; the
    bytes before the cut are read too (`_before_cut`), as `decompress` holds them, so that
    a stream cut inside an HDU's data is said to hold as many of them on every path."""

    def __init__(self, f, compression):
        self.f, self.compression, self.corrupt, self.cut = f, compression, None, None
        self._end = None  # (where the stream is cut: nothing is read from there)

    def corrupt_reason(self, name=None):
        """The reason for the corrupt stream (``"corrupt gzip stream in FITS file x.fits.gz:
        CRC check failed ..."``), as a small file's is worded (`_archive_reason`) where
        `decompress` finds the same (bad data, a gzip file failing its CRC or length check,
        bytes after its last stream); ``name``: the file's name, where there is a file."""
        return CorruptStream(self.compression, self.corrupt).reason(name)

    def __call__(self, offset, n):
        if self.corrupt is not None:  # never read on: a bzip2 decompressor fed after its
            return b""  # error can crash the interpreter (libbz2: stack smashing)
        if self._end is not None and offset >= self._end:
            return b""
        try:
            self.f.seek(offset)
            return self.f.read(n)
        except EOFError as exc:  # the stream ends before its end marker: truncated
            if self.compression and self.cut is None:
                self.cut = str(exc) or type(exc).__name__
            return self._before_cut(offset, n)
        except (OSError, ValueError, zlib.error, LZMAError, zipfile.BadZipFile) as exc:
            if self.compression and self.corrupt is None:
                # in `decompress`'s words (`_stream_error`): a bad CRC, bad data, bytes after
                # the last member (gzip's "Not a gzipped file") or stream: `TrailingBytes`
                error = _stream_error(self.compression, exc)
                self.corrupt = error.detail if isinstance(error, CorruptStream) \
                    else str(exc) or type(exc).__name__
            return b""  # (the stream ends there: said as corrupt, not as cut)

    def _before_cut(self, offset, n):
        """Up to ``n`` bytes from ``offset`` of a stream found cut short by a read from there
        (a buffered reader drops the bytes it held before the error): read again in
        pieces of one decompression each (``read1``), from the start where the reader
        cannot seek back otherwise; where the stream ends is kept, not read again."""
        parts, got = [], 0
        try:
            self.f.seek(offset)
            while got < n and (part := self.f.read1(n - got)):
                parts.append(part)
                got += len(part)
        except EOFError:
            self._end = offset + got
        except (OSError, ValueError, AttributeError, zlib.error, LZMAError,
                zipfile.BadZipFile) as exc:  # (said as corrupt, where it is: never read on)
            if self.compression and isinstance(exc, (zlib.error, LZMAError)):
                self.corrupt = _stream_error(self.compression, exc).detail  # (bad data)
            return b""
        return b"".join(parts)

    def drain(self):
        """Read a compressed stream on to its end from where it stands (its decompressor
        checks its CRC there), ``corrupt`` saying what was found corrupt."""
        if not self.compression:
            return
        try:
            position = self.f.tell()
        except (OSError, ValueError):  # (a stream that cannot say: left as it is)
            return
        while True:
            got = len(self(position, 1 << 22))
            if not got:
                return
            position += got


def _file_reader(path):
    """``read(offset, n)`` on a FITS file, decompressing a compressed one (gzip, bzip2, xz,
    the one file of a zip archive: `open_stream`; a `_StreamReader`, whose ``corrupt``
    says where its stream was found corrupt); its closer; and its compression or None.
    Raises `OSError`, or `ArchiveError` for a zip archive not of one file."""
    f, compression = open_stream(path)
    return _StreamReader(f, compression), f.close, compression


def _unreadable(exc, read, name=None):
    """The reason for a FITS stream astropy could not read: the malformed keyword in words
    when there is one (with astropy's exception after it), the HDU whose data the stream
    ends inside of (`truncated_data`), else astropy's message."""
    said = f"{type(exc).__name__}: {exc}"
    try:
        problem = malformed_header(read)
    except Exception:  # noqa: BLE001 - the diagnosis must never hide the original error
        problem = None
    if problem:  # (an error of ours, `_OwnWords`: no astropy words to add)
        return _malformed(problem, name) + ("" if isinstance(exc, _OwnWords)
                                            else f" (astropy: {said})")
    try:
        truncated = truncated_data(read)
    except Exception:  # noqa: BLE001 - as above
        truncated = None
    if getattr(read, "corrupt", None):  # a compressed stream found corrupt
        return read.corrupt_reason(name)
    if truncated:  # astropy says "buffer is too small for requested array" at best
        return _truncated(*truncated, name)
    if isinstance(exc, (OSError, ValueError)):  # astropy's own words, e.g. missing END card
        return f"cannot read FITS: {exc}"
    return f"cannot read FITS: {said}"  # a bare KeyError says only 'NAXIS3'


def _hdu_data(hdu):
    """Physical data of an image HDU opened with ``do_not_scale_image_data``.

    A tile-compressed HDU (`~astropy.io.fits.CompImageHDU`) so opened gives its raw
    integers as well, scaled here by the BSCALE/BZERO/BLANK of its image header; the
    asinh-compressed pixels of Pan-STARRS1 stacks are made linear (`linear_fluxes`).
    """
    raw = hdu.data
    h = hdu.header
    blank = h.get("BLANK") if raw.dtype.kind in "iu" else None
    return linear_fluxes(
        _physical(raw, float(h.get("BSCALE", 1.0)), float(h.get("BZERO", 0.0)), blank), h.get)


def _quantisation_steps(hdu, bscale):
    """The quantisation of a lossily tile-compressed float HDU (fpack's default): ``(tile,
    steps)``, the tile shape (numpy's axis order: ``(rows, columns)`` of a 2-D image) and
    the step (ZSCALE, times ``|bscale|``: in the units of the pixels) of each tile, an array
    over the grid of tiles (0 for a tile stored without loss, in its GZIP_COMPRESSED_DATA);
    None for any other HDU (no quantisation: its values are those written) and for
    asinh-compressed pixels (BSOFTEN: made linear, `linear_fluxes`, their steps are no
    longer those of the file). What `SkyImage.quantisation` (annotate) and `Stamp.quantum`
    (`_plane_steps`: predict_files) are read from."""
    from astropy.io import fits

    if not isinstance(hdu, fits.CompImageHDU) or "BSOFTEN" in hdu.header:
        return None
    try:
        table = hdu.compressed_data
        names = [] if table is None else [c.upper() for c in table.columns.names]
        shape = tuple(int(n) for n in hdu.shape)
        tile = tuple(int(t) for t in hdu.tile_shape)
        grid = tuple(-(-n // t) for n, t in zip(shape, tile))
        if "ZSCALE" in names:
            steps = np.array(table.field("ZSCALE"), dtype=np.float64).reshape(grid)
        elif "ZSCALE" in hdu._bintable.header:  # one scale for every tile
            steps = np.full(grid, float(hdu._bintable.header["ZSCALE"]))
        else:
            return None
        if "GZIP_COMPRESSED_DATA" in names:  # tiles that could not be quantised
            column = table.field("GZIP_COMPRESSED_DATA")
            if isinstance(column, np.ndarray) and column.dtype.kind in "iu" \
                    and column.ndim == 2:  # the raw descriptors: (bytes, offset)
                lossless = column[:, 0] > 0
            else:
                lossless = np.array([len(c) > 0 for c in column])
            steps[lossless.reshape(grid)] = 0.0
    except Exception:  # noqa: BLE001 - unknown quantisation: the values as they are
        return None
    steps = np.abs(np.nan_to_num(steps, nan=0.0, posinf=0.0, neginf=0.0)) * abs(bscale)
    return (tile, steps) if steps.any() else None


def _tile_steps(hdu, shape, bscale=None):
    """The quantisation (`_quantisation_steps`) of the data of ``hdu``, of ``shape`` as
    astropy reads it (a 2-D image, a cube, a stack of stamps), plane by plane: ``(tile,
    steps)``, the ``(rows, columns)`` of a tile within a plane (the last two axes) and the
    step of each tile a plane lies in, of shape ``shape[:-2]`` followed by the plane's grid
    of tiles (a plane of a cube lies in the tiles of its index along each leading axis), so
    that `stokes_i` and `_squeeze` reduce it as they do the data; None where the pixels are
    as written. ``bscale``: the header's BSCALE where not given."""
    if bscale is None:
        bscale = float(hdu.header.get("BSCALE", 1.0))
    q = _quantisation_steps(hdu, bscale)
    if q is None or len(shape) < 2:
        return None
    tile, steps = q
    lead = [np.arange(n) // t for n, t in zip(shape[:-2], tile[:-2])]
    return tuple(tile[-2:]), np.asarray(steps[np.ix_(*lead)] if lead else steps)


def _plane_steps(hdu, shape):
    """Per plane (2-D image) of the data of ``hdu``, of ``shape`` as astropy reads it (a
    cube, a stack of stamps), the largest quantisation step of the tiles it lies in
    (`_tile_steps`; a flat plane reads back as values up to that far apart), as a
    read-only view of ``shape`` that `stokes_i` and `_squeeze` reduce as they do the data
    (the value of a plane read at ``[..., 0, 0]``); None where the pixels are as written."""
    q = _tile_steps(hdu, shape)
    if q is None:
        return None
    per_plane = q[1].max(axis=(-2, -1))  # (the grid of tiles of each plane)
    return np.broadcast_to(per_plane[..., None, None], shape)


def _image_quantisation(hdu, bscale, plane_shape):
    """`SkyImage.quantisation` of the image that `astromorph._images._plane` reads from
    ``hdu`` (its Stokes I plane, its degenerate axes dropped), of ``plane_shape``: ``(tile,
    steps)`` of that plane's tiles (`_tile_steps`, reduced by `stokes_i` and `_squeeze` as
    the data are), where ``bscale`` scales the pixels; None where they are as written, or
    where the image is not a plane of the last two axes of the HDU."""
    from astropy.io import fits

    if not isinstance(hdu, fits.CompImageHDU):  # (no quantisation; its shape left unread)
        return None
    shape = tuple(int(n) for n in hdu.shape)
    q = _tile_steps(hdu, shape, bscale)
    if q is None or tuple(plane_shape) != shape[-2:]:
        return None
    tile, steps = q
    if steps.ndim > 2:
        steps, why = stokes_i(steps, hdu.header.get)
        if why:
            return None
        steps = _squeeze(steps)
    return (tile, steps) if steps.ndim == 2 else None


def _is_auxiliary(hdu):
    """Whether an astropy HDU is named as an auxiliary plane (`_AUX_EXTNAMES`), never an
    image to score."""
    return str(hdu.name).strip().upper() in _AUX_EXTNAMES


def _has_image_data(hdu):
    """Whether an astropy HDU is an image HDU with axes and data (an axis of length 0, which
    astropy reads as an empty array, holds none: no image to score)."""
    return bool(hdu.is_image and hdu.header.get("NAXIS", 0) and hdu.data is not None
                and hdu.data.size)


def _in_hdu(i, reason):
    """``reason`` about HDU ``i``, prefixed ``"HDU i: "`` where it is an extension."""
    return f"HDU {i}: {reason}" if i else reason


def _squeeze(data):
    """``data`` without its leading axes of length 1, down to 2-D (a view)."""
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    return data


def _plane_names(header, n):
    """Per-plane names of a cube from BANDi / FILTERi / PLANEi / EXTNAMEi keywords (the
    first of these stems that names any plane), and that keyword as ``"PLANEi"`` (None
    where none names a plane)."""
    for stem in ("BAND", "FILTER", "PLANE", "EXTNAME"):
        names = [header.get(f"{stem}{i}") for i in range(1, n + 1)]
        if any(names):
            return [None if v is None else str(v) for v in names], f"{stem}i"
    return [None] * n, None


def _triplet_order(names):
    """Member indices of triplet-like names (None for others)."""
    return [_TRIPLET_NAMES.get(str(n).strip().upper()) if n is not None else None
            for n in names]


def _is_triplet(order, triplet_hint):
    """Whether planes of these triplet member indices (`_triplet_order`) are read as a
    triplet: two roles named, or one where ``triplet_hint`` (a triplet model) says so."""
    roles = {o for o in order if o is not None}
    return len(roles) >= 2 or bool(triplet_hint and roles)


#: Header keywords that name a band, in the order read; a pair (FILTER1, FILTER2) is two
#: filter wheels (HST ACS, WFPC2), of which the one not CLEAR names the band.
BAND_KEYS = ("BAND", "FILTER", ("FILTNAM1", "FILTNAM2"), ("FILTER1", "FILTER2"), "FILTNAME")


_BAND_KEY_NAMES = frozenset(k for key in BAND_KEYS
                            for k in (key if isinstance(key, tuple) else (key,)))


def band_keyword(header, primary=None):
    """The text of the first band keyword (`BAND_KEYS`) of a FITS header, else None.

    ``primary``: the file's primary header, read where ``header`` (an image extension)
    has no band keyword: HSC calexp and HST drizzled files keep FILTER there and the
    image in an extension (astropy does not inherit primary keywords); not where the
    extension says ``INHERIT = F`` (`inherited_primary`).
    """
    for h in (header, inherited_primary(header, primary)):
        keys = getattr(h, "keys", None)  # a header that tells its keywords: none of them
        if h is None or (keys is not None and _BAND_KEY_NAMES.isdisjoint(keys())):
            continue
        for key in BAND_KEYS:
            given = [v for v in (str(h.get(k) or "").strip()
                                 for k in (key if isinstance(key, tuple) else (key,))) if v]
            if given:  # the first filter that is not CLEAR, else the first given
                return next((v for v in given if not v.upper().startswith("CLEAR")), given[0])
    return None


def band_of_header(header, primary=None):
    """The band (`normalise_band`) that a FITS header names, else None: its band keywords
    (`band_keyword`), else its EXTNAME (``"G"``, ``"R"``: one extension per band; not a
    generic name such as IMAGE or SCI, nor a triplet role), else the band keywords of
    ``primary``, the file's primary header (HSC calexp, HST drizzled files), unless the
    extension says ``INHERIT = F`` (`inherited_primary`)."""
    primary = inherited_primary(header, primary)
    value = band_keyword(header)
    if value:
        return normalise_band(value)
    name = str(header.get("EXTNAME") or "").strip().upper()
    if name and name not in _GENERIC_EXTNAMES and name not in _TRIPLET_NAMES:
        return normalise_band(name)
    return normalise_band(band_keyword(primary)) if primary is not None else None


#: Values of a FITS STOKES axis (Greisen & Calabretta 2002, AIPS memo 114).
_STOKES_NAMES = {1: "I", 2: "Q", 3: "U", 4: "V", 5: "PPOL", 6: "FPOL", 7: "PANG", 8: "SPINDEX",
                 -1: "RR", -2: "LL", -3: "RL", -4: "LR", -5: "XX", -6: "YY", -7: "XY",
                 -8: "YX"}


def stokes_i(data, get):
    """``data`` (FITS axis order reversed, as astropy reads it) with its STOKES axis, if it
    has one, reduced to the Stokes I plane (kept with length 1).

    ``get(key, default)`` reads the header (``CTYPEn``, ``CRVALn``, ``CRPIXn`` and
    ``CDn_n`` or ``CDELTn`` x ``PCn_n``). Returns ``(data, None)``, or ``(None, reason)``
    when the STOKES axis holds no I plane (a polarisation image is never total intensity).
    Data without a STOKES axis, or whose axis values cannot be read, are returned as they
    are.
    """
    for k in range(1, data.ndim + 1):
        if str(get(f"CTYPE{k}", "") or "").strip().upper() == "STOKES":
            break
    else:
        return data, None
    axis = data.ndim - k
    try:
        crval, crpix = float(get(f"CRVAL{k}", 1.0)), float(get(f"CRPIX{k}", 1.0))
        step = get(f"CD{k}_{k}", None)  # the axis's increment: CDk_k, or CDELTk x PCk_k
        step = float(get(f"CDELT{k}", 1.0)) * float(get(f"PC{k}_{k}", 1.0)) if step is None \
            else float(step)
        values = np.rint(crval + (np.arange(1, data.shape[axis] + 1) - crpix) * step)
        values = values.astype(int)
    except (TypeError, ValueError, OverflowError):
        return data, None
    if 1 in values:  # a view (a memory-mapped mosaic stays mapped)
        i = int(np.flatnonzero(values == 1)[0])
        return data[(slice(None),) * axis + (slice(i, i + 1),)], None
    held = ", ".join(_STOKES_NAMES.get(int(v), str(int(v))) for v in values)
    return None, (f"its STOKES axis (axis {k}) holds Stokes {held}: no Stokes I (total "
                  "intensity) plane to score")


#: The restoring beam of the AIPS history convention, ``HISTORY AIPS   CLEAN BMAJ=  1.2500E-02
#: BMIN= ...`` (degrees), written by AIPS tasks that keep no BMAJ keyword.
_AIPS_BMAJ = re.compile(r"BMAJ=\s*([-+]?[0-9.]+(?:[EeDd][-+]?[0-9]+)?)")
#: BMIN (degrees) and BPA (degrees) of the same card.
_AIPS_BMIN = re.compile(r"BMIN=\s*([-+]?[0-9.]+(?:[EeDd][-+]?[0-9]+)?)")
_AIPS_BPA = re.compile(r"BPA=\s*([-+]?[0-9.]+(?:[EeDd][-+]?[0-9]+)?)")


class Beam(float):
    """A restoring beam: the FWHM of its major axis in arcsec (the float itself, as
    `beam_of_header` always gave it), with ``minor`` (FWHM in arcsec; the major axis where
    the header gives none: a circular beam), ``pa`` (position angle of the major axis in
    degrees east of north, BPA; 0 where unknown) and ``angle``: that position angle on the
    image's pixel axes, in degrees from the +y axis (rows increasing) towards -x, which is
    ``pa`` for an image with north up and east left, as the header's WCS orients it."""

    def __new__(cls, major, minor=None, pa=0.0, angle=None):
        beam = super().__new__(cls, major)
        beam.minor = float(major) if minor is None else float(minor)
        beam.pa = float(pa)
        beam.angle = beam.pa if angle is None else float(angle)
        return beam

    def __reduce__(self):
        return (Beam, (float(self), self.minor, self.pa, self.angle))


def _aips_value(get, pattern):
    """The value of ``pattern`` (a ``KEY=`` number) in the last AIPS HISTORY card that
    holds it, as a string, or None."""
    history = get("HISTORY", None) or ()
    cards = [history] if isinstance(history, str) else list(history)
    found = [m for card in cards if "AIPS" in str(card) for m in pattern.findall(str(card))]
    return found[-1].upper().replace("D", "E") if found else None


def _positive(value, factor=3600.0):
    """``value`` times ``factor`` as a float if a positive finite number, else None."""
    try:
        x = float(value) * factor if not isinstance(value, bool) else np.nan
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) and x > 0 else None


def _pa_on_pixels(get, pa):
    """The position angle ``pa`` (degrees east of north) on the pixel axes of the image
    whose WCS keywords ``get`` reads (PC and CDELT, else CD, else CDELT and CROTA2; axes 1
    and 2 celestial, longitude first), in degrees from +y towards -x, once pixels that are
    not square are made square as the resampling to the FIRST grid makes them (each axis
    by its own scale, `pixel_scales`), where the beam is smoothed; ``pa`` itself where the
    keywords give no invertible matrix."""
    def num(key, default):
        value = get(key, default)
        return float(value) if isinstance(value, (int, float, np.number)) and \
            not isinstance(value, bool) else default
    has_pc = any(get(k, None) is not None for k in ("PC1_1", "PC1_2", "PC2_1", "PC2_2"))
    if not has_pc and any(get(k, None) is not None for k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2")):
        m = np.array([[num("CD1_1", 0.0), num("CD1_2", 0.0)],
                      [num("CD2_1", 0.0), num("CD2_2", 0.0)]])
    else:  # PC over CD where a header gives both, as wcslib and the pixel scale read it
        d1, d2 = num("CDELT1", 1.0), num("CDELT2", 1.0)
        if has_pc:
            pc = np.array([[num("PC1_1", 1.0), num("PC1_2", 0.0)],
                           [num("PC2_1", 0.0), num("PC2_2", 1.0)]])
        else:
            rho = np.radians(num("CROTA2", 0.0))
            pc = np.array([[np.cos(rho), -np.sin(rho) * d2 / d1],
                           [np.sin(rho) * d1 / d2, np.cos(rho)]])
        m = np.array([[d1], [d2]]) * pc
    ctype1 = str(get("CTYPE1", "") or "").upper()
    if ctype1.startswith(("DEC", "GLAT", "ELAT", "SLAT")):  # latitude first: swap rows
        m = m[::-1]
    t = np.radians(pa)
    try:  # the major axis's direction (east, north) in pixels (x, y)
        ux, uy = np.linalg.solve(m, [np.sin(t), np.cos(t)])
    except np.linalg.LinAlgError:
        return float(pa)
    if not (np.isfinite(ux) and np.isfinite(uy)) or ux == uy == 0:
        return float(pa)
    scale = pixel_scales(m)  # (scale_y, scale_x) where not square: arcsec along each axis
    if isinstance(scale, tuple) and all(np.isfinite(scale)):
        ux, uy = ux * scale[1], uy * scale[0]
    return float(np.degrees(np.arctan2(-ux, uy)))


def beam_of_header(get):
    """Restoring beam from a header, or None: a `Beam`, the FWHM of its major axis in
    arcsec (a float), with its minor axis and position angle.

    ``get(key, default)`` reads the header: ``BMAJ``, ``BMIN``, ``BPA`` (degrees, the FITS
    standard), else the last ``HISTORY AIPS CLEAN BMAJ= BMIN= BPA=`` card (degrees). None
    when neither gives BMAJ or its value is not a positive finite number: nothing is
    assumed. Without BMIN the beam is taken circular, without BPA at position angle 0.
    """
    keyword = get("BMAJ", None) is not None
    major = _positive(get("BMAJ", None) if keyword else _aips_value(get, _AIPS_BMAJ))
    if major is None:
        return None
    minor = _positive(get("BMIN", None) if keyword else _aips_value(get, _AIPS_BMIN))
    value = get("BPA", None) if keyword else _aips_value(get, _AIPS_BPA)
    try:
        pa = float(value) if value is not None and not isinstance(value, bool) else 0.0
    except (TypeError, ValueError):
        pa = 0.0
    pa = pa if np.isfinite(pa) else 0.0
    minor = major if minor is None else min(minor, major)
    return Beam(major, minor, pa, _pa_on_pixels(get, pa))


#: Header keywords of the detector saturation level, in the pixels' unit: ZTF, DECam/DES, PS1
#: and others write SATURATE, DECam also SATURATA and SATURATB (one per amplifier), some
#: pipelines SATLEVEL.
_SATURATION_KEYS = ("SATURATE", "SATURATA", "SATURATB", "SATLEVEL")


def saturation_of_header(header, primary=None):
    """Saturation level of the pixels from a FITS header (`Flag.SATURATED`), or None.

    The smallest of the positive finite numbers among ``SATURATE``, ``SATURATA``,
    ``SATURATB`` and ``SATLEVEL`` (a DECam image's fainter amplifier saturates first);
    where ``header`` (an image extension) gives none, those of ``primary``, the file's
    primary header, as for the band keywords (not where the extension says ``INHERIT = F``,
    `inherited_primary`). None where neither gives one: nothing is assumed.
    """
    for h in (header, inherited_primary(header, primary)):
        if h is None:
            continue
        values = [h.get(k) for k in _SATURATION_KEYS]
        levels = [float(v) for v in values if isinstance(v, (int, float, np.number))
                  and not isinstance(v, (bool, np.bool_)) and np.isfinite(v) and v > 0]
        if levels:
            return min(levels)
    return None


def _beam_of(header, primary=None):
    """`beam_of_header` of an image's FITS header, else of ``primary``, the file's primary
    header where the image is an extension's (radio images written with the beam in the
    primary header and the image in an extension, as FITS keyword inheritance allows; not
    where the extension says ``INHERIT = F``, `inherited_primary`)."""
    primary = inherited_primary(header, primary)
    beam = beam_of_header(header.get)
    return beam if beam is not None or primary is None else beam_of_header(primary.get)


class HeaderFacts(NamedTuple):
    """What a FITS header says of a stamp beyond its pixels and pixel scale, as `Stamp`
    carries it (`Stamp.beam`, `Stamp.flux_note`, `Stamp.saturation`); None where unknown."""

    #: Restoring beam FWHM (major axis) in arcsec (`beam_of_header`).
    beam: float = None
    #: The pixel unit where it is not SDSS nanomaggies (`flux_unit_note`).
    flux_note: str = None
    #: Saturation level of the pixels (`saturation_of_header`).
    saturation: float = None


_NO_FACTS = HeaderFacts()
#: The keywords that each of `header_facts`'s readers reads.
_FACT_READERS = ((frozenset(("BMAJ", "HISTORY")), lambda h, p: _beam_of(h, p)),
                 (frozenset(("BUNIT", "FLUXMAG0") + _ZERO_POINT_KEYS), flux_unit_note),
                 (frozenset(_SATURATION_KEYS), saturation_of_header))
_FACT_KEYS = frozenset().union(*(keys for keys, _ in _FACT_READERS))


def header_facts(header, primary=None):
    """`HeaderFacts` of an image's FITS header (``.get(key, default)``); ``primary``: the
    file's primary header where the image is an extension's, read where ``header`` lacks
    the beam, unit or saturation keywords (none of them where ``header`` says
    ``INHERIT = F``, `inherited_primary`). The one reader of these facts for stamps, whether
    read from a file (`read_fits`) or from bytes (`parse_fits_bytes`)."""
    primary = inherited_primary(header, primary)
    keys = getattr(header, "keys", None)
    if primary is not None or keys is None:
        return HeaderFacts(*(read(header, primary) for _, read in _FACT_READERS))
    # a header that tells its keywords (astropy's, the fast parser's): a reader whose
    # keywords are all absent is not asked, nor any for the common stamp
    present = _FACT_KEYS.intersection(keys())
    if not present:
        return _NO_FACTS  # a ZTF-like stamp: not one of the keywords
    return HeaderFacts(*(read(header, None) if not used.isdisjoint(present) else None
                         for used, read in _FACT_READERS))


def _stamps_from_array(source, path, data, header_get, scale, header_hdu, triplet_hint,
                       primary=None, steps=None):
    """Stamps from one image array (2-D, 3-D cube or 4-D stack of stamps), with what the
    header says of the pixel unit, the restoring beam and the saturation level
    (`header_facts`); ``primary``: the file's primary header where the image is an
    extension's; ``steps``: the quantisation steps of its planes, of a lossily compressed
    HDU (`_plane_steps`, squeezed as ``data``), else None."""
    data = _squeeze(data)
    header = _GetDict(header_get)
    steps = None if steps is None else np.asarray(steps[..., 0, 0], dtype=np.float64)
    if data.ndim == 2:
        stamps = [Stamp(source, path, "bands", data[None], (band_of_header(header, primary),),
                        scale, header_hdu=header_hdu,
                        quantum=None if steps is None else steps.reshape(1))]
    elif data.ndim == 3:
        names, keyword = _plane_names(header, data.shape[0])
        stamps = [_planes_stamp(source, path, data, names, scale, header_hdu, triplet_hint,
                                quanta=steps, keyword=keyword)]
    elif data.ndim == 4:
        names, keyword = _plane_names(header, data.shape[1])
        stamps = [_planes_stamp(f"{source}[{i}]", path, stamp, names, scale, header_hdu,
                                triplet_hint, index=i, quanta=None if steps is None else
                                steps[i] if steps[i].any() else None, keyword=keyword)
                  for i, stamp in enumerate(data)]
    else:
        return _refused(source, path, f"image of shape {data.shape} is not a 2-D image, a 3-D "
                        "cube or a 4-D stack of stamps")
    facts = header_facts(header, primary)
    for stamp in stamps:
        stamp.header_get = header_get
        stamp.flux_note, stamp.beam = facts.flux_note, facts.beam
        if facts.saturation is not None and stamp.data is not None:  # one level, every plane
            stamp.saturation = np.full(len(stamp.data), facts.saturation)
    return stamps


class _GetDict:
    """Adapter giving a ``.get`` of a card getter (fast path) or a Header."""

    def __init__(self, get):
        self._get = get

    def get(self, key, default=None):
        return self._get(key, default)

    @property
    def keys(self):
        """The keywords present, where the getter tells them (the fast parser's), else None."""
        return getattr(self._get, "keys", None)


def _lenient(header):
    """An astropy ``header`` as a `_GetDict` whose ``get`` reads a card that astropy cannot
    parse (a flipped byte in ``BUNIT = 'nominal '``: its `VerifyError`, raised only when
    the card is read) as the fast reader reads it (`_card_value` of its raw text), so that
    a file reads alike by either reader and no such error escapes the guarded reading."""
    from astropy.io.fits.verify import VerifyError

    def get(key, default=None):
        try:
            return header.get(key, default)
        except VerifyError:
            with catch_warnings():
                warnings.simplefilter("ignore")  # astropy's VerifyWarning of the card
                return _card_value(header.cards[key].image[10:])
    get.keys = header.keys
    lenient = _GetDict(get)
    lenient.header = header  # the Header itself, for a WCS of it (`_orient._header`)
    return lenient


def _planes_stamp(source, path, planes, names, scale, header_hdu, triplet_hint, index=None,
                  quanta=None, keyword=None):
    """The stamp of the planes of a cube: a triplet where their ``names`` name its members
    (`_is_triplet`), else bands named by `normalise_band`; ``quanta``: the quantisation step
    of each plane (`Stamp.quantum`), or None; ``keyword``: the header keyword that gave
    the names (`_plane_names`)."""
    order = _triplet_order(names)
    if _is_triplet(order, triplet_hint):
        return _triplet_stamp(source, path, list(planes), order, scale, header_hdu, index,
                              quanta=quanta, keyword=keyword)
    bands = tuple(normalise_band(n) for n in names)
    return Stamp(source, path, "bands", planes, bands, scale, header_hdu=header_hdu, index=index,
                 quantum=quanta)


def _triplet_stamp(source, path, planes, order, scale, header_hdu, index=None, empty=None,
                   scales=None, levels=None, quanta=None, keyword="EXTNAME"):
    """The triplet stamp of ``planes`` whose member indices are ``order`` (the first plane
    of each role is used), or a stamp flagged `MISSING_BAND` or `BAD_INPUT`.

    ``empty``: member index -> words for the file's HDU of that member that holds no
    data (`_empty_label`), named when the member is missing. ``scales``: the pixel scale
    of each of ``planes`` (one HDU each), where they may differ; ``scale`` is then unused.
    ``levels``: the saturation level of each of ``planes`` (`saturation_of_header`; None
    where its header gives none), where they come from headers of their own. ``quanta``:
    the quantisation step of each of ``planes`` (`Stamp.quantum`), or None. ``keyword``:
    the header keyword that names the members, ``EXTNAME`` of HDUs or a cube's ``PLANEi``
    (`_plane_names`), named when a member is missing."""
    stamp = Stamp(source, path, header_hdu=header_hdu, index=index, pixel_scale=scale)
    chosen, member_scales, member_levels = [None, None, None], [scale] * 3, [None] * 3
    member_quanta = [0.0] * 3
    for j, (plane, role) in enumerate(zip(planes, order)):
        if role is not None and chosen[role] is None:
            chosen[role] = plane
            member_scales[role] = scale if scales is None else scales[j]
            member_levels[role] = None if levels is None else levels[j]
            member_quanta[role] = 0.0 if quanta is None else float(quanta[j])
    missing = [i for i in range(3) if chosen[i] is None]
    if missing:
        why = [(empty or {}).get(i) for i in missing]
        return stamp.flag(Flag.MISSING_BAND, f"no {' or '.join(_MEMBERS[i] for i in missing)} "
                          "image" + "".join(f": {w}" for w in why if w)
                          + f" (triplet members come from {keyword} "
                          "SCIENCE/REFERENCE/DIFFERENCE)")
    shapes = {c.shape for c in chosen}
    if len(shapes) > 1:
        return stamp.flag(Flag.BAD_INPUT, f"triplet members differ in shape: "
                          f"{', '.join('x'.join(map(str, c.shape)) for c in chosen)}")
    stamp.pixel_scale, problem = common_pixel_scale(member_scales)
    if problem:  # one size, different fields: not aligned pixel for pixel
        return stamp.flag(Flag.BAD_INPUT, f"triplet members {problem}")
    stamp.kind, stamp.data = "triplet", np.stack(chosen)
    stamp.saturation = _levels_array(member_levels)
    stamp.quantum = np.array(member_quanta) if any(member_quanta) else None
    return stamp


def _levels_array(levels):
    """`Stamp.saturation` of planes with these levels (None: unknown): NaN where unknown;
    None where no plane has one."""
    if all(v is None for v in levels):
        return None
    return np.array([np.nan if v is None else v for v in levels], dtype=float)


def _refused(source, path, reason):
    """The one stamp of a file (or bytes) that gives none to score: flagged `BAD_INPUT` with
    ``reason``, in the list that the readers return."""
    return [Stamp(source, path).flag(Flag.BAD_INPUT, reason)]


def not_fits_start(head, name=None):
    """Why a file (or bytes) whose first bytes ``head`` start neither a FITS header nor a
    compression is not FITS, in short: what those bytes are, and, where its name ``name``
    says a compression (``x.fits.gz`` whose signature is damaged), that they are neither that
    compression nor FITS (astropy says only "No SIMPLE card found, this file does not appear
    to be a valid FITS file. If this is really a FITS file, try with ...")."""
    from ._inputs import _ending

    if not head:
        return "not a FITS file: it is empty"
    # (as many bytes as are compared with a FITS file's, `_FITS_START`, as `_not_fits` shows)
    said, first = _ending(name)[1] if name else None, bytes(head[:len(_FITS_START)])
    magic = next((m for m, n, _ in COMPRESSIONS if n == said), None)
    if magic is not None:
        return (f"neither {said} nor FITS: its first bytes are {first!r} ({said} starts with "
                f"{magic!r}, FITS with {_FITS_START!r})")
    return f"not a FITS file (no SIMPLE card): its first bytes are {first!r}"


def _not_fits(buf, compression, name=None):
    """Why bytes that were to be FITS are not: for a compressed file (``compression``, its
    name; ``buf`` then holds what it decompressed to), what it holds; else what they start
    with (`not_fits_start`; ``name``: the file's name, or None)."""
    if not compression:
        return not_fits_start(buf, name)
    if not buf:
        return f"{compression}-compressed file that holds no data"
    from ._inputs import describe_content

    inner = describe_content(buf[:16])
    if inner == "Avro":
        return (f"{compression}-compressed Avro file, not FITS: decompress it "
                f"({UNCOMPRESS[compression]}) to score its alerts")
    return (f"{compression}-compressed {inner or 'data'}, not FITS (the uncompressed data "
            f"start with {bytes(buf[:len(_FITS_START)])!r})")


def read_fits(path, *, want_scale, triplet_hint):
    """The stamps of the FITS file ``path`` (compressed or not: gzip, bzip2, xz, a zip
    archive of one file, whatever its name, as astropy reads them), as `read_fits_bytes` reads
    bytes: by the fast parser where it can, else by astropy (a memory map for a file over
    `_FAST_MAX_BYTES`). A file that cannot be read gives one stamp flagged `BAD_INPUT`
    with the reason. ``want_scale``: read the pixel scale from the WCS;
    ``triplet_hint``: a single triplet role among plane or HDU names makes a triplet."""
    source = str(path)
    try:
        size = path.stat().st_size
        if size <= _FAST_MAX_BYTES:
            stamps, _ = _read_fits_buffer(path.read_bytes(), source, path,
                                          want_scale=want_scale, triplet_hint=triplet_hint)
            if stamps is not None:
                return stamps
        else:
            # a large file: astropy memory-maps it. A compressed one has its primary header
            # checked first (`malformed_header`: a nonsense layout keyword can hang
            # astropy), not the others, each of which would cost a decompression up to it
            # (astropy reads a compressed file by its content, whatever its name: what it
            # holds is said here as for a small one)
            try:
                head, compression = first_bytes(path, 16)
            except ArchiveError as exc:  # corrupt, truncated, a zip archive not of one file
                return _refused(source, path, _archive_reason(exc, path.name))
            if not compression and not head.startswith(_ASTROPY_STARTS):
                return _refused(source, path, _not_fits(head, None, path.name))
            if not compression:  # every header (their data are not read: seeks in the file):
                # a nonsense layout keyword (NAXIS1 = -64) makes astropy read the HDUs after
                # it from earlier bytes without end, and it drops an unparsable one
                read, close, _ = _file_reader(path)
                try:
                    problem = malformed_header(read)
                finally:
                    close()
                if problem:
                    return _refused(source, path, _malformed(problem, path.name))
            if compression:
                if not head.startswith(_FITS_START):
                    # the stream read first: first bytes that are not FITS may be those of a
                    # corrupt stream (a bad CRC is found at its end), which is said corrupt,
                    # as a small file of it is (`decompress`); read through only where they
                    # are within two bytes of FITS's (`_NOT_FITS_READ_BYTES`)
                    near = sum(a != b for a, b in zip(head, _FITS_START)) \
                        + max(len(_FITS_START) - len(head), 0) <= 2
                    try:
                        check_stream(path, max_bytes=None if near else _NOT_FITS_READ_BYTES)
                    except ArchiveError as exc:
                        return _refused(source, path, _archive_reason(exc, path.name))
                    return _refused(source, path, _not_fits(head, compression))
                read, close, _ = _file_reader(path)
                try:
                    problem = malformed_header(read, max_hdus=1)
                finally:
                    close()
                if problem:
                    return _refused(source, path, _malformed(problem, path.name))
                # (an extension's header astropy cannot parse makes it read the HDUs after
                # it from earlier bytes without end: found in the same walk)
                malformed = []
                truncated = truncated_file(path, path.name, malformed=malformed)
                if truncated:
                    return _refused(source, path, truncated)
                if malformed:
                    return _refused(source, path, _malformed(malformed[0], path.name))
    except (ValueError, OSError) as exc:
        return _refused(source, path, f"cannot read FITS: {exc}")
    return _read_fits_astropy(path, want_scale=want_scale, triplet_hint=triplet_hint)


def read_fits_bytes(blob, *, source, want_scale=True, triplet_hint=False):
    """The stamps of FITS bytes (compressed or not), read as `read_fits` reads a file of those
    bytes: a cube gives its planes as bands (named by BANDi/FILTERi/PLANEi) or as a
    triplet, one image HDU per band or triplet member gives them stacked, with the facts
    its headers give (`header_facts`). ``source`` names the stamps (``path`` is None)."""
    stamps, buf = _read_fits_buffer(blob, source, None, want_scale=want_scale,
                                    triplet_hint=triplet_hint)
    if stamps is not None:
        return stamps
    return _read_fits_astropy(None, want_scale=want_scale, triplet_hint=triplet_hint,
                              buf=buf, source=source, compression=compression_of(blob[:6]))


def _archive_reason(exc, name):
    """The reason for the `ArchiveError` ``exc`` of the file named ``name`` (None: bytes):
    a `CorruptStream` (a gzip file failing its CRC, bytes after its last member) or a
    `TruncatedStream` worded as a large file's stream reader words it
    (`_StreamReader.corrupt_reason`, `truncated_file`), the file named: a stream cut inside
    the data of an HDU (its ``content`` walked, `truncated_data`) as ``"truncated FITS file
    x.fits.xz: the header of HDU 1 ..."``, its primary header malformed as such."""
    if isinstance(exc, TruncatedStream) and exc.content \
            and exc.content.startswith(_FITS_START):
        read = _buffer_reader(exc.content)
        problem = malformed_header(read, max_hdus=1)
        if problem:
            return _malformed(problem, name)
        truncated = truncated_data(read)
        if truncated:
            return _truncated(*truncated, name)
    return exc.reason(name) if isinstance(exc, (CorruptStream, TruncatedStream)) else str(exc)


def _read_fits_buffer(buf, source, path, *, want_scale, triplet_hint):
    """`read_fits` of the whole content of a FITS stream held in memory, where it needs no
    astropy: ``(stamps, None)``; else ``(None, data)``, the uncompressed bytes for
    `_read_fits_astropy`. ``path``: the file the bytes were read from, whose name reasons
    give (None for bytes)."""
    name = None if path is None else path.name
    try:
        try:  # a compressed file (gzip, bzip2, xz, zip): decompressed in memory
            buf, compression = decompress(buf)
        except ArchiveError as exc:  # corrupt, truncated, a zip archive not of one file
            return _refused(source, path, _archive_reason(exc, name)), None
        if not buf.startswith(_FITS_START):
            return _refused(source, path, _not_fits(buf, compression, name)), None
        # (the fast reader reads a primary image followed by nothing, or by whole auxiliary
        # extensions only: anything else, an extension cut short among them, is astropy's)
        fast = _fast_fits(buf, primary_only=False, want_scale=want_scale)
        if fast is not None:
            data, scale, get = fast
            data, why = stokes_i(data, get)
            if why:
                return _refused(source, path, why), None
            return _stamps_from_array(source, path, data, get, scale, 0, triplet_hint), None
        # Before astropy sees it: a header whose layout keywords are nonsense gives
        # astropy's cryptic errors at best, and a gzipped one can hang it for good
        # (NAXIS1 = -64 in a .fits.gz never returns from fits.open).
        problem = malformed_header(_buffer_reader(buf))
        if problem:
            return _refused(source, path, _malformed(problem, name)), None
        cut = cut_header(_buffer_reader(buf), name)
        if cut:
            return _refused(source, path, cut), None
        # astropy does not read the data of HDUs skipped (MASK, UNCERT), and warns of a
        # stream that ends inside them only where it is an uncompressed file
        truncated = truncated_data(_buffer_reader(buf))
        if truncated:
            raise _TruncatedData(*truncated)
    except _TruncatedData as exc:  # worded as astropy's reader words it (`_unreadable`)
        return _refused(source, path, _truncated(*exc.parts, name)), None
    except ValueError as exc:
        return _refused(source, path, f"cannot read FITS: {exc}"), None
    return None, buf


class _OwnWords(ValueError):
    """An error of a FITS file that astropy only warned of, or did not see, raised by
    astromorph where astropy's reading stopped: its words are astromorph's (`_unreadable`
    adds no ``(astropy: ...)`` part)."""


class _Corrupted(_OwnWords):
    """HDU ``k``, whose header astropy could not parse (its ``_CorruptedHDU``; it only
    warns, and drops the HDU)."""

    def __init__(self, k):
        super().__init__(f"the header of HDU {k} is damaged: astropy cannot parse it")


def _read_fits_astropy(path, *, want_scale, triplet_hint, buf=None, source=None,
                       compression=None):
    """`read_fits` by astropy, of the file at ``path`` or, with ``buf``, of the uncompressed
    FITS bytes ``buf`` (``path`` None; ``compression``: theirs, if they were), whose stamps
    ``source`` names."""
    from astropy.io import fits
    from astropy.io.fits.hdu.base import _CorruptedHDU

    source = str(path) if source is None else source
    try:
        with catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path if buf is None else io.BytesIO(buf), memmap=buf is None,
                           do_not_scale_image_data=True, lazy_load_hdus=False) as hdul:
                corrupted = next((i for i, hdu in enumerate(hdul)
                                  if isinstance(hdu, _CorruptedHDU)), None)
                if corrupted is not None:  # (astropy warns, and drops it: a MASK, a band)
                    raise _Corrupted(corrupted)
                images, empty, stokes, twice = [], {}, {}, None
                quanta = {}  # HDU index: its planes' quantisation steps (`_plane_steps`)
                # astropy reads a second primary HDU (a file joined to the first) as one more
                second = next((hdu.fileinfo()["hdrLoc"] for i, hdu in enumerate(hdul)
                               if i and isinstance(hdu, fits.PrimaryHDU)), None)
                for i, hdu in enumerate(hdul if second is None else ()):
                    if _is_auxiliary(hdu):
                        continue
                    if not _has_image_data(hdu):
                        if i and hdu.is_image:  # an extension meant for an image, left empty
                            empty[i] = _lenient(hdu.header.copy())
                        continue
                    twice = repeated_scaling(hdu.header)
                    if twice:  # (which pixel values are meant is unknown: no image read)
                        twice = _in_hdu(i, twice)
                        break
                    data = _hdu_data(hdu)
                    steps = _plane_steps(hdu, data.shape)
                    data, why = stokes_i(data, hdu.header.get)
                    if why:  # named when the file has no other image
                        stokes[i] = _in_hdu(i, why)
                        continue
                    if steps is not None:  # (of a Stokes cube: the I plane's)
                        quanta[i] = _squeeze(stokes_i(steps, hdu.header.get)[0])
                    images.append((i, hdu, _squeeze(data),
                                   _header_scale(hdu.header) if want_scale else None))
                headers = {i: _lenient(hdu.header.copy()) for i, hdu, _, _ in images}
                primary = _lenient(hdul[0].header.copy()) if len(hdul) > 1 else None
                after = None  # where astropy stopped, having dropped an HDU it could not
                if any(str(w.message).startswith("Error validating header for HDU")
                       for w in caught):  # validate: its header may be cut short
                    info = hdul.fileinfo(len(hdul) - 1)
                    after = info["datLoc"] + info["datSpan"], len(hdul)
        truncated = [str(w.message) for w in caught if "truncat" in str(w.message).lower()]
        if truncated:
            raise ValueError(truncated[0])
    except Exception as exc:  # noqa: BLE001 - astropy raises many kinds for corrupt files
        if buf is not None:
            return _refused(source, path, _unreadable(exc, _buffer_reader(buf)))
        try:
            read, close, _ = _file_reader(path)
        except (OSError, ArchiveError):
            read, close = (lambda offset, n: b""), (lambda: None)
        try:
            reason = _unreadable(exc, read, path.name)
        finally:
            close()
        return _refused(source, path, reason)
    if after is not None:  # (`cut_header`: the file ends inside the header astropy dropped)
        try:
            read, close, _ = (_buffer_reader(buf), lambda: None, None) if buf is not None \
                else _file_reader(path)
            try:
                cut = cut_header(read, None if path is None else path.name,
                                 start=after[0], first=after[1])
            finally:
                close()
        except (OSError, ValueError, ArchiveError) as exc:  # (astropy read it: a stream
            cut = f"cannot read FITS: {exc}"  # broken after that)
        if cut:
            return _refused(source, path, cut)
    if twice:
        return _refused(source, path, twice)
    if second is not None:
        if buf is None:
            with open(path, "rb") as f:
                compression = compression_of(f.read(6))
        return _refused(source, path, _two_files(second, compression))
    if not images:
        return _refused(source, path, "; ".join(stokes.values()) or "no image HDU with data")
    if len(images) == 1:
        i, _, data, scale = images[0]
        stamps = _stamps_from_array(source, path, data, headers[i].get, scale, i,
                                    triplet_hint, primary if i else None, quanta.get(i))
        if empty:  # one HDU per band with one band filled: the others are named as empty
            labels = {band_of_header(h): _empty_label(j, h) for j, h in empty.items()}
            for stamp in stamps:
                stamp.empty_hdus = labels
        return stamps
    return _stamp_of_hdus(source, path, images, headers, primary, empty, triplet_hint, quanta)


def _stamp_of_hdus(source, path, images, headers, primary, empty, triplet_hint, quanta=None):
    """The stamp of a file with several image HDUs, one per band or triplet member, in a
    list: a triplet (`_is_triplet` of their EXTNAMEs) or bands, stacked; flagged
    `BAD_INPUT` where they do not stack.

    ``images``: ``(HDU index, HDU, data, pixel scale)`` of each image HDU; ``headers``:
    their headers by HDU index; ``primary``: the primary header, read where an
    extension's header lacks a keyword; ``empty``: the headers of image extensions that
    hold no data, by HDU index (named in the stamp's `empty_hdus`, or in the reason for a
    missing triplet member); ``quanta``: the quantisation steps of those of ``images`` that
    are lossily compressed (`_plane_steps`), by HDU index.
    """
    if any(d.ndim != 2 for _, _, d, _ in images):
        return _refused(source, path, f"{len(images)} image HDUs, not all 2-D (shapes "
                        f"{', '.join(str(d.shape) for _, _, d, _ in images)}); expected one "
                        "2-D image per band or triplet member")
    scales = [s for _, _, _, s in images]
    scale = common_pixel_scale(scales)[0]  # triplet members are checked by _triplet_stamp
    names = [headers[i].get("EXTNAME") for i, _, _, _ in images]
    order = _triplet_order(names)
    planes = [d for _, _, d, _ in images]
    levels = [saturation_of_header(headers[i], primary if i else None) for i, _, _, _ in images]
    steps = [float((quanta or {}).get(i, np.zeros((1, 1)))[0, 0]) for i, _, _, _ in images]
    steps = steps if any(steps) else None
    # the coarsest of the HDUs' beams, as annotate takes the coarsest of the bands' beams
    beam = max((b for b in (_beam_of(headers[i], primary if i else None)
                            for i, _, _, _ in images) if b is not None), default=None)
    if _is_triplet(order, triplet_hint):
        members = dict(zip(_triplet_order([h.get("EXTNAME") for h in empty.values()]),
                           (_empty_label(i, h) for i, h in empty.items())))
        stamp = _triplet_stamp(source, path, planes, order, scale, 0, empty=members,
                               scales=scales, levels=levels, quanta=steps)
        stamp.header_get, stamp.beam = headers[images[0][0]].get, beam
        return [stamp]
    if len({p.shape for p in planes}) > 1:
        return _refused(source, path, "band images differ in shape: "
                        f"{', '.join('x'.join(map(str, p.shape)) for p in planes)}")
    bands = tuple(band_of_header(headers[i], primary if i else None) for i, _, _, _ in images)
    notes = [f"{n} (HDU {i})" for i, n in
             ((i, flux_unit_note(headers[i], primary if i else None)) for i in headers) if n]
    return [Stamp(source, path, "bands", np.stack(planes), bands, scale, header_hdu=0,
                  empty_hdus={band_of_header(h): _empty_label(i, h) for i, h in empty.items()},
                  flux_note=notes[0] if notes else None, saturation=_levels_array(levels),
                  beam=beam, header_get=headers[images[0][0]].get,
                  quantum=None if steps is None else np.array(steps))]


def _empty_label(i, header):
    """Words for image HDU ``i`` that holds no data: ``"HDU 2 (EXTNAME 'R') has no data"``."""
    name = header.get("EXTNAME")
    return f"HDU {i}{f' (EXTNAME {name!r})' if name else ''} has no data"


def parse_fits_bytes(blob, *, want_scale=True, return_facts=False):
    """Image and pixel scale (and header facts) of a FITS stamp held in bytes (compressed or
    not: gzip, bzip2, xz, a zip archive of one file, as `read_fits` reads a file of them).

    Uses a fast parser for simple images (primary HDU with data; trailing
    extensions such as Rubin's ``MASK``/``UNCERT`` are ignored, but a stamp
    that ends inside one is refused as truncated, as `read_fits` refuses a
    file of it) and astropy otherwise (first image HDU with data). A Stokes
    cube is reduced to its Stokes I plane (`stokes_i`), as `read_fits`
    reduces a file.

    With ``return_facts``, what the stamp's header says of its restoring beam, pixel unit
    and saturation level (`header_facts`, the primary header's where the image is an
    extension's) is returned too, as `read_fits` gives it to a stamp file.

    Returns
    -------
    data : numpy.ndarray, float32, 2-D
    pixel_scale : float, (float, float) or None
        Arcsec/pixel; ``(scale_y, scale_x)`` for pixels that are not square.
    facts : HeaderFacts
        Only with ``return_facts``.

    Raises
    ------
    ValueError
        For corrupt, truncated or empty stamps (a broken archive: the reason `read_fits` gives
        a file of it), and Stokes cubes without an I plane.
    """
    if not blob:
        raise ValueError("empty stamp")
    # compressed bytes (gzip, bzip2, xz, a zip archive of one file) are read as a file of
    # them is (`_read_fits_buffer`), and broken ones refused in the same words
    try:
        blob, compression = decompress(blob)
    except ArchiveError as exc:  # (worded as `_read_fits_buffer` words it of bytes)
        raise ValueError(_archive_reason(exc, None)) from None
    if not blob.startswith(_FITS_START):
        if compression:
            raise ValueError(_not_fits(blob, compression))
        raise ValueError(f"stamp is not FITS (starts with {bytes(blob[:len(_FITS_START)])!r})")
    fast = _fast_fits(blob, primary_only=True, want_scale=want_scale)
    if fast is not None:
        data, scale, get = fast
        if data.ndim > 2:  # a cube: Stokes I of a Stokes cube (a 2-D stamp has no such axis)
            data, why = stokes_i(data, get)
            if why:
                raise ValueError(why)
        facts = header_facts(_GetDict(get)) if return_facts else None
    else:
        from astropy.io import fits

        data, why, twice = None, None, None
        try:
            with catch_warnings():
                warnings.simplefilter("ignore")
                with fits.open(io.BytesIO(blob), do_not_scale_image_data=True) as hdul:
                    for i, hdu in enumerate(hdul):
                        if _has_image_data(hdu) and not _is_auxiliary(hdu):
                            twice = repeated_scaling(hdu.header)
                            if twice:
                                twice = _in_hdu(i, twice)
                                break
                            data, problem = stokes_i(_hdu_data(hdu), hdu.header.get)
                            if problem:  # said where the stamp has no other image
                                why = why or _in_hdu(i, problem)
                                continue
                            scale = _header_scale(hdu.header) if want_scale else None
                            facts = header_facts(hdu.header, hdul[0].header if i else None) \
                                if return_facts else None
                            break
        except Exception as exc:  # noqa: BLE001 - astropy raises many kinds for bad headers
            # KeyError, TypeError... from a malformed header: the ValueError callers expect
            raise ValueError(_unreadable(exc, _buffer_reader(blob))) from exc
        if twice:
            raise ValueError(twice)
        if data is None:
            raise ValueError(why or "no image data in stamp")
        # the HDUs after the one read (MASK, UNCERT, ...) are not read: one that the stream
        # ends inside of (its data, or its header, which astropy drops with a warning only)
        # means a damaged stamp, refused as `read_fits` refuses a file of it
        truncated = truncated_data(_buffer_reader(blob))
        if truncated:
            raise _TruncatedData(*truncated)
        cut = cut_header(_buffer_reader(blob))
        if cut:
            raise ValueError(cut)
    data = _squeeze(data)
    if data.ndim != 2:
        raise ValueError(f"stamp has shape {data.shape}, not a 2-D image")
    return (data, scale, facts) if return_facts else (data, scale)
