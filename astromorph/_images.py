"""One parser for every way of passing sky images: paths, HDUs, NDData, (array, WCS)."""
import bz2
import contextlib
import logging
import lzma
import mmap
import os
import threading
import warnings
import zlib

import numpy as np
from astropy.io import fits

from ._cutouts import SkyImage, _check_wcs_object
from ._readers._compressed import COMPRESSED_MAGIC, LZW_MAGIC, STREAM_OPENERS
from ._readers._fits import (_ASTROPY_STARTS, _AUX_EXTNAMES, _FAST_DTYPES, _MEMBERS,
                             _TRIPLET_NAMES, _Corrupted, _OwnWords, _e_exponents, _file_reader,
                             _image_quantisation, _physical, _unreadable, band_of_header,
                             beam_of_header, cut_header, header_facts, linear_fluxes,
                             normalise_band, not_fits_start, repeated_scaling,
                             saturation_of_header, truncated_file, wcs_matrix_problem)
from ._warnings import catch_warnings, first_few, warn, warn_again
from .exceptions import (AmbiguousInputWarning, AstromorphWarning, InputDTypeError, InputError,
                         InvalidArgumentTypeError, MissingDependencyError,
                         UnusableInputWarning)

__all__ = ["parse_sky_images", "closing_files"]

log = logging.getLogger(__name__)

#: A compressed image (gzipped file, tile-compressed HDU) is decompressed whole into memory:
#: one larger than this (bytes) gets an `AstromorphWarning` saying so.
DECOMPRESS_WARN_BYTES = 1 << 30
#: The end of that warning: a note about the file, not a fault in it (`annotate_dask` reads
#: the tiles' headers once and gives it itself, sending each tile only where it is needed).
DECOMPRESS_ADVICE = "uncompress it (gunzip, funpack) to read only the pages under the stamps"
#: First bytes of the whole-file compressions astropy reads (gzip, bzip2, xz, zip): the
#: table the stamp readers use too (`astromorph._readers._compressed`).
_COMPRESSED_MAGIC = COMPRESSED_MAGIC
#: The whole-file compressions whose pixels are decompressed when sampled (`_lazy_stream`),
#: by their first bytes: the reader of each (gzip, bzip2, xz). (astropy extracts a zip archive
#: whole into a temporary file, which it memory-maps; Unix compress, ``.Z``, has no reader in
#: the standard library: astropy reads it whole, with the optional package uncompresspy.)
_STREAM_OPENERS = STREAM_OPENERS
#: Bytes decompressed into the pixels of a compressed file at a time (`_lazy_stream`).
_STREAM_CHUNK = 1 << 22


def _band_or_role(header, primary=None):
    """The triplet role that the EXTNAME of ``header`` names (``"science"``: SCI, SCIENCE,
    NEW...), else its band (`band_of_header`), else None."""
    role = _TRIPLET_NAMES.get(str(header.get("EXTNAME", "")).strip().upper())
    return _MEMBERS[role] if role is not None else band_of_header(header, primary)


def _read_lone_science_by_filter(images):
    """Read the images that their EXTNAME names science by their filter band, where none of
    ``images`` is a reference or difference: SCI is the science extension of HST and JWST
    drizzled files and DES coadds (one band each), not a member of a triplet."""
    if any(im.band in ("reference", "difference") for im in images):
        return
    for im in images:
        if im.band == "science":
            im.band = im.filter_band


