"""Readers for the files `predict_files` accepts: one dispatcher, `read_file`.

Accepted inputs (recognised by their content first, by extension second):

* FITS (``.fits``, ``.fit``, ``.fts``, ``.fz``, and gzipped ``.fits.gz``):
  a 2-D image (one band); a 3-D cube with one plane per band or per triplet
  member; a 4-D array ``(N, C, H, W)`` of N stamps; or one image HDU per band
  (names from ``FILTER``/``BAND`` or ``EXTNAME``) or per triplet member
  (``EXTNAME`` ``SCIENCE``/``REFERENCE`` (or ``TEMPLATE``)/``DIFFERENCE``).
  Integer data are scaled by ``BSCALE``/``BZERO`` with ``BLANK`` pixels set
  to NaN; any byte order; the pixel scale comes from the celestial WCS.
* JPEG/PNG colour (or grey) cutouts, read with Pillow (extra ``images``).
* Avro alert packets (extra ``alerts``): ZTF (``candid``, gzipped FITS
  cutouts in ``cutoutScience``/``cutoutTemplate``/``cutoutDifference``
  ``stampData``) and Rubin (``diaSource.diaSourceId``, FITS bytes in
  ``cutoutScience``/``cutoutTemplate``/``cutoutDifference``).

`read_file` never raises for bad content: an unreadable, truncated or
inconsistent input gives a `Stamp` whose ``flags`` say why (`Flag.BAD_INPUT`,
`Flag.MISSING_BAND`, ...) and whose ``reason`` explains it in words. Only a
missing optional dependency raises (`MissingDependencyError`).
"""
import copy
import glob
import io
import json
import logging
import os
import re
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._flags import Flag
from .exceptions import InputNotFoundError, InvalidArgumentError, MissingDependencyError

__all__ = [
    "Stamp",
    "SUPPORTED_EXTENSIONS",
    "expand_inputs",
    "sniff_format",
    "read_file",
    "parse_fits_bytes",
    "iter_avro_records",
    "normalise_band",
    "ZTF_STAMP_SIZE",
]

log = logging.getLogger(__name__)

#: File-name endings picked up when a directory is expanded.
SUPPORTED_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fz", ".fits.fz",
                        ".jpg", ".jpeg", ".png", ".avro")

#: Side of ZTF alert cutouts; smaller ones were cut at the CCD edge.
ZTF_STAMP_SIZE = 63
#: ZTF CCD-quadrant image size (NAXIS1, NAXIS2), to tell which edge cut a stamp.
_ZTF_QUADRANT = (3072, 3080)

_CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
_MEMBERS = ("science", "reference", "difference")

#: EXTNAME (or plane name) -> triplet member index.
_TRIPLET_NAMES = {"SCIENCE": 0, "SCI": 0, "NEW": 0, "SEARCH": 0,
                  "REFERENCE": 1, "REF": 1, "TEMPLATE": 1, "TEMPL": 1, "TMPL": 1,
                  "DIFFERENCE": 2, "DIFF": 2, "DIF": 2}
#: HDUs that hold auxiliary planes, never a band.
_AUX_EXTNAMES = frozenset({"MASK", "UNCERT", "UNCERTAINTY", "VARIANCE", "VAR", "WEIGHT", "WHT",
                           "ERR", "ERROR", "DQ", "IVAR", "INVVAR", "SIGMA", "PSF", "BPM",
                           "FLAGS", "EXPMAP", "EXPOSURE"})
_BAND_RE = re.compile(r"(?:^|[^a-z])([ugrizy])(?:$|[^a-z])")

#: Files up to this size that hold a single simple HDU are parsed without astropy.
_FAST_MAX_BYTES = 16 << 20


@dataclass
class Stamp:
    """One raw stamp read from a file, or the record of why there is none.

    ``kind`` is ``"colour"`` (``data`` uint8 ``(H, W, 3)``), ``"bands"``
    (``data`` ``(B, H, W)``, ``bands`` the band names or ``None`` each) or
    ``"triplet"`` (``data`` ``(3, H, W)``: science, reference, difference);
    ``None`` when the input is unusable (``flags`` then has an unusable bit).
    """

    source: str
    path: Path
    kind: str = None
    data: np.ndarray = None
    bands: tuple = None
    #: Pixel scale in arcsec/pixel from the WCS, or None.
    pixel_scale: float = None
    flags: int = 0
    reason: list = field(default_factory=list)
    #: HDU whose header gets the results (FITS files only), else None.
    header_hdu: int = None
    #: Stamp index inside a file holding several stamps, else None.
    index: int = None
    #: The stamp is on the survey's native grid although it has no WCS (ZTF alerts).
    native_grid: bool = False

    def flag(self, bit, reason=None):
        """Set ``bit`` and record ``reason``; return self."""
        self.flags |= int(bit)
        if reason:
            self.reason.append(reason)
        if int(bit) & int(Flag.unusable()):
            self.kind, self.data = None, None
        return self

    @property
    def usable(self):
        return self.kind is not None and not self.flags & int(Flag.unusable())