def _celestial_wcs(header, name):
    from astropy.wcs import WCS, FITSFixedWarning  # imported here: it takes a while

    # a number card with a D exponent (CDELT1 = -2.5D-04), which wcslib reads as -2.5
    header = _e_exponents(header) if header else header
    with catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2) if header else None
        except Exception as exc:  # noqa: BLE001 - astropy raises many WCS error types
            wcs, error = None, exc
        else:
            error = None
        if header and (wcs is None or not wcs.has_celestial):
            # RA/Dec not the first two axes (a cube whose first axis is a degenerate FREQ):
            # the celestial axes of the whole WCS, where the others are one pixel long
            try:
                full = WCS(header)
            except Exception:  # noqa: BLE001
                full = None
            if full is not None and full.has_celestial and all(
                    header.get(f"NAXIS{k + 1}", 1) == 1 for k in range(full.naxis)
                    if full.wcs.axis_types[k] // 1000 % 10 != 2):  # 2: celestial (wcslib)
                wcs, error = full, None
        if error is None:
            celestial = _celestial_part(wcs, name)
            # a CD matrix with a zero row and column, which wcslib silently repaired
            problem = wcs_matrix_problem(header.get, (wcs.wcs.lng + 1, wcs.wcs.lat + 1))
        else:  # one that wcslib refuses (a singular matrix): said by its keywords
            problem = wcs_matrix_problem(header.get)
        if problem:
            raise InputError(f"{name}: its WCS cannot place sources: {problem}")
        if error is not None:
            ctype = [v for k, v in header.items() if k[:5] == "CTYPE" and k[5:].isdigit()]
            raise InputError(f"{name}: its WCS (CTYPE = {ctype}) cannot be parsed: "
                             f"{error}") from error
    return celestial


def _celestial_part(wcs, name):
    """The celestial part of ``wcs``, or `InputError` naming the axes it has (or why wcslib
    cannot set it up)."""
    try:
        celestial = wcs is not None and wcs.has_celestial
    except Exception as exc:  # noqa: BLE001 - wcslib's InvalidTransformError and others
        raise InputError(f"{name}: its WCS cannot be used: {exc}") from exc
    if not celestial:
        raise InputError(f"{name}: no celestial WCS (CTYPE = "
                         f"{None if wcs is None else list(wcs.wcs.ctype)}); annotate needs "
                         "RA/Dec axes to place sources")
    return wcs.celestial


def _plane(data, name, header=None):
    """``data`` without its degenerate axes (a radio image's FREQ, STOKES): 2D, or `InputError`.

    With its ``header``, a STOKES axis is first reduced to its Stokes I plane (`InputError`
    when it has none: Q, U or V are never read as total intensity), the array given the
    header's shape first where it has fewer axes (`_header_shaped`). An image with an axis of
    length 0 (NAXIS2 = 0) holds no pixel to sample: `InputError`, as `predict_files` refuses
    it ("no image HDU with data").
    """
    if data.size == 0:
        raise InputError(f"{name}: the image holds no pixels (shape {data.shape})")
    if header is not None:
        data = _header_shaped(data, header, name)
    if header is not None and data.ndim > 2:
        from ._readers._fits import stokes_i

        data, why = stokes_i(data, header.get)
        if why:
            raise InputError(f"{name}: {why}")
    if data.ndim > 2:
        squeezed = np.squeeze(data)
        if squeezed.ndim != 2:
            raise InputError(f"{name}: expected a 2D image, got shape {data.shape}")
        data = squeezed
    return data


def _header_shaped(data, header, name):
    """``data`` (an array given with ``header``, or with a WCS whose header this is) in the
    shape that the header gives (NAXISn; WCSAXES axes, the others one pixel long, where it
    has no NAXIS), where it has fewer axes, the header's longer than 1 (a plane of a radio
    image whose FREQ and STOKES axes are one pixel long): `_plane` then reads them as it
    does a file's. `InputError` where the header gives a STOKES axis longer than 1 beyond
    those of ``data`` (whether the plane is Stokes I cannot be told); else ``data`` as it
    is: a plane of a cube along any other axis (FREQ, VELO...) has the cube's celestial
    WCS."""
    try:
        if "NAXIS" in header:
            n = int(header["NAXIS"])
            shape = tuple(int(header.get(f"NAXIS{k}", 1)) for k in range(n, 0, -1))
        else:  # (a WCS's header: its axes beyond the array's are one pixel long)
            n = int(header.get("WCSAXES", 0) or 0)
            shape = (1,) * (n - data.ndim) + data.shape
    except (TypeError, ValueError):  # (said where the header is read otherwise)
        return data
    if n <= data.ndim:
        return data
    if np.squeeze(data).shape == tuple(s for s in shape if s != 1):
        return data.reshape(shape)
    stokes = [k for k in range(3, n + 1)
              if str(header.get(f"CTYPE{k}", "")).strip().upper().startswith("STOKES")]
    longer = [f"NAXIS{k} = {shape[n - k]}" for k in stokes if shape[n - k] > 1]
    if longer:
        raise InputError(f"{name}: the header gives {n} axes ({', '.join(longer)}: STOKES), "
                         f"the array {data.ndim} (shape {data.shape}): whether it is the "
                         "Stokes I plane cannot be told; pass it with the header of that "
                         "plane (NAXIS = 2) or with the header's celestial WCS "
                         "(WCS(header).celestial)")
    # a plane of a cube along its other axes (FREQ...): those one pixel long, so that a
    # STOKES axis of one plane is read as a file's (Stokes Q refused)
    plane = tuple(1 if n - i > 2 and n - i not in stokes else side
                  for i, side in enumerate(shape))
    if np.squeeze(data).shape == tuple(side for side in plane if side != 1):
        return data.reshape(plane)
    return data


def _axes_header(wcs):
    """The header of a WCS of more than two axes (its STOKES axis for `_plane`), else None."""
    if getattr(wcs, "naxis", 2) <= 2:
        return None
    try:
        return wcs.to_header()
    except Exception:  # noqa: BLE001 - a WCS astropy cannot write: no STOKES axis read
        return None


def _scaling(data, header):
    """``(bscale, bzero, blank)`` that `SkyImage` applies to the pixels ``data`` of an HDU
    of ``header``: the header's for raw pixels (an HDU opened with
    ``do_not_scale_image_data``, as here; astropy drops BSCALE and BZERO from the header
    of pixels it has scaled), BSCALE and BZERO only for floating-point pixels (BLANK is
    for integers; FITS scales floats too, as astropy does), and only BLANK, shifted by
    BZERO, for the unsigned integers of astropy's default ``uint`` mode (int16 with
    BZERO = 32768 read as uint16: BZERO applied, BLANK not)."""
    if data.dtype.kind not in "iuf" or not any(k in header for k in ("BSCALE", "BZERO", "BLANK")):
        return 1.0, 0.0, None
    bscale, bzero, blank = header.get("BSCALE", 1.0), header.get("BZERO", 0.0), header.get("BLANK")
    if data.dtype.kind == "f":
        return bscale, bzero, None
    if data.dtype.kind == "u" and data.dtype.itemsize > 1:  # FITS stores only bytes unsigned
        return 1.0, 0.0, None if blank is None else int(blank) + int(bzero)
    return bscale, bzero, blank


def _lazy_pixels(hdu, name):
    """``(placeholder, loader)`` for the pixels of a 2D tile-compressed HDU of a file opened
    here, else None: its header gives their shape, one compression tile their dtype, and
    ``loader`` decompresses them whole (the HDU letting go of them) when they are sampled, so
    that the tiles of a mosaic are not all held at once (`SkyImage.done_sources`)."""
    header = hdu.header
    if (not isinstance(hdu, fits.CompImageHDU) or header.get("NAXIS") != 2
            or "BSOFTEN" in header and "BOFFSET" in header):  # (made linear whole: eager)
        return None
    try:
        shape = tuple(int(n) for n in hdu.shape)
        dtype = np.asarray(hdu.section[0:1, 0:1]).dtype  # one compression tile
    except Exception:  # noqa: BLE001 - read whole, as before, with its own error
        return None
    if len(shape) != 2 or 0 in shape:
        return None

    def load():
        data = hdu.data
        del hdu.data  # the image alone holds them, and lets them go when done
        if data is None or data.shape != shape:
            raise InputError(f"{name}: its pixels (shape {getattr(data, 'shape', None)}) are "
                             f"not those its header gives (shape {shape})")
        return data

    return np.broadcast_to(np.zeros((), dtype.newbyteorder("=")), shape), load


_STREAM_ERRORS = (OSError, EOFError, ValueError, lzma.LZMAError)


class _StreamRows:
    """``section[row, x0:x1]``: raw pixels of one row of an HDU of a compressed file (gzip,
    bzip2, xz), read from a stream of the file's decompressed bytes that is kept open
    between reads, so that rows asked for in increasing order (as `SkyImage.peek` does)
    take one pass through the file (astropy's ``section`` rewinds the file after each read,
    decompressing it from its start again); `release` closes the stream."""

    def __init__(self, name, path, opener, offset, shape, dtype):
        self.name, self.path, self.opener, self.offset = name, path, opener, offset
        self.shape, self.dtype = shape, dtype
        self._file = None
        self._lock = threading.Lock()

    def __getitem__(self, key):
        row, columns = key
        start, stop, _ = columns.indices(self.shape[1])
        position = self.offset + (int(row) * self.shape[1] + start) * self.dtype.itemsize
        nbytes = max(stop - start, 0) * self.dtype.itemsize
        with self._lock:
            try:
                if self._file is None or self._file.tell() > position:  # behind: anew
                    self._close()
                    self._file = self.opener(self.path, "rb")
                self._file.seek(position)
                raw = self._file.read(nbytes)
            except _STREAM_ERRORS as exc:
                self._close()
                raise InputError(f"{self.name}: cannot decompress its pixels ({exc})") from exc
        if len(raw) != nbytes:
            raise InputError(f"{self.name}: the compressed file ends within its pixels (row "
                             f"{row} of shape {self.shape}): it is truncated")
        return np.frombuffer(raw, self.dtype)

    def _close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def release(self):
        """Close the stream (opened again by the next read)."""
        with self._lock:
            self._close()


def _lazy_stream(hdu, name, stream):
    """``(placeholder, loader, section)`` for the pixels of a 2D image HDU of a compressed
    file (gzip, bzip2, xz) opened here, else None. ``stream`` is ``(path, opener, offset)``:
    the reader of the file and the position of the pixels in its decompressed bytes.

    Its header gives their shape and raw dtype, so that parsing decompresses nothing into
    memory (astropy streams through the file to read the headers); ``loader`` decompresses
    the file up to the pixels and reads them into one array, by `_STREAM_CHUNK` bytes (no
    second copy), when they are sampled, so that the tiles of a mosaic are not all held at
    once (`SkyImage.done_sources`); ``section`` (`_StreamRows`) reads a few rows for
    `SkyImage.peek`.
    """
    header = hdu.header
    dtype = _FAST_DTYPES.get(header.get("BITPIX"))  # raw: unscaled, big-endian
    dtype = None if dtype is None else np.dtype(dtype)
    if (isinstance(hdu, fits.CompImageHDU) or dtype is None or header.get("NAXIS") != 2
            or "BSOFTEN" in header and "BOFFSET" in header):  # (made linear whole: eager)
        return None
    try:
        shape = tuple(int(n) for n in hdu.shape)
    except (TypeError, ValueError):  # read whole, as before, with its own error
        return None
    if len(shape) != 2 or 0 in shape:
        return None
    path, opener, offset = stream

    def load():
        raw = np.empty(shape, dtype)
        buffer = memoryview(raw.reshape(-1).view(np.uint8))
        got = 0
        try:
            with opener(path, "rb") as f:
                f.seek(offset)
                while got < raw.nbytes:
                    n = f.readinto(buffer[got:got + _STREAM_CHUNK])
                    if not n:
                        break
                    got += n
        except _STREAM_ERRORS as exc:
            raise InputError(f"{name}: cannot decompress its pixels ({exc})") from exc
        if got != raw.nbytes:
            raise InputError(f"{name}: the compressed file ends {raw.nbytes - got} bytes into "
                             f"its pixels (shape {shape}, {dtype.name}): it is truncated")
        return raw

    return (np.broadcast_to(np.zeros((), dtype.newbyteorder("=")), shape), load,
            _StreamRows(name, path, opener, offset, shape, dtype))


def _plane_span(file_span, plane, pixels):
    """``(path, byte offset)`` of ``plane`` in the file where the memory-mapped ``pixels``
    of an HDU lie at ``file_span``: the plane `_plane` took of them (the Stokes I plane of a
    cube need not be the first), or None where it is not one run of their bytes."""
    if not plane.flags.c_contiguous or not np.may_share_memory(plane, pixels):
        return None
    start = plane.__array_interface__["data"][0] - pixels.__array_interface__["data"][0]
    if not 0 <= start <= pixels.nbytes - plane.nbytes:
        return None
    return file_span[0], file_span[1] + start


def _from_hdu(hdu, name, hold=None, file_span=None, primary=None, stream=None):
    twice = repeated_scaling(hdu.header)
    if twice:  # which pixel values are meant cannot be told: refused before any is read
        raise InputError(f"{name}: {twice}")
    if hold is None:
        lazy = None
    elif stream is not None:
        lazy = _lazy_stream(hdu, name, stream)
    else:
        lazy = _lazy_pixels(hdu, name)
        lazy = lazy and (*lazy, hdu.section)
    if lazy is None and (hdu.data is None or hdu.header.get("NAXIS", 0) < 2):
        raise InputError(f"{name}: the HDU holds no image")
    data = lazy[0] if lazy else _plane(hdu.data, name, hdu.header)
    if file_span is not None:  # (of the HDU's pixels: the plane's own, a Stokes I plane's)
        file_span = _plane_span(file_span, data, hdu.data)
    header = hdu.header
    wcs = _celestial_wcs(header, name)
    bscale, bzero, blank = _scaling(data, header)
    if "BSOFTEN" in header and "BOFFSET" in header:
        # a Pan-STARRS1 stack: asinh-compressed pixels, which bilinear sampling and block
        # averages need linear: made so whole, in memory (the file is tile-compressed)
        log.info("%s: asinh-compressed pixels (BSOFTEN, BOFFSET) made linear in memory", name)
        data = linear_fluxes(_physical(data, float(bscale), float(bzero), blank), header.get)
        bscale, bzero, blank = 1.0, 0.0, None
        if hold is not None:  # opened here: the HDU lets go of its stored pixels
            del hdu.data
    owned = hold is not None and not _memory_mapped(data)
    facts = header_facts(header, primary)
    # (of the plane read: a cube's Stokes I plane, its degenerate axes dropped)
    steps = _image_quantisation(hdu, float(bscale), data.shape)
    image = SkyImage(data, wcs, name=name, band=_band_or_role(header, primary),
                     filter_band=band_of_header(header, primary),
                     beam=facts.beam, flux_note=facts.flux_note, saturation=facts.saturation,
                     bscale=bscale, bzero=bzero, blank=blank, hold=hold,
                     file_span=file_span,
                     # decompressed by the HDUList opened here (``hold``): no one else's
                     owned=owned, loader=lazy[1] if lazy else None,
                     section=lazy[2] if lazy else None, quantisation=steps)
    if owned and not image.plain and not lazy:
        # the HDU lets go of its decompressed integers, so that the image alone holds them
        # and can drop them for their float32 copy (`SkyImage.resident`)
        del hdu.data
    return image


def _open_fits(name):
    """Open a FITS file for `SkyImage`: raw (unscaled) data memory-mapped, every HDU read.

    A truncated file raises `InputError` in the words of `predict_files` (`truncated_file`):
    astropy only warns of a plain one, and drops the HDUs past the end, which would lose
    bands silently; of a compressed one (gzip, bzip2, xz, zip, Unix compress) that ends
    inside the data of an HDU it skips (a MASK), it says nothing, so such a file's stream is
    walked once. A file that ends inside a header (astropy warns only that it could not
    validate it, and drops that HDU) is refused as truncated too (`_header_cut_short`).
    """
    _check_bzip2_start(name)
    with catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hdul = None
        try:
            # SkyImage applies BSCALE/BZERO/BLANK itself
            hdul = fits.open(name, memmap=True, do_not_scale_image_data=True, mode="readonly",
                             lazy_load_hdus=True)
            _read_every_hdu(hdul, name)
        except (InputError, MemoryError):
            if hdul is not None:
                hdul.close()
            raise
        except ImportError as exc:  # a Unix-compressed (.Z) file without uncompresspy
            raise MissingDependencyError(
                f"{name}: {exc} Install it (pip install uncompresspy), or uncompress the file "
                "(uncompress, gzip -d)") from exc
        except Exception as exc:  # noqa: BLE001 - astropy lets the decompressors' errors
            # through (zlib.error, LZMAError, BadZipFile), and raises KeyError ('BITPIX'),
            # IndexError... of a damaged header
            from ._io import close_files_left_open

            if hdul is not None:
                hdul.close()
            close_files_left_open(exc)  # (a zip file's extracted copy, kept by the chain)
            raise InputError(_unopened(name, exc)) from exc
    cut = next((w for w in caught if "truncated" in str(w.message)), None)
    try:
        with open(name, "rb") as f:
            magic = f.read(6)
        # a gzip, bzip2 or xz file whose stream astropy read to the end of its last HDU's
        # data, where it ends cleanly, is whole (`_stream_whole`, `_stream_ends_cleanly`):
        # only a zip archive's file (extracted by astropy), a stream found short and one
        # that did not end cleanly (a gzip file failing its CRC check), or whose last bytes
        # may be no stream's (`_gzip_trailer_last`, `_last_stream_last`) are walked. (A plain
        # file astropy found short: its words where the data are whole, i.e. their padding
        # cut short, which `truncated_file` leaves.)
        # A Unix-compressed file (.Z, read by uncompresspy) is walked too: astropy reads
        # it whole, and says nothing of a stream that ends inside an HDU it skips.
        streamed = any(magic.startswith(m) for m, _ in _STREAM_OPENERS)
        walk = cut or magic.startswith(LZW_MAGIC) or (
            magic.startswith(_COMPRESSED_MAGIC) and not (
                streamed and _stream_whole(hdul) and _stream_ends_cleanly(hdul)
                and (_gzip_trailer_last(name, hdul) if magic.startswith(b"\x1f\x8b")
                     else _last_stream_last(hdul))))
        truncated = truncated_file(name) if walk else None
        if not truncated and any(str(w.message).startswith("Error validating header for HDU")
                                 for w in caught):  # (astropy dropped the HDUs from there)
            truncated = _header_cut_short(name, hdul)
    except (OSError, ValueError) as exc:  # (astropy read it: a stream broken after that)
        truncated = f"{name}: not a readable FITS file ({exc})"
    if truncated or cut:
        hdul.close()
        raise InputError(truncated or f"{name}: the FITS file is truncated ({cut.message})")
    for w in caught:
        warn_again(w)
    return hdul


def _header_cut_short(name, hdul):
    """The reason (`cut_header`) for the FITS file ``name``, opened by astropy as ``hdul``,
    whose stream ends inside the header of the HDU after the last one astropy read (astropy
    warns that it could not validate that header, and drops the HDU: a MASK, a band), or
    None where the bytes there begin no header (``XTENSION``: astropy's warning stands)."""
    info = hdul.fileinfo(len(hdul) - 1)
    read, close, _ = _file_reader(name)
    try:
        return cut_header(read, name, start=info["datLoc"] + info["datSpan"],
                          first=len(hdul))
    finally:
        close()


def _corrupt_stream(name):
    """The reason (`truncated_file`) for the compressed FITS file ``name`` that astropy could
    not open, where its stream is corrupt (``"corrupt xz stream in FITS file ..."``: astropy
    says only the decompressor's words, or that a header lacks its END card) or ends before
    its end marker (``"truncated gzip stream in FITS file ..."``: astropy says "Empty or
    corrupt FITS file" of a damaged gzip header); else None."""
    try:
        with open(name, "rb") as f:
            if not f.read(6).startswith(_COMPRESSED_MAGIC):
                return None
        reason = truncated_file(name)
    except (OSError, ValueError):
        return None
    return reason if reason and (reason.startswith("corrupt") or reason.startswith(
        "truncated") and " stream in FITS file " in reason) else None


def _check_bzip2_start(name):
    """`InputError` for a bzip2 file ``name`` whose first block is corrupt: its first bytes,
    decompressed here (one block), before astropy reads them. astropy reads a header again
    where its quick parser failed, from where it began: at the start of the file, the same
    decompressor, which libbz2 cannot be fed after its error (the interpreter is aborted:
    "stack smashing detected")."""
    try:
        with open(name, "rb") as f:
            if f.read(3) != b"BZh":
                return
        read, close, _ = _file_reader(name)
    except (OSError, ValueError):  # (astropy says it)
        return
    try:
        read(0, 2880)
    finally:
        close()
    if read.corrupt:
        raise InputError(read.corrupt_reason(name))


def _read_every_hdu(hdul, name):
    """Read every HDU of the FITS file ``name``, opened as ``hdul`` with ``lazy_load_hdus``,
    one at a time; `InputError` where astropy goes back in the file: an HDU whose header it
    cannot parse in a compressed stream is a corrupted HDU of negative size (astropy knows
    no size of the stream), and the next one is read from an earlier byte, the first header
    again, and so on without end, the memory held growing (a damaged gzip file; ``NAXIS1 =
    -64`` in an extension's header, plain or compressed). Its reason: `_unopened`."""
    from astropy.io.fits.hdu.base import _CorruptedHDU

    end = 0
    for k, hdu in enumerate(hdul):
        # (the HDU's own, not the HDUList's, which writes out each header to compare; a
        # corrupted HDU has none, only its size)
        info = hdu.fileinfo() if hasattr(hdu, "fileinfo") else None
        back = hdu.size < 0 if info is None else info["datSpan"] < 0
        if isinstance(hdu, _CorruptedHDU):  # (of a plain file: astropy warns, and drops it)
            hdul.close()
            raise InputError(_unopened(name, _Corrupted(k)))
        if back or info is not None and info["hdrLoc"] < end:
            hdul.close()
            raise InputError(_unopened(name, _HDUsBackwards(
                f"the header of HDU {k if back else k - 1} is damaged: astropy finds the "
                "HDUs after it at earlier bytes")))
        if info is not None:
            end = info["datLoc"] + info["datSpan"]


class _HDUsBackwards(_OwnWords):
    """Where `_read_every_hdu` stopped astropy: not astropy's words."""


def _unopened(name, exc):
    """The reason for the FITS file ``name`` that astropy could not open (``exc``), in the
    words of `predict_files`: its compressed stream is corrupt (`_corrupt_stream`), its first
    bytes are not FITS (`_not_fits_start`), a header keyword is malformed (``BITPIX``
    missing: astropy says only ``KeyError: 'BITPIX'``) or the data are cut short, else
    astropy's words."""
    said = str(exc) if isinstance(exc, (OSError, ValueError)) else (
        f"{type(exc).__name__}: {exc}")
    reason = _corrupt_stream(name) or _not_fits_start(name)
    if reason:
        return reason
    try:
        read, close, _ = _file_reader(name)
    except (OSError, ValueError):
        reason = None
    else:
        try:
            reason = _unreadable(exc, read, name)
        finally:
            close()
    if reason is None or reason.startswith("cannot read FITS: "):  # (astropy's words)
        return f"{name}: not a readable FITS file ({said})"
    return reason


def _not_fits_start(name):
    """The reason (`not_fits_start`) for the file ``name`` that astropy could not open, where
    its first bytes are neither a FITS header nor a compression's (a gzip file whose first
    bytes are damaged); else None."""
    try:
        with open(name, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head.startswith((*_COMPRESSED_MAGIC, *_ASTROPY_STARTS)):
        return None
    return f"{name}: {not_fits_start(head, name)}"


def _stream_ends_cleanly(hdul):
    """Whether the decompressing reader of a gzip, bzip2 or xz file that astropy opened as
    ``hdul`` and read to its end (`_stream_whole`) ends there cleanly: a read gives nothing
    and raises nothing. astropy takes a gzip reader's error at the end of its stream (``CRC
    check failed``, ``Incorrect length of data produced``), and any reader's `EOFError` (a
    stream cut after the last HDU's data: its end marker missing), for the end of the file,
    and the reader stands at the end as after a sound stream, but a second read raises (the
    trailer it checked is behind it). Nothing is decompressed again."""
    try:
        return not hdul[len(hdul) - 1].fileinfo()["file"].read(1)
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, AttributeError,
            IndexError, TypeError):
        return False


def _gzip_trailer_last(name, hdul):
    """Whether the gzip file ``name``, opened by astropy as ``hdul`` and read whole, ends with
    the trailer of its one member, zero padding after it at most: its last four bytes
    before the padding give the size of the FITS stream (that of every HDU astropy read).
    astropy, and Python's gzip reader as it stands, take other bytes after the last member
    for its end (`TrailingBytes`): where this cannot tell (a file of several members, or such
    bytes), `truncated_file` walks the stream. Only the file's last 64 KiB are read."""
    info = hdul.fileinfo(len(hdul) - 1)
    size = (info["datLoc"] + info["datSpan"]) % 2**32
    with open(name, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 65536))
        tail = f.read()
    body = len(tail.rstrip(b"\0"))  # (the size's last bytes may be zero: up to 3 of them)
    return any(int.from_bytes(tail[end - 4:end], "little") == size
               for end in range(max(body, 18), min(body + 3, len(tail)) + 1))


def _last_stream_last(hdul):
    """Whether the reader of the bzip2 or xz file that astropy opened as ``hdul``, read
    whole, found nothing after the stream it read last: Python's readers (`bz2.BZ2File`,
    `lzma.LZMAFile`) take bytes after the last stream that start no other (`TrailingBytes`),
    and zero padding, for the end of the file, having fed them to a new decompressor, which
    is left there, at no stream's end. Where this cannot tell (Python's readers keep that
    decompressor as ``_buffer.raw._decompressor``, a private name), `truncated_file` walks
    the stream, which says which it was. Nothing is read."""
    try:
        reader = hdul.fileinfo(len(hdul) - 1)["file"]._file
        return isinstance(reader, (bz2.BZ2File, lzma.LZMAFile)) \
            and reader._buffer.raw._decompressor.eof is True
    except (AttributeError, IndexError, KeyError, TypeError):
        return False


def _stream_whole(hdul):
    """Whether the gzip, bzip2 or xz file that astropy opened as ``hdul`` (every HDU read)
    holds the data of its last HDU whole, padding and all: astropy looks for one more HDU
    past those data, so its decompressing reader stands past them, or at the end of a
    stream that ends before (such a reader cannot seek beyond the end; the stream's size is
    known only so). False where that cannot be told: `truncated_file` walks the stream."""
    try:
        info = hdul.fileinfo(len(hdul) - 1)
        return info["file"].tell() >= info["datLoc"] + info["datSpan"]
    except (AttributeError, KeyError, TypeError, ValueError, OSError, IndexError):
        return False