# ----------------------------------------------------------------------------- inputs
def _has_magic(text):
    return any(c in text for c in "*?[")


def _supported(path):
    name = path.name.lower()
    return any(name.endswith(ext) for ext in SUPPORTED_EXTENSIONS)


def expand_inputs(inputs):
    """Paths of the input files: files as given, directories expanded, globs matched.

    Parameters
    ----------
    inputs : str, os.PathLike or iterable of them
        Files, directories (their supported files, sorted, not recursive) and
        glob patterns (``*``, ``?``, ``[...]``, ``**`` for recursion; matches
        sorted).

    Returns
    -------
    list of pathlib.Path
        In the given order, duplicates removed.

    Raises
    ------
    astromorph.exceptions.InputNotFoundError
        For a path that does not exist, a directory without supported files
        or a pattern that matches nothing (the message names it).
    astromorph.exceptions.InvalidArgumentError
        For an input that is neither a string nor a path.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    try:
        items = list(inputs)
    except TypeError:
        raise InvalidArgumentError(
            f"inputs must be a path, a glob pattern or a list of them, not "
            f"{type(inputs).__name__}") from None
    if not items:
        raise InputNotFoundError("no inputs given")
    paths, seen = [], set()

    def add(p):
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            paths.append(Path(p))

    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise InvalidArgumentError(f"input {item!r} is not a path or a glob pattern")
        text = os.path.expanduser(os.fspath(item))
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and _supported(p))
            if not found:
                raise InputNotFoundError(
                    f"directory {text!r} holds no supported files "
                    f"({', '.join(SUPPORTED_EXTENSIONS)})")
            for p in found:
                add(p)
        elif path.is_file():
            add(path)
        elif _has_magic(text):
            found = sorted(p for p in glob.glob(text, recursive=True) if os.path.isfile(p))
            if not found:
                raise InputNotFoundError(f"glob pattern {text!r} matches no file")
            for p in found:
                add(p)
        else:
            raise InputNotFoundError(f"input {text!r} does not exist")
    return paths


def sniff_format(path, head=None):
    """``"fits"``, ``"gzip"``, ``"jpeg"``, ``"png"``, ``"avro"`` or ``None``.

    Decided from the first bytes of the file (``head``, read when omitted);
    the extension is used only when the content is not recognised.
    """
    if head is None:
        with open(path, "rb") as f:
            head = f.read(16)
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"Obj\x01"):
        return "avro"
    name = Path(path).name.lower()
    for ext, fmt in ((".avro", "avro"), (".png", "png"), (".jpg", "jpeg"), (".jpeg", "jpeg"),
                     (".gz", "gzip"), (".fz", "fits"), (".fits", "fits"), (".fit", "fits"),
                     (".fts", "fits")):
        if name.endswith(ext):
            return fmt
    return None


def read_file(path, *, want_scale=True, triplet_hint=False):
    """Read every stamp of one input file.

    Parameters
    ----------
    path : pathlib.Path
    want_scale : bool, optional
        Work out the pixel scale from the WCS (skip it when the model does
        not use it: it costs time).
    triplet_hint : bool, optional
        The model takes triplets: HDUs named ``SCI`` etc. are triplet members
        even if not all three are present.

    Returns
    -------
    list of Stamp
        At least one; unusable inputs give a flagged `Stamp` with a reason.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        return [Stamp(str(path), path).flag(Flag.BAD_INPUT, f"cannot open file: {exc}")]
    if not head:
        return [Stamp(str(path), path).flag(Flag.BAD_INPUT, "empty file")]
    fmt = sniff_format(path, head)
    if fmt in ("fits", "gzip"):
        return _read_fits(path, want_scale=want_scale, triplet_hint=triplet_hint)
    if fmt in ("jpeg", "png"):
        return _read_picture(path)
    if fmt == "avro":
        return _read_alerts(path)
    return [Stamp(str(path), path).flag(
        Flag.BAD_INPUT, f"unrecognised file format (first bytes {head[:8]!r}); expected FITS, "
        "JPEG, PNG or Avro")]


# ----------------------------------------------------------------------------- FITS helpers
def normalise_band(name):
    """A one-letter band (``"g"``) from a filter name such as ``"SDSS g"``, ``"HSC-G"``
    or ``"g.MP9401"``; the stripped name itself when there is no such letter, ``None``
    for an empty name."""
    if name is None:
        return None
    text = str(name).strip()
    if not text:
        return None
    low = text.lower()
    m = _BAND_RE.search(low)
    return m.group(1) if m else low


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


def _parse_header(buf, start):
    """Cards (key -> raw value text, first occurrence) and the end of the header."""
    cards, keys = {}, []
    pos, n = start, len(buf)
    while True:
        if pos + 2880 > n:
            raise ValueError(f"truncated FITS header ({n - start} bytes, no END card)")
        block = buf[pos:pos + 2880]
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


_FAST_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
_CELESTIAL = ("RA--", "DEC-", "GLON", "GLAT", "ELON", "ELAT", "SLON", "SLAT", "HPLN", "HPLT")


def _scale_from_cards(get):
    """Pixel scale (arcsec) from linear celestial WCS keywords; None if not celestial;
    ``"astropy"`` when only a full WCS parse can tell."""
    c1, c2 = str(get("CTYPE1", "")), str(get("CTYPE2", ""))
    if not (c1[:4] in _CELESTIAL and c2[:4] in _CELESTIAL):
        if any(str(get(f"CTYPE{i}", ""))[:4] in _CELESTIAL for i in range(3, 5)):
            return "astropy"
        return None
    for k in ("CUNIT1", "CUNIT2"):
        unit = get(k, None)
        if unit is not None and str(unit).strip().lower() not in ("deg", "degree", "degrees", ""):
            return "astropy"
    if any(get(k, None) is not None for k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2")):
        cd = np.array([[get("CD1_1", 0.0), get("CD1_2", 0.0)],
                       [get("CD2_1", 0.0), get("CD2_2", 0.0)]], dtype=float)
    else:
        pc = np.array([[get("PC1_1", 1.0), get("PC1_2", 0.0)],
                       [get("PC2_1", 0.0), get("PC2_2", 1.0)]], dtype=float)
        cd = np.diag([float(get("CDELT1", 1.0)), float(get("CDELT2", 1.0))]) @ pc
    scale = float(np.sqrt(abs(np.linalg.det(cd))) * 3600.0)
    return scale if np.isfinite(scale) and scale > 0 else None


def _physical(raw, bscale=1.0, bzero=0.0, blank=None):
    """Physical values of FITS data: BSCALE/BZERO applied, BLANK -> NaN; native float32."""
    if raw.dtype.kind in "iu":
        blank_mask = (raw == blank) if blank is not None else None
        if bscale != 1 or bzero != 0:
            out = (raw.astype(np.float64) * bscale + bzero).astype(np.float32)
        else:
            out = raw.astype(np.float32)
        if blank_mask is not None and blank_mask.any():
            out[blank_mask] = np.nan
        return out
    out = raw.astype(np.float32)
    if bscale != 1 or bzero != 0:
        out = out * np.float32(bscale) + np.float32(bzero)
    return out


def _fast_fits(buf, *, primary_only, want_scale):
    """Parse a simple FITS primary image without astropy.

    Returns ``(data, pixel_scale, header_text_getter)`` or ``None`` when the
    file is not simple enough (extensions unless ``primary_only``, random
    groups, unusual WCS): the caller then uses astropy. Raises `ValueError`
    for a truncated file.
    """
    cards, keys, end = _parse_header(buf, 0)
    if not keys or keys[0] != "SIMPLE" or _card_value(cards["SIMPLE"]) is not True:
        return None
    values = {}

    def get(key, default=None):
        if key not in values:
            values[key] = _card_value(cards[key]) if key in cards else default
        return values[key] if values[key] is not None else default

    bitpix, naxis = get("BITPIX"), get("NAXIS")
    if bitpix not in _FAST_DTYPES or not isinstance(naxis, int) or not 2 <= naxis <= 4 \
            or get("GROUPS") is True or "ZIMAGE" in cards:
        return None
    shape = [get(f"NAXIS{i}") for i in range(1, naxis + 1)]
    if not all(isinstance(s, int) and s > 0 for s in shape):
        return None
    count = int(np.prod(shape))
    nbytes = count * abs(bitpix) // 8
    padded = -(-nbytes // 2880) * 2880
    if len(buf) < end + nbytes:
        raise ValueError(f"truncated FITS data: {len(buf) - end} of {nbytes} bytes present")
    if not primary_only and len(buf) > end + padded and get("EXTEND") is True:
        return None  # extensions follow: let astropy look at every HDU
    scale = None
    if want_scale:
        scale = _scale_from_cards(get)
        if scale == "astropy":
            return None
    raw = np.frombuffer(buf, dtype=_FAST_DTYPES[bitpix], count=count, offset=end)
    raw = raw.reshape(shape[::-1])
    data = _physical(raw, float(get("BSCALE", 1.0)), float(get("BZERO", 0.0)),
                     get("BLANK") if bitpix > 0 else None)
    return data, scale, get


def _header_scale(header):
    from .preprocessing._radio import pixel_scale_from_wcs
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header)
            if not wcs.has_celestial:
                return None
            scale = pixel_scale_from_wcs(wcs)
        except Exception:  # noqa: BLE001 - malformed WCS keywords: no usable WCS
            return None
    return scale if np.isfinite(scale) and scale > 0 else None


def _hdu_data(hdu):
    """Physical data of an image HDU opened with ``do_not_scale_image_data``."""
    raw = hdu.data
    h = hdu.header
    blank = h.get("BLANK") if raw.dtype.kind in "iu" else None
    from astropy.io.fits import CompImageHDU

    if isinstance(hdu, CompImageHDU):  # astropy has already applied the scaling
        return _physical(raw)
    return _physical(raw, float(h.get("BSCALE", 1.0)), float(h.get("BZERO", 0.0)), blank)


def _squeeze(data):
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    return data


def _plane_names(header, n):
    """Per-plane names of a cube from BANDi / FILTERi / PLANEi keywords."""
    for stem in ("BAND", "FILTER", "PLANE", "EXTNAME"):
        names = [header.get(f"{stem}{i}") for i in range(1, n + 1)]
        if any(names):
            return [None if v is None else str(v) for v in names]
    return [None] * n


def _triplet_order(names):
    """Member indices of triplet-like names (None for others)."""
    return [_TRIPLET_NAMES.get(str(n).strip().upper()) if n is not None else None
            for n in names]


def _band_of(header):
    for key in ("FILTER", "BAND", "FILTNAM1", "FILTER1"):
        if header.get(key):
            return normalise_band(header[key])
    name = header.get("EXTNAME")
    if name and str(name).strip().upper() not in ("PRIMARY", "IMAGE", "SCI", "DATA"):
        return normalise_band(name)
    return None


def _stamps_from_array(path, data, header_get, scale, header_hdu, triplet_hint):
    """Stamps from one image array (2-D, 3-D cube or 4-D stack of stamps)."""
    source = str(path)
    data = _squeeze(data)
    if data.ndim == 2:
        band = _band_of(_GetDict(header_get))
        return [Stamp(source, path, "bands", data[None], (band,), scale, header_hdu=header_hdu)]
    if data.ndim == 3:
        names = _plane_names(_GetDict(header_get), data.shape[0])
        return [_planes_stamp(source, path, data, names, scale, header_hdu, triplet_hint)]
    if data.ndim == 4:
        names = _plane_names(_GetDict(header_get), data.shape[1])
        return [_planes_stamp(f"{source}[{i}]", path, stamp, names, scale, header_hdu,
                              triplet_hint, index=i)
                for i, stamp in enumerate(data)]
    return [Stamp(source, path).flag(
        Flag.BAD_INPUT, f"image of shape {data.shape} is not a 2-D image, a 3-D cube or a "
        "4-D stack of stamps")]


class _GetDict:
    """Adapter giving a ``.get`` of a card getter (fast path) or a Header."""

    def __init__(self, get):
        self._get = get

    def get(self, key, default=None):
        return self._get(key, default)

    def __getitem__(self, key):
        return self._get(key, None)


def _planes_stamp(source, path, planes, names, scale, header_hdu, triplet_hint, index=None):
    order = _triplet_order(names)
    roles = {o for o in order if o is not None}
    if len(roles) >= 2 or (triplet_hint and roles):
        return _triplet_stamp(source, path, list(planes), order, scale, header_hdu, index)
    bands = tuple(normalise_band(n) for n in names)
    return Stamp(source, path, "bands", planes, bands, scale, header_hdu=header_hdu, index=index)


def _triplet_stamp(source, path, planes, order, scale, header_hdu, index=None):
    stamp = Stamp(source, path, header_hdu=header_hdu, index=index, pixel_scale=scale)
    chosen = [None, None, None]
    for plane, role in zip(planes, order):
        if role is not None and chosen[role] is None:
            chosen[role] = plane
    missing = [_MEMBERS[i] for i in range(3) if chosen[i] is None]
    if missing:
        return stamp.flag(Flag.MISSING_BAND, f"no {' or '.join(missing)} image "
                          "(triplet members come from EXTNAME SCIENCE/REFERENCE/DIFFERENCE)")
    shapes = {c.shape for c in chosen}
    if len(shapes) > 1:
        return stamp.flag(Flag.BAD_INPUT, f"triplet members differ in shape: "
                          f"{', '.join('x'.join(map(str, c.shape)) for c in chosen)}")
    stamp.kind, stamp.data = "triplet", np.stack(chosen)
    return stamp


def _read_fits(path, *, want_scale, triplet_hint):
    source = str(path)
    try:
        size = path.stat().st_size
        if size <= _FAST_MAX_BYTES:
            buf = path.read_bytes()
            if buf[:2] == b"\x1f\x8b":
                try:
                    buf = zlib.decompress(buf, 31)
                except zlib.error as exc:
                    return [Stamp(source, path).flag(Flag.BAD_INPUT,
                                                     f"corrupt or truncated gzip: {exc}")]
            if buf.startswith(b"SIMPLE  ="):
                fast = _fast_fits(buf, primary_only=False, want_scale=want_scale)
                if fast is not None:
                    data, scale, get = fast
                    return _stamps_from_array(path, data, get, scale, 0, triplet_hint)
            else:
                return [Stamp(source, path).flag(Flag.BAD_INPUT,
                                                 "not a FITS file (no SIMPLE card)")]
    except (ValueError, OSError) as exc:
        return [Stamp(source, path).flag(Flag.BAD_INPUT, f"cannot read FITS: {exc}")]
    return _read_fits_astropy(path, want_scale=want_scale, triplet_hint=triplet_hint)


def _read_fits_astropy(path, *, want_scale, triplet_hint):
    from astropy.io import fits

    source = str(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, memmap=True, do_not_scale_image_data=True,
                           lazy_load_hdus=False) as hdul:
                images = []
                for i, hdu in enumerate(hdul):
                    if not hdu.is_image or not hdu.header.get("NAXIS", 0) or hdu.data is None:
                        continue
                    if str(hdu.name).strip().upper() in _AUX_EXTNAMES:
                        continue
                    images.append((i, hdu, _squeeze(_hdu_data(hdu)),
                                   _header_scale(hdu.header) if want_scale else None))
                headers = {i: hdu.header.copy() for i, hdu, _, _ in images}
        truncated = [str(w.message) for w in caught if "truncat" in str(w.message).lower()]
        if truncated:
            raise ValueError(truncated[0])
    except Exception as exc:  # noqa: BLE001 - astropy raises many kinds for corrupt files
        return [Stamp(source, path).flag(Flag.BAD_INPUT, f"cannot read FITS: {exc}")]
    if not images:
        return [Stamp(source, path).flag(Flag.BAD_INPUT, "no image HDU with data")]
    if len(images) == 1:
        i, _, data, scale = images[0]
        return _stamps_from_array(path, data, headers[i].get, scale, i, triplet_hint)
    # One HDU per band or triplet member.
    if any(d.ndim != 2 for _, _, d, _ in images):
        return [Stamp(source, path).flag(
            Flag.BAD_INPUT, f"{len(images)} image HDUs, not all 2-D (shapes "
            f"{', '.join(str(d.shape) for _, _, d, _ in images)}); expected one 2-D image "
            "per band or triplet member")]
    scale = next((s for _, _, _, s in images if s is not None), None)
    names = [headers[i].get("EXTNAME") for i, _, _, _ in images]
    order = _triplet_order(names)
    roles = {o for o in order if o is not None}
    planes = [d for _, _, d, _ in images]
    if len(roles) >= 2 or (triplet_hint and roles):
        return [_triplet_stamp(source, path, planes, order, scale, 0)]
    if len({p.shape for p in planes}) > 1:
        return [Stamp(source, path).flag(
            Flag.BAD_INPUT, "band images differ in shape: "
            f"{', '.join('x'.join(map(str, p.shape)) for p in planes)}")]
    bands = tuple(_band_of(headers[i]) for i, _, _, _ in images)
    return [Stamp(source, path, "bands", np.stack(planes), bands, scale, header_hdu=0)]


def parse_fits_bytes(blob, *, want_scale=True):
    """Image and pixel scale of a FITS stamp held in bytes (gzipped or not).

    Uses a fast parser for simple images (primary HDU with data; trailing
    extensions such as Rubin's ``MASK``/``UNCERT`` are ignored) and astropy
    otherwise (first image HDU with data).

    Returns
    -------
    data : numpy.ndarray, float32, 2-D
    pixel_scale : float or None

    Raises
    ------
    ValueError
        For corrupt, truncated or empty stamps.
    """
    if not blob:
        raise ValueError("empty stamp")
    if blob[:2] == b"\x1f\x8b":
        try:
            blob = zlib.decompress(blob, 31)
        except zlib.error as exc:
            raise ValueError(f"corrupt or truncated gzip stamp: {exc}") from None
    if not blob.startswith(b"SIMPLE  ="):
        raise ValueError(f"stamp is not FITS (starts with {bytes(blob[:8])!r})")
    fast = _fast_fits(blob, primary_only=True, want_scale=want_scale)
    if fast is not None:
        data, scale, _ = fast
        data = _squeeze(data)
    else:
        from astropy.io import fits

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(io.BytesIO(blob), do_not_scale_image_data=True) as hdul:
                for hdu in hdul:
                    if hdu.is_image and hdu.header.get("NAXIS", 0) and hdu.data is not None \
                            and str(hdu.name).strip().upper() not in _AUX_EXTNAMES:
                        data = _squeeze(_hdu_data(hdu))
                        scale = _header_scale(hdu.header) if want_scale else None
                        break
                else:
                    raise ValueError("no image data in stamp")
    if data.ndim != 2:
        raise ValueError(f"stamp has shape {data.shape}, not a 2-D image")
    return data, scale


# ----------------------------------------------------------------------------- pictures
def _pillow():
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError(
            "reading JPEG/PNG stamps needs Pillow; install it with "
            "`pip install 'astromorph[images]'`") from exc
    return Image


def _read_picture(path):
    image_mod = _pillow()
    source = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning etc. -> errors below
            with image_mod.open(path) as im:
                im.load()
                mode = im.mode
                if mode in ("RGB", "L"):
                    arr = np.asarray(im)
                elif mode.startswith("I"):
                    arr = np.asarray(im).astype(np.int64)
                    arr = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
                elif mode in ("RGBA", "P", "PA", "LA", "CMYK", "YCbCr", "1", "LAB", "HSV"):
                    conv = im.convert("L" if mode in ("LA", "1") else "RGB")
                    arr = np.asarray(conv)
                else:
                    return [Stamp(source, path).flag(
                        Flag.BAD_INPUT, f"unsupported image mode {mode!r}")]
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ...
        return [Stamp(source, path).flag(Flag.BAD_INPUT, f"cannot read image: {exc}")]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return [Stamp(source, path, "colour", np.ascontiguousarray(arr, dtype=np.uint8))]


# ----------------------------------------------------------------------------- Avro alerts
def _fastavro():
    try:
        import fastavro
    except ImportError as exc:
        raise MissingDependencyError(
            "reading Avro alert packets needs fastavro; install it with "
            "`pip install 'astromorph[alerts]'`") from exc
    return fastavro


def _read_long(buf, pos):
    """Zig-zag varint at ``pos``: (value, new position)."""
    shift = n = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated Avro data")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("corrupt Avro varint")


def _avro_header(buf):
    if buf[:4] != b"Obj\x01":
        raise ValueError("not an Avro object container file (no 'Obj\\x01' magic)")
    pos, meta = 4, {}
    while True:
        count, pos = _read_long(buf, pos)
        if count == 0:
            break
        if count < 0:
            count = -count
            _, pos = _read_long(buf, pos)
        for _ in range(count):
            n, pos = _read_long(buf, pos)
            key = bytes(buf[pos:pos + n]).decode("utf-8")
            pos += n
            n, pos = _read_long(buf, pos)
            meta[key] = bytes(buf[pos:pos + n])
            pos += n
    if pos + 16 > len(buf):
        raise ValueError("truncated Avro header")
    return meta, bytes(buf[pos:pos + 16]), pos + 16


#: Fields decoded from alert packets; the rest (previous detections, ...) is skipped.
_KEEP_TOP = frozenset({"candid", "objectId", "candidate", "diaSource", "alertId", *_CUTOUTS})
_KEEP_SUB = {"candidate": {"candid", "isdiffpos", "xpos", "ypos", "fid"},
             "diaSource": {"diaSourceId", "psfFlux", "isNegative", "band"}}
_SCHEMAS = {}


def _pruned(writer):
    reader = copy.deepcopy(writer)
    if not (isinstance(reader, dict) and reader.get("type") == "record"):
        return None
    reader["fields"] = [f for f in reader["fields"] if f["name"] in _KEEP_TOP]
    for f in reader["fields"]:
        keep = _KEEP_SUB.get(f["name"])
        if keep and isinstance(f["type"], dict) and f["type"].get("type") == "record":
            f["type"]["fields"] = [g for g in f["type"]["fields"] if g["name"] in keep]
    return reader


def _schemas(text):
    """Parsed (writer, reader) schemas for a schema text, cached."""
    got = _SCHEMAS.get(text)
    if got is None:
        fastavro = _fastavro()
        writer = json.loads(text)
        parsed_writer = fastavro.parse_schema(writer)
        try:
            pruned = _pruned(writer)
            parsed_reader = fastavro.parse_schema(pruned) if pruned else None
        except Exception:  # noqa: BLE001 - a schema that cannot be pruned: decode all of it
            parsed_reader = None
        if len(_SCHEMAS) > 64:
            _SCHEMAS.clear()
        got = _SCHEMAS[text] = (parsed_writer, parsed_reader)
    return got


def iter_avro_records(buf):
    """Records of an Avro object container file held in bytes.

    Alert packets are decoded with a reader schema that keeps only what
    scoring needs (ids, cutouts, the difference sign), which skips the
    previous-detection history cheaply; parsed schemas are cached across
    files. Codecs ``null`` and ``deflate`` are read here, others through
    ``fastavro.reader``.

    Raises
    ------
    ValueError
        For data that is not Avro, or is truncated or corrupt (raised when
        the bad block is reached, after the good records before it).
    """
    fastavro = _fastavro()
    meta, sync, pos = _avro_header(buf)
    codec = meta.get("avro.codec", b"null").decode()
    schema_text = meta.get("avro.schema")
    if schema_text is None:
        raise ValueError("Avro header has no schema")
    if codec not in ("null", "deflate"):
        yield from fastavro.reader(io.BytesIO(bytes(buf)))
        return
    writer, reader = _schemas(schema_text.decode("utf-8"))
    view = memoryview(buf)
    n = len(buf)
    while pos < n:
        count, pos = _read_long(buf, pos)
        size, pos = _read_long(buf, pos)
        if count < 0 or size < 0 or pos + size + 16 > n:
            raise ValueError("truncated Avro block")
        block = view[pos:pos + size]
        pos += size
        if bytes(view[pos:pos + 16]) != sync:
            raise ValueError("corrupt Avro block (sync marker mismatch)")
        pos += 16
        if codec == "deflate":
            try:
                block = zlib.decompress(block, -15)
            except zlib.error as exc:
                raise ValueError(f"corrupt deflate Avro block: {exc}") from None
        stream = io.BytesIO(block)
        for _ in range(count):
            try:
                if reader is not None:
                    yield fastavro.schemaless_reader(stream, writer, reader)
                else:
                    yield fastavro.schemaless_reader(stream, writer)
            except (EOFError, ValueError, IndexError, UnicodeDecodeError) as exc:
                raise ValueError(f"corrupt Avro record: {exc}") from None


def _read_alerts(path):
    source = str(path)
    try:
        buf = path.read_bytes()
    except OSError as exc:
        return [Stamp(source, path).flag(Flag.BAD_INPUT, f"cannot read file: {exc}")]
    stamps = []
    try:
        for i, rec in enumerate(iter_avro_records(buf)):
            stamps.append(_alert_stamp(path, i, rec))
    except MissingDependencyError:
        raise
    except Exception as exc:  # noqa: BLE001 - fastavro raises many kinds for bad data
        where = f" after {len(stamps)} good record(s)" if stamps else ""
        stamps.append(Stamp(source if not stamps else f"{source}[{len(stamps)}]", path).flag(
            Flag.BAD_INPUT, f"corrupt or truncated Avro{where}: {exc}"))
    if not stamps:
        stamps.append(Stamp(source, path).flag(Flag.BAD_INPUT, "Avro file holds no records"))
    return stamps


def _pad_ztf(data, xpos, ypos):
    """Pad a ZTF cutout cut at the CCD edge back to 63 x 63 with NaN."""
    ny, nx = data.shape
    size = ZTF_STAMP_SIZE
    if ny > size or nx > size:
        raise ValueError(f"ZTF cutout of {nx}x{ny} pixels is larger than {size}x{size}")
    out = np.full((size, size), np.nan, dtype=np.float32)
    # Candidate near the low edge (1-based pixel coordinates): the missing part is at the start.
    y0 = size - ny if ypos is not None and ypos - 1 < size // 2 else 0
    x0 = size - nx if xpos is not None and xpos - 1 < size // 2 else 0
    out[y0:y0 + ny, x0:x0 + nx] = data
    return out


def _alert_stamp(path, i, rec):
    if not isinstance(rec, dict):
        return Stamp(f"{path}[{i}]", path).flag(Flag.BAD_INPUT, "Avro record is not a record")
    if "diaSource" in rec:
        return _rubin_stamp(path, i, rec)
    if "candid" in rec or "candidate" in rec:
        return _ztf_stamp(path, i, rec)
    return Stamp(f"{path}[{i}]", path).flag(
        Flag.BAD_INPUT, "Avro record is neither a ZTF alert (candid) nor a Rubin alert "
        "(diaSource)")


def _cutout_planes(stamp, blobs):
    """Decode three cutouts; flag the stamp and return None on failure."""
    missing = [k for k, b in zip(_CUTOUTS, blobs) if not b]
    if len(missing) == 3:
        stamp.flag(Flag.MISSING_BAND, "alert has no cutouts")
        return None
    if missing:
        stamp.flag(Flag.MISSING_BAND, f"alert lacks {', '.join(missing)}")
        return None
    planes, scales = [], []
    for key, blob in zip(_CUTOUTS, blobs):
        try:
            data, scale = parse_fits_bytes(blob)
        except Exception as exc:  # noqa: BLE001
            stamp.flag(Flag.BAD_INPUT, f"{key}: {exc}")
            return None
        planes.append(data)
        scales.append(scale)
    return planes, scales


def _ztf_stamp(path, i, rec):
    candid = rec.get("candid")
    stamp = Stamp(str(candid) if candid is not None else f"{path}[{i}]", path, index=i,
                  native_grid=True)
    cand = rec.get("candidate") or {}
    cutouts = [rec.get(k) for k in _CUTOUTS]
    blobs = [c.get("stampData") if isinstance(c, dict) else None for c in cutouts]
    got = _cutout_planes(stamp, blobs)
    if got is None:
        return stamp
    planes, _ = got
    if any(p.shape != (ZTF_STAMP_SIZE, ZTF_STAMP_SIZE) for p in planes):
        shapes = ", ".join("x".join(map(str, p.shape[::-1])) for p in planes)
        try:
            planes = [_pad_ztf(p, cand.get("xpos"), cand.get("ypos")) for p in planes]
        except ValueError as exc:
            return stamp.flag(Flag.BAD_INPUT, str(exc))
        stamp.flag(Flag.EDGE, f"cutouts ({shapes}) cut at the CCD edge, padded to "
                   f"{ZTF_STAMP_SIZE}x{ZTF_STAMP_SIZE} with NaN")
    # ZTF stores the difference with the candidate positive: science - reference when
    # isdiffpos is 't' (file *_scimref*), reference - science when 'f' (*_refmsci*), which
    # is what the real-bogus preprocessing expects. Only a packet whose file name
    # contradicts its isdiffpos is flipped.
    isdiffpos = str(cand.get("isdiffpos", "t")).lower()[:1]
    diffname = str((cutouts[2] or {}).get("fileName") or "").lower()
    diff = planes[2]
    if (isdiffpos == "f" and "scimref" in diffname) or (isdiffpos in "t1" and "refmsci" in diffname):
        diff = -diff
    stamp.kind, stamp.data = "triplet", np.stack([planes[0], planes[1], diff])
    return stamp


def _rubin_stamp(path, i, rec):
    dia = rec.get("diaSource") or {}
    sid = dia.get("diaSourceId")
    stamp = Stamp(str(sid) if sid is not None else f"{path}[{i}]", path, index=i)
    blobs = [rec.get(k) for k in _CUTOUTS]
    got = _cutout_planes(stamp, [b if isinstance(b, (bytes, bytearray)) else None
                                 for b in blobs])
    if got is None:
        return stamp
    planes, scales = got
    if len({p.shape for p in planes}) > 1:
        shapes = ", ".join("x".join(map(str, p.shape[::-1])) for p in planes)
        return stamp.flag(Flag.BAD_INPUT, f"cutouts differ in shape ({shapes})")
    # Rubin difference images are science - template: a negative source (a fading or
    # negative-flux detection) is negated so that the candidate is positive, as in ZTF.
    flux = dia.get("psfFlux")
    negative = dia.get("isNegative") is True or (flux is not None and np.isfinite(flux)
                                                  and flux < 0)
    diff = -planes[2] if negative else planes[2]
    stamp.kind, stamp.data = "triplet", np.stack([planes[0], planes[1], diff])
    stamp.pixel_scale = next((s for s in scales if s is not None), None)
    return stamp