def _note_decompression(header, name, how):
    """Say that the image of ``header`` is decompressed whole into memory: a log line, and
    an `AstromorphWarning` above `DECOMPRESS_WARN_BYTES` (before the memory is taken)."""
    try:
        nbytes = abs(int(header["BITPIX"])) // 8 * int(np.prod(
            [int(header[f"NAXIS{i}"]) for i in range(1, int(header["NAXIS"]) + 1)]))
    except (KeyError, TypeError, ValueError):  # a bad header fails with its own error later
        return
    log.info("%s: %s, decompressed whole into memory (%.0f MB)", name, how, nbytes / 1e6)
    if nbytes > DECOMPRESS_WARN_BYTES:
        warn(f"{name}: {how}, so its {nbytes / 2**30:.1f} GiB of pixels are decompressed whole "
             f"into memory (a compressed image cannot be memory-mapped); {DECOMPRESS_ADVICE}",
             AstromorphWarning)


def _from_hdul(hdul, name, *, hold=None, spans=None, compressed_file=False, opener=None):
    """The 2D image HDUs of ``hdul`` with a celestial WCS, as `SkyImage` (mask and weight
    planes, by their EXTNAME, left out where the file also holds an image plane).

    HDUs that cannot be used are skipped with one `UnusableInputWarning` naming the
    reasons, or, when none is usable, reported in one `InputError`. Compressed images
    (tile-compressed HDUs; all of them where ``compressed_file``) are noted by
    `_note_decompression`. ``opener``: the reader of the compressed file ``name``
    (`_STREAM_OPENERS`), whose pixels are then decompressed when sampled (`_lazy_stream`).
    """
    images, errors = [], []
    planes = [k for k, hdu in enumerate(hdul)
              if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
              and hdu.header.get("NAXIS", 0) >= 2]
    auxiliary = {k for k in planes
                 if str(hdul[k].header.get("EXTNAME", "")).strip().upper() in _AUX_EXTNAMES}
    if auxiliary and len(auxiliary) < len(planes):  # a mask or weight beside an image
        log.info("%s: leaving out the mask and weight planes %s", name,
                 ", ".join(f"[{k}] {str(hdul[k].header['EXTNAME']).strip()}"
                           for k in sorted(auxiliary)))
        planes = [k for k in planes if k not in auxiliary]
    for k in planes:
        hdu = hdul[k]
        if compressed_file:
            _note_decompression(hdu.header, f"{name}[{k}]", "a compressed file")
        elif isinstance(hdu, fits.CompImageHDU):
            _note_decompression(hdu.header, f"{name}[{k}]", "a tile-compressed image")
        try:
            images.append(_from_hdu(hdu, f"{name}[{k}]", hold=hold,
                                    file_span=None if spans is None else spans(k, hdu),
                                    primary=hdul[0].header if k else None,
                                    stream=None if opener is None else (
                                        name, opener, hdul.fileinfo(k)["datLoc"])))
        except InputError as exc:
            errors.append(str(exc))
        except (OSError, ValueError, TypeError) as exc:
            errors.append(f"{name}[{k}]: cannot read the data ({exc})")
    if not images:
        raise InputError("; ".join(errors) or f"{name}: no image HDU")
    if errors:  # one warning for the file, however many HDUs it skips
        warn(f"skipping {len(errors)} image HDU(s) of {name}: {first_few(errors, '; ')}",
             UnusableInputWarning)
    return images


def _memory_mapped(array):
    """Whether ``array`` is a view of a memory map (of a file's bytes as they are)."""
    while array is not None:
        if isinstance(array, (np.memmap, mmap.mmap)):
            return True
        array = getattr(array, "base", None)
    return False


def _from_path(path):
    from ._io import check_input_file

    name = os.fspath(check_input_file(path, "image"))
    hdul = _open_fits(name)
    try:
        return _images_of_file(hdul, name)
    except BaseException:
        hdul.close()
        raise


def _images_of_file(hdul, name):
    """The `SkyImage` of the FITS file ``name`` opened as ``hdul`` (kept open by them)."""

    with open(name, "rb") as f:
        magic = f.read(6)
    compressed = magic.startswith(_COMPRESSED_MAGIC)
    opener = next((o for m, o in _STREAM_OPENERS if magic.startswith(m)), None)

    def span(k, hdu):  # memory-mapped HDUs: the bytes in the file are the array
        # (not so in a tile-compressed HDU, nor in a gzipped file, which astropy
        # decompresses into memory, its pixels not read here, nor in a zip archive,
        # whose FITS file astropy extracts into a temporary file and memory-maps there)
        if compressed or isinstance(hdu, fits.CompImageHDU) or not _memory_mapped(hdu.data):
            return None
        return name, hdul.fileinfo(k)["datLoc"]

    return _from_hdul(hdul, name, hold=hdul, spans=span, compressed_file=compressed,
                      opener=opener)


def _parse_one(obj, band=None, contradicted=None):
    """The `SkyImage` list of one image; where ``band`` is given and an image's header names
    another band, ``(band, image name, header band)`` is appended to ``contradicted``."""
    from astropy.wcs import WCS

    if isinstance(obj, (str, os.PathLike)):
        images = _from_path(obj)
    elif isinstance(obj, fits.HDUList):
        images = _from_hdul(obj, "HDUList")
    elif isinstance(obj, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        images = [_from_hdu(obj, "HDU")]
    elif isinstance(obj, tuple) and len(obj) == 2:
        data, wcs = obj
        header = wcs if isinstance(wcs, fits.Header) else None
        if header is not None:
            wcs = _celestial_wcs(wcs, "(array, header)")
        if not isinstance(wcs, WCS):
            raise InputError("an (array, wcs) image needs a celestial astropy.wcs.WCS, got "
                             f"{type(wcs).__name__}")
        beam = None if header is None else beam_of_header(header.get)
        level = None if header is None else saturation_of_header(header)
        celestial = _celestial_part(wcs, "array")
        if header is None:  # a WCS object: no keywords say whether its scale was set
            _check_wcs_object(wcs, "array")
        header = _axes_header(wcs) if header is None else header
        images = [SkyImage(_plane(np.asarray(data), "array", header), celestial,
                           name="array", beam=beam, saturation=level)]
    elif hasattr(obj, "data") and hasattr(obj, "wcs"):  # NDData, CCDData
        if obj.wcs is None:
            raise InputError(f"{type(obj).__name__} image has no WCS")
        wcs = obj.wcs if isinstance(obj.wcs, WCS) else getattr(obj.wcs, "low_level_wcs", None)
        if not isinstance(wcs, WCS):
            raise InputError(f"{type(obj).__name__} image needs a celestial FITS WCS "
                             f"(astropy.wcs.WCS), got {type(obj.wcs).__name__}")
        _celestial_part(wcs, type(obj).__name__)
        _check_wcs_object(wcs, type(obj).__name__)
        data = np.asarray(obj.data)
        if data.dtype.kind not in "biuf":
            raise InputDTypeError(f"{type(obj).__name__} image pixels must be real numbers, got "
                                  f"dtype {data.dtype}")
        data = data.astype(float)
        mask = getattr(obj, "mask", None)
        if mask is not None:
            data = np.where(np.asarray(mask, bool), np.nan, data)
        name = type(obj).__name__
        band_given = (obj.meta or {}).get("band")
        images = [SkyImage(_plane(data, name, _axes_header(wcs)), wcs.celestial, name=name,
                           band=band_given, filter_band=band_given)]
    else:
        raise InputError(f"cannot use {type(obj).__name__} as an image: pass a FITS path, an "
                         "HDU/HDUList, an NDData with WCS, or an (array, WCS) pair")
    if band is not None:
        for im in images:
            if contradicted is not None and _contradicts(band, im.filter_band):
                contradicted.append((band, im.name, im.filter_band))
            im.band = im.filter_band = band
    return images


#: Triplet roles as a band may be given (dict keys ``"science"``, ``"ref"``...): no band.
_ROLE_NAMES = frozenset(_MEMBERS) | {name.lower() for name in _TRIPLET_NAMES}


def _contradicts(given, said):
    """Whether a band ``given`` for an image (a dict key, ``bands=``) names another band than
    ``said``, the one its header's filter keywords name (never for a triplet role)."""
    return (said is not None and given not in _ROLE_NAMES
            and normalise_band(given) != normalise_band(said))


@contextlib.contextmanager
def closing_files(images):
    """Close, on exit, the FITS files that `parse_sky_images` opened for ``images``
    (HDULists the caller passed in stay open)."""
    try:
        yield images
    finally:
        for hdul in {id(im._hold): im._hold for im in images if im._hold is not None}.values():
            hdul.close()


def parse_sky_images(images, *, bands=None, triplet=True):
    """Turn every accepted way of giving images into a list of `SkyImage`.

    Parameters
    ----------
    images : path, HDU, HDUList, NDData, (array, WCS), (array, header), a list of these, or a dict
        A dict maps band (or triplet role) names to an image or a list of
        images (mosaic tiles), e.g. ``{"g": "g.fits", "r": [...], "i": ...}``.
        Otherwise bands come from the FITS headers (BAND/FILTER keywords or an
        EXTNAME such as SCIENCE/REFERENCE/DIFFERENCE).
    bands : sequence of str, optional
        Band of each entry of a list of images, in order.
    triplet : bool, optional
        Whether the images are for a triplet model. Where False and none of them is a
        reference or difference, the images whose EXTNAME says science (``SCI``: the
        science extension of HST and JWST drizzled files, DES coadds) are read by the band
        their filter keywords name (unnamed where they name none).

    Returns
    -------
    list of SkyImage
    """
    out = []
    try:
        _parse_into(out, images, bands)
    except BaseException:
        with closing_files(out):  # the files opened before the failure
            raise
    if not triplet:
        _read_lone_science_by_filter(out)
    return out


def _parse_into(out, images, bands):
    """`parse_sky_images`, appending to ``out`` (which holds what was parsed if it raises)."""
    entries = image_entries(images, bands)
    contradicted = []
    for _, obj, band in entries:
        out.extend(_parse_one(obj, band, contradicted))
    if contradicted:  # a band given against the header: most likely a mix-up of files
        how = "the dict key" if isinstance(images, dict) else "bands=, --band"
        listed = first_few([f"{given!r} ({how}) for {name!r}, whose header (FILTER, BAND or "
                            f"EXTNAME) says {said!r}" for given, name, said in contradicted],
                           "; ")
        warn(f"band given against the image header: {listed}; the given band is used (check "
             "that the files are not mixed up)", AmbiguousInputWarning)
    if not out:
        raise InputError("no images given (an empty dict, or bands without images)"
                         if isinstance(images, dict) else "no images given")


def image_entries(images, bands=None):
    """The images of a `parse_sky_images` argument one by one, in the order it reads them, as
    ``(key, image, band)``: ``key`` the dict key it was given under (None outside a dict),
    ``band`` the one it is given (lowercased; None where its headers are to say)."""
    from astropy.wcs import WCS

    if isinstance(images, dict):
        entries = []
        for key, value in images.items():
            values = value if isinstance(value, (list, tuple)) and not (
                isinstance(value, fits.HDUList)
                or isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], WCS)) \
                else [value]
            entries.extend((key, v, str(key).lower()) for v in values)
        return entries
    if not isinstance(images, (list, tuple)) or isinstance(images, fits.HDUList) or (
            isinstance(images, tuple) and len(images) == 2
            and isinstance(images[1], (WCS, fits.Header))):
        images = [images]
    if bands is not None and (isinstance(bands, (str, bytes)) or not hasattr(bands, "__len__")):
        raise InvalidArgumentTypeError(f"bands must be a list of band names, one per image, got "
                                       f"{bands!r}")
    if bands is not None and len(bands) != len(images):
        raise InputError(f"got {len(bands)} band names for {len(images)} images")
    return [(None, obj, None if bands is None else str(bands[k]).lower())
            for k, obj in enumerate(images)]
