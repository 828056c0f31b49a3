"""Vectorised, WCS-aware stamps of many sources from (memory-mapped) images.

Each stamp is a square grid of ``size`` pixels of ``pixel_scale`` arcsec on
the tangent plane of its source, north up and east left (FITS orientation:
row 0 at the bottom; `annotate` takes ICRS north whatever the image's frame).
Its pixel centres are mapped into the image in one go:

1. the exact WCS transform (`astropy.wcs.WCS.world_to_pixel_values`, SIP and
   other distortions included) is evaluated on a 3 x 3 grid of nodes per
   stamp (corners, edge mid-points, centre);
2. those node positions are interpolated quadratically to every stamp pixel
   (exact for a WCS that is locally quadratic over the stamp, far below
   0.01 pixel for TAN/SIP images on stamp scales), checked against the WCS at
   four more points per stamp: a stamp where they differ by more than
   `NODE_TOLERANCE_PIXELS` pixel (the image's, or the stamp's where these are
   coarser: one across the longitude seam of an all-sky map, whose pixels lie
   on both edges of the image), or where some of them, not all, lie past the
   limb of a SIN or other bounded projection, is mapped pixel by pixel (its
   pixels past the limb are outside the image);
3. the image is sampled by bilinear interpolation, as ``reproject_interp``
   does, with a vectorised gather of the four neighbours from the flat,
   memory-mapped data; where a stamp pixel covers several image pixels the
   image is first block-averaged by that factor along each axis (an image
   pyramid, made once per image and factors; for a sparse catalogue on a
   memory-mapped image, the blocks under the stamps alone) so that
   downsampling does not alias.

No step loops over sources in Python: sources are processed in chunks of
array operations, and only the image pages under the stamps are read.
"""
import logging
import threading
import weakref

import numpy as np

from ._readers._fits import unsigned_integers
from .exceptions import InputDTypeError, InputError
from .preprocessing._checks import invalid_pixels

__all__ = ["SkyImage", "StampResult", "cut_stamps", "STAMP_CHUNK", "SAMPLE_PIXELS",
           "STRIP_PIXELS", "ON_PIXEL_SCALE", "ON_PIXEL_TURN_DEG", "ON_PIXEL_TOLERANCE"]

log = logging.getLogger(__name__)

#: Sources per part of `annotate` (a thread's unit of work; see also
#: `astromorph._annotate.PART_PIXELS`).
STAMP_CHUNK = 512

#: Stamp pixels that `cut_stamps` maps and samples together (its chunk of sources, at
#: least one stamp): the working memory of a chunk is some 40 bytes a stamp pixel (pixel
#: coordinates, integer indices and the four neighbours of `_take_bilinear`), about 20 MB
#: for 2**19 pixels, whatever the number of sources (512 stamps of 64 x 64 took 190 MB).
SAMPLE_PIXELS = 1 << 19

#: Bytes that the whole-image copies of `SkyImage.resident` may hold together
#: (all images alive at once: the tiles of a mosaic share the budget).
RESIDENT_MAX_BYTES = 1 << 30

_resident_bytes = [0]  # held by live copies; released when their SkyImage is collected
_resident_lock = threading.Lock()


def _reserve(nbytes):
    """Take ``nbytes`` of the whole-image budget; False if it would be exceeded."""
    with _resident_lock:
        if _resident_bytes[0] + nbytes > RESIDENT_MAX_BYTES:
            return False
        _resident_bytes[0] += nbytes
        return True


def _release(nbytes):
    with _resident_lock:
        _resident_bytes[0] -= nbytes

_ARCSEC = np.pi / (180.0 * 3600.0)


def _check_wcs(wcs, name):
    """`InputError` for a celestial WCS that cannot map pixels to the sky: a non-finite
    reference point or a singular or non-finite pixel scale matrix (every source would
    otherwise come out 'off the image')."""
    w = wcs.wcs
    bad = []
    if not np.all(np.isfinite(w.crval)):
        bad.append(f"CRVAL = {w.crval.tolist()}")
    if not np.all(np.isfinite(w.crpix)):
        bad.append(f"CRPIX = {w.crpix.tolist()}")
    try:
        matrix = wcs.pixel_scale_matrix
    except Exception as exc:  # noqa: BLE001 - astropy raises several types
        bad.append(f"no pixel scale ({exc})")
    else:
        if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) == 0:
            bad.append(f"singular pixel scale matrix {np.round(matrix, 12).tolist()} deg/pixel")
    if bad:
        raise InputError(f"{name}: its WCS cannot place sources: {'; '.join(bad)}")


def _unset_scale_problem(wcs):
    """Why the celestial axes of an `astropy.wcs.WCS` object have no pixel scale but
    wcslib's default of 1 degree/pixel, or None.

    A WCS built in memory (``WCS(naxis=2)``, then ``ctype``, ``crval`` and ``crpix``) whose
    ``cdelt``, ``cd`` and ``pc`` are never set keeps wcslib's defaults, ``cdelt = [1, 1]``
    and an identity ``pc``, and places pixels 1 degree apart without a word: the in-memory
    counterpart of a FITS header without CDELTi, CDi_j or PCi_j (refused by its keywords,
    `astromorph._readers._fits.wcs_matrix_problem`). A WCS object does not say which of its
    values were set, so the rule is on the values: no CD matrix, ``cdelt`` exactly
    ``[1, 1]`` on the celestial axes (the default; a real 1 degree/pixel image has
    ``CDELT1 = -1``, RA increasing to the east) and a ``pc`` that is a rotation or
    reflection (the identity, or ``crota``), so that nothing gives a scale. Pixels of 1
    degree meant as such are said with a CD matrix (``wcs.wcs.cd``) or a negative cdelt.
    """
    try:
        w = wcs.celestial.wcs
        if w.naxis != 2 or w.has_cd():
            return None
        cdelt, pc = np.asarray(w.cdelt, float), np.asarray(w.get_pc(), float)
    except Exception:  # noqa: BLE001 - a WCS wcslib cannot read: said by `_check_wcs`
        return None
    if not (np.all(cdelt == 1.0) and pc.shape == (2, 2)
            and np.allclose(pc @ pc.T, np.eye(2), rtol=0, atol=1e-12)):
        return None
    return ("cdelt = [1, 1] and no cd or pc: no pixel scale set (wcslib silently takes its "
            "default of 1 degree/pixel); set wcs.wcs.cdelt or wcs.wcs.cd (degrees per pixel), "
            "or, for pixels of 1 degree, an explicit cd matrix")


def _check_wcs_object(wcs, name):
    """`_check_wcs` of an `astropy.wcs.WCS` object given by the user (no FITS header to
    read its keywords from), and `InputError` where its pixel scale was never set
    (`_unset_scale_problem`)."""
    problem = _unset_scale_problem(wcs)
    if problem:
        raise InputError(f"{name}: its WCS cannot place sources: {problem}")
    _check_wcs(wcs.celestial, name)


def _celestial_frame(wcs, name):
    """The astropy frame of a celestial WCS, or `InputError` naming its CTYPE and ``name``.

    ``astropy.wcs.utils.wcs_to_celestial_frame`` reads RADESYS before CTYPE, and wcslib
    fills RADESYS (ICRS by default) for ecliptic axes too, so an ``ELON``/``ELAT`` image
    would be read as RA/Dec. Here, as the FITS WCS standard (Calabretta & Greisen 2002)
    has it, ecliptic axes refer to the equator and equinox that RADESYS and EQUINOX give:
    ICRS is the mean ecliptic and equinox of J2000, FK5 that of EQUINOX (J2000 without
    it), both astropy's `~astropy.coordinates.BarycentricMeanEcliptic` (a rotation of
    ICRS; the geocentric frame would add aberration of the date). Ecliptic axes of other
    systems (FK4, GAPPT), helioecliptic ``HLON``/``HLAT``, Earth-fixed ``TLON``/``TLAT``
    (astropy's ITRS), any other axes that astropy would read as RA/Dec, and axes astropy
    cannot name are refused. RA/Dec, Galactic and every other frame are astropy's (bit for
    bit).
    """
    from astropy.coordinates import FK4, FK5, ICRS, ITRS, BarycentricMeanEcliptic, FK4NoETerms
    from astropy.time import Time
    from astropy.wcs.utils import wcs_to_celestial_frame

    w = wcs.wcs
    ctype = [w.ctype[w.lng], w.ctype[w.lat]] if min(w.lng, w.lat) >= 0 else list(w.ctype)
    axes = tuple(c[:4].rstrip("-") for c in ctype)
    accepted = ("annotate takes RA/DEC (ICRS, FK5, FK4), GLON/GLAT, ELON/ELAT of RADESYS "
                "ICRS or FK5, and other sky frames astropy's wcs_to_celestial_frame knows")
    if axes == ("ELON", "ELAT"):
        radesys, equinox = w.radesys.strip().upper(), w.equinox
        if not radesys:  # the FITS default, as wcslib sets it up
            radesys = "ICRS" if np.isnan(equinox) else "FK4" if equinox < 1984.0 else "FK5"
        if radesys == "ICRS":
            return BarycentricMeanEcliptic()  # equinox J2000
        if radesys == "FK5":
            return BarycentricMeanEcliptic(
                equinox=Time(2000.0 if np.isnan(equinox) else equinox, format="jyear"))
        raise InputError(f"{name}: its WCS has ecliptic axes CTYPE = {ctype} of RADESYS = "
                         f"{radesys!r}, which astropy has no ecliptic frame for; {accepted}")
    try:
        frame = wcs_to_celestial_frame(wcs)
    except Exception as exc:  # noqa: BLE001 - ValueError, or others for planetary bodies
        raise InputError(f"{name}: its WCS axes CTYPE = {ctype} are in no celestial frame "
                         f"astropy knows ({type(exc).__name__}: {exc}); {accepted}") from exc
    if isinstance(frame, (ICRS, FK5, FK4, FK4NoETerms)) and axes != ("RA", "DEC"):
        raise InputError(f"{name}: its WCS axes CTYPE = {ctype} are not RA/Dec, but astropy "
                         f"would read them as {frame.name.upper()} RA/Dec (by RADESYS = "
                         f"{w.radesys!r}); {accepted}")
    if isinstance(frame, ITRS):
        raise InputError(f"{name}: its WCS axes CTYPE = {ctype} are Earth-fixed (astropy's "
                         f"ITRS), not a sky frame; {accepted}")
    return frame


#: Pixels of a row strip of the whole-image passes: their temporaries (about 7 bytes a
#: pixel for a scaled or sentinel check) stay small beside the image's float32 copy.
STRIP_PIXELS = 1 << 18


def _row_strips(data, *others):
    """Row strips of a 2D array of about `STRIP_PIXELS` pixels each (bounded temporaries),
    or tuples of the same strips of ``data`` and ``others`` (arrays of its number of rows)."""
    step = max(1, STRIP_PIXELS // max(data.shape[1], 1))
    for y0 in range(0, data.shape[0], step):
        yield (data[y0:y0 + step], *(o[y0:y0 + step] for o in others)) if others \
            else data[y0:y0 + step]


def _sentinels_to_nan(data):
    """Masking sentinels and infinities of a 2D float array -> NaN, in place, by strips."""
    for strip in _row_strips(data):
        strip[invalid_pixels(strip)] = np.nan


def _has_sentinel(data):
    """Whether a 2D float array holds masking sentinels or infinities (NaN aside), checked
    in row strips so that no temporary array of the image's size is made."""
    for strip in _row_strips(data):
        bad = invalid_pixels(strip)
        if bad.any() and not np.isnan(strip[bad]).all():
            return True
    return False


class SkyImage:
    """A 2D image with a celestial WCS, readable without loading it whole.

    Parameters
    ----------
    data : numpy.ndarray
        2D pixel array; may be a `numpy.memmap`. For integer FITS data pass the
        raw (unscaled) array with ``bscale``, ``bzero`` and ``blank``.
    wcs : astropy.wcs.WCS
        Celestial WCS of the image (2 pixel axes).
    name : str
        For messages and provenance.
    band : str or None
        Band or role (``"g"``, ``"science"``...), where known.
    filter_band : str or None
        The band that the header's filter keywords name, where known: that of an image
        whose EXTNAME makes ``band`` a triplet role (an HST drizzled ``SCI`` extension),
        read when the images are not a triplet.
    beam : float or None
        Restoring beam FWHM (major axis) in arcsec from the header (BMAJ), where known.
    flux_note : str or None
        What the FITS header says of the pixel unit where it is not SDSS nanomaggies
        (`astromorph._readers._fits.flux_unit_note`).
    saturation : float or None
        Saturation level of the pixels from the FITS header
        (`astromorph._readers._fits.saturation_of_header`), where known.
    owned : bool
        ``data`` is this image's own array (decompressed from a compressed file): plain
        float32 data are made native and their masking sentinels NaN in place, and sampled
        there, instead of being copied whole; other data (scaled integers) are let go once
        `resident` has their float32 copy, so that the image is not held twice.
    loader : callable or None
        Reads the pixels (a tile-compressed HDU or a gzipped file, decompressed whole):
        ``data`` is then a placeholder of their shape and dtype, and the pixels are read
        when first sampled, and let go again (to be read anew if asked for) once the sources
        announced by `expect_sources` are done (`done_sources`).
    section : object or None
        With ``loader``: ``section[row, x0:x1]`` gives raw pixels of a row without reading
        the image whole (``CompImageHDU.section``; for a gzipped file, a stream read in one
        pass over rows asked for in order, closed by its ``release()`` where it has one),
        for `peek`.
    quantisation : tuple or None
        Where the pixels were quantised (a float image tile-compressed with loss, fpack's
        default): ``(tile, steps)``, the compression tile shape ``(rows, columns)`` and the
        quantisation step of each tile (its ZSCALE, in the units of the pixels), an array
        ``(tile rows, tile columns)``; a flat area then reads back as values up to one step
        apart (`cut_stamps` gives the spread this leaves under each stamp). None: pixels as
        written.
    """

    def __init__(self, data, wcs, *, name="image", band=None, bscale=1.0, bzero=0.0, blank=None,
                 hold=None, file_span=None, owned=False, beam=None, flux_note=None,
                 saturation=None, filter_band=None, loader=None, section=None,
                 quantisation=None):
        if data.ndim != 2:
            raise InputError(f"{name}: expected a 2D image, got shape {data.shape}")
        if data.dtype.kind not in "biuf":
            # complex pixels would lose their imaginary part silently, objects and strings
            # fail deep inside the sampling
            raise InputDTypeError(f"{name}: image pixels must be real numbers, got dtype "
                                  f"{data.dtype}")
        if data.dtype.kind == "f" and data.dtype.itemsize < 4:
            data = data.astype(np.float32)  # float16: cast once, not at every gather
        if wcs is not None:
            _check_wcs(wcs, name)
        self.wcs, self.name, self.band = wcs, name, band
        self.beam, self.flux_note, self.saturation = beam, flux_note, saturation
        self.filter_band = filter_band
        self.quantisation = quantisation
        #: (bscale, bzero, blank) of the raw pixels, as given (restored when they are read
        #: anew: `_drop_raw` sets those of its float32 copy)
        self._scaling = (float(bscale), float(bzero), blank)
        self._owned = owned
        self._hold = hold  # keeps an HDUList (and its memory map) open
        self._levels = {}  # block-averaged copies by (row, column) factors
        self._sampled = 0
        self._planned = 0
        self._declined = False
        self._budget = None  # releases the share of `RESIDENT_MAX_BYTES` taken by `resident`
        # (path, byte offset) of uncompressed FITS data: read whole with one read call
        self._file_span = file_span
        self._loader, self._section = loader, section
        self._raw_dtype = data.dtype  # (of the pixels ``loader`` reads: a placeholder's)
        #: Times the pixels were read by ``loader`` (decompressions of a compressed tile).
        self.decompressions = 0
        self._uses = None  # sources announced by `expect_sources` and not yet done
        self.shape = data.shape
        #: Rows and columns of image area (those of ``shape``; fractional for a block-averaged
        #: `level`, whose partial last blocks stand for part of a block of image).
        self.extent = tuple(float(n) for n in data.shape)
        self._set_pixels(data, owned and loader is None, placeholder=loader is not None)
        #: Whether the pixels are in hand (False: ``loader`` reads them when sampled).
        self._loaded = loader is None
        # astropy.wcs is not thread-safe, and pyramid levels are made once:
        # threads that cut stamps from one image take turns for both.
        self.lock = threading.RLock()

    def _set_pixels(self, data, owned, *, placeholder=False):
        """Take ``data`` as the image's pixels (a ``placeholder`` of their shape and dtype:
        none read yet), with the raw scaling of `_scaling`."""
        self.bscale, self.bzero, self.blank = self._scaling
        blank = self.blank
        # an in-memory array no one else holds: dropped for its float32 copy (see `resident`)
        self._disposable = (owned and data.flags.writeable and not isinstance(data, np.memmap))
        owned = (owned and data.dtype.kind == "f" and data.dtype.itemsize == 4
                 and blank is None and self.bscale == 1.0 and self.bzero == 0.0
                 and data.flags.writeable and not isinstance(data, np.memmap))
        if owned and not data.dtype.isnative:
            # big-endian FITS pixels decompressed into memory: swapped where they are (the
            # float32 values `_strips` would copy them to), so no second copy is made
            data = data.byteswap(inplace=True).view(data.dtype.newbyteorder())
        self.data = data
        #: What `take` reads, as one tuple (swapped whole by `_drop_raw`, so that a thread in
        #: `take` never mixes the raw array with the scaling of the float32 copy):
        #: flat array (or None: not contiguous), 2D array, (bscale, bzero, blank).
        self._pixels = (data.reshape(-1) if data.flags.c_contiguous else None, data,
                        (self.bscale, self.bzero, blank))
        #: Float data needing no scaling or BLANK handling (sampled directly).
        self.plain = (data.dtype.kind == "f" and blank is None and self.bscale == 1.0
                      and self.bzero == 0.0)
        # data sampled directly: plain native floats (an in-memory array), or
        # the copy made by `resident`
        self._resident = data if self.plain and data.dtype.isnative and not isinstance(
            data, np.memmap) and not placeholder else None
        if self._resident is not None and _has_sentinel(data):
            # masking sentinels (or inf): sampled as NaN, so that the interpolation
            # weights do not spread them over their neighbours as finite values
            if owned:
                _sentinels_to_nan(data)
            else:
                self._resident = np.where(invalid_pixels(data), np.float32(np.nan),
                                          data).astype(np.float32)

    def _load(self):
        """Read the pixels with ``loader`` where they are not in hand (once, whichever
        thread asks first)."""
        with self.lock:
            if self._loaded:
                return
            data = self._loader()
            self.decompressions += 1
            log.debug("%s: pixels read (%d time(s))", self.name, self.decompressions)
            if data.shape != self.shape or data.dtype.kind != self.data.dtype.kind:
                raise InputError(f"{self.name}: its pixels ({data.dtype}, shape {data.shape}) "
                                 f"are not those its header gives ({self.data.dtype}, shape "
                                 f"{self.shape})")
            self._set_pixels(data, self._owned)
            self._loaded = True

    def _unload(self):
        """Let go of the pixels read by ``loader`` (read anew if asked for again)."""
        with self.lock:
            # (the raw dtype, not that of the float32 copy `_drop_raw` may have left)
            self._set_pixels(np.broadcast_to(np.zeros((), self._raw_dtype), self.shape), False,
                             placeholder=True)
            self._levels = {}
            if self._budget is not None:  # the whole-image copy's share of the budget
                self._budget()
                self._budget, self._declined = None, False
            self._loaded = False
            log.debug("%s: pixels let go", self.name)

    def _let_go_copies(self):
        """Let go of the float32 copy of the pixels that `resident` made beside them (a
        memory-mapped or scaled image converted whole), its share of `RESIDENT_MAX_BYTES`
        with it, and of the block-averaged copies of `level`: the image is sampled again, if
        asked, through `take` (its own pixels, such as those of a decompressed image that
        `_drop_raw` left as its float32 copy, are kept)."""
        with self.lock:
            if self._budget is not None and self._resident is not self.data:
                self._resident = None
                self._budget()
                self._budget = None
                log.debug("%s: its float32 copy let go", self.name)
            self._levels = {}

    def expect_sources(self, n):
        """Announce ``n`` sources to be cut from the image: once `done_sources` has counted
        as many, the pixels read by ``loader`` are let go, and the whole-image copies that
        the stamps were sampled from (`resident`, `level`) are, so that a mosaic whose
        sources come tile by tile holds about one tile's pixels at a time."""
        with self.lock:
            self._uses = (self._uses or 0) + int(n)

    def done_sources(self, n):
        """Count ``n`` sources of `expect_sources` as cut (nothing where none were
        announced); after the last, the pixels read by ``loader`` and the whole-image
        copies are let go."""
        with self.lock:
            if self._uses is None:
                return
            self._uses -= int(n)
            if self._uses > 0:
                return
            if self._loader is not None and self._loaded:
                self._unload()
            else:
                self._let_go_copies()

    def peek(self, flat_index):
        """The values `take` gives at flat indices, without reading by ``loader`` pixels
        not in hand: the rows of a compressed image that hold them are read by
        ``section`` (a few tiles of its compression, not the whole image; or one pass
        through the stream of a gzipped file, which ``section.release()`` then closes)."""
        flat_index = np.asarray(flat_index, np.int64)
        if self._loaded or self._section is None or not flat_index.size:
            return self.take(flat_index)
        y, x = np.divmod(flat_index, self.shape[1])
        raw = np.empty(flat_index.shape, self.data.dtype)
        order = np.argsort(y, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(y[order]) != 0])
        try:
            for a, b in zip(starts, np.r_[starts[1:], len(order)]):  # rows in order
                k = order[a:b]
                x0, x1 = int(x[k].min()), int(x[k].max()) + 1
                raw[k] = np.asarray(self._section[int(y[k[0]]), x0:x1])[x[k] - x0]
        finally:  # (a compressed file's stream, kept open from row to row)
            release = getattr(self._section, "release", None)
            if release is not None:
                release()
        return self._scaled(raw, scaling=self._scaling)

    def drop_pixels(self):
        """Close the file the image was read from and let go of its pixels, keeping its
        shape, WCS, band and header facts: for an image read for its footprint alone (a
        compressed one is decompressed whole into memory when read)."""
        with self.lock:
            if self._hold is not None:
                self._hold.close()
            self._hold = None
            self._loader, self._section, self._loaded = None, None, True
            self.data = np.broadcast_to(np.zeros((), self.data.dtype), self.data.shape)
            self._pixels = (None, self.data, self._pixels[2])
            self._resident, self._levels = None, {}

    def world_to_pixel(self, lon, lat):
        """``wcs.all_world2pix`` (longitude, latitude in degrees -> 0-based pixels, whatever
        the order of the WCS's axes), thread-safe.

        NaN where a distortion (SIP...) cannot be inverted: far off the image its
        polynomial's inverse diverges, and astropy's 'best solution' there, which
        ``world_to_pixel_values`` returns with a warning, may fall on the image.
        """
        from astropy.wcs import NoConvergence

        lon, lat = np.broadcast_arrays(np.asarray(lon, dtype=float), np.asarray(lat, dtype=float))
        # world coordinates in the WCS's axis order: Dec first in a transposed image
        world = (lat, lon) if self.wcs.wcs.lat == 0 else (lon, lat)
        with self.lock:
            try:
                x, y = self.wcs.all_world2pix(world[0].ravel(), world[1].ravel(), 0)
            except NoConvergence as exc:
                x, y = (np.array(c, dtype=float) for c in exc.best_solution.T)
                if exc.divergent is not None:  # (slowly converging ones are kept, as astropy does)
                    x[exc.divergent] = y[exc.divergent] = np.nan
        return np.reshape(x, lon.shape), np.reshape(y, lon.shape)

    def __repr__(self):
        return f"<SkyImage {self.name} {self.shape[1]}x{self.shape[0]} band={self.band}>"

    def take(self, flat_index):
        """Pixel values (float32, scaled, BLANK -> NaN) at flat indices."""
        if not self._loaded:
            self._load()
        flat, data, scaling = self._pixels
        if flat is not None:
            raw = flat[flat_index]
        else:
            raw = data[np.unravel_index(flat_index, self.shape)]
        return self._scaled(raw, scaling=scaling)

    def _scaled(self, raw, out=None, *, scaling=None):
        """Raw pixel values -> native float32, BLANK -> NaN, times BSCALE plus BZERO;
        masking sentinels (|value| >= 1e30, e.g. ZTF's -3.4e38) and inf -> NaN. Written
        into ``out`` (float32, the shape of ``raw``) where given, with no float copy besides.
        ``scaling``: (bscale, bzero, blank), by default the image's."""
        bscale, bzero, blank = (self.bscale, self.bzero, self.blank) if scaling is None \
            else scaling
        values = np.empty(raw.shape, np.float32) if out is None else out
        # values beyond the float32 range (float64 1e300, a large BSCALE) become +-inf, and
        # NaN below with the sentinels, without numpy's overflow warning
        # FITS's unsigned integers: the sign bit flipped, exactly (`unsigned_integers`)
        unsigned = unsigned_integers(raw, bscale, bzero)
        with np.errstate(over="ignore", invalid="ignore"):
            values[...] = raw if unsigned is None else unsigned  # cast (and byte swap) once
            if blank is not None:
                values[raw == blank] = np.nan
            if unsigned is None and (bscale != 1.0 or bzero != 0.0):
                values *= np.float32(bscale)  # in place: the float32 values of
                values += np.float32(bzero)   # ``values * bscale + bzero``
        values[invalid_pixels(values)] = np.nan
        return values

    def _scaled_whole(self, raw):
        """`_scaled` of a whole 2D image, by row strips into one float32 array."""
        out = np.empty(raw.shape, np.float32)
        for part, values in _row_strips(raw, out):
            self._scaled(part, out=values)
        return out

    def plan_samples(self, n_samples):
        """Announce ``n_samples`` stamp pixels to come (lets `resident` read the image at once)."""
        with self.lock:
            self._planned += int(n_samples)

    def resident(self, n_samples):
        """The image's pixels held in memory, to sample directly, or None (use `take`).

        Plain float data held in memory are sampled where they are. Other data
        (scaled integers, memory maps, big-endian ones, whose byte swapping slows
        sampling) are read once, whole, into native float32 when the stamps
        have asked (``n_samples`` per call), or are planned to ask
        (`plan_samples`), for as many samples as the image has pixels, while
        all such copies together stay within `RESIDENT_MAX_BYTES` (the tiles
        of a large mosaic share it; a copy is let go after the last source
        announced by `expect_sources`, `done_sources`); a sparse catalogue on a large image
        keeps reading only the pages under its stamps, through `take`.
        Either way a pixel has the value `take` gives it.
        """
        with self.lock:
            if not self._loaded:
                self._load()
            self._sampled += int(n_samples)
            if (self._resident is None and not self._declined
                    and max(self._sampled, self._planned) >= self.data.size):
                nbytes = 4 * self.data.size
                if _reserve(nbytes):
                    log.debug("%s: reading the image whole into memory", self.name)
                    try:
                        resident = self._read_whole()
                        self._resident = self._strips() if resident is None else resident
                    except BaseException:
                        _release(nbytes)
                        raise
                    self._budget = weakref.finalize(self, _release, nbytes)
                    if self._disposable and self._resident is not self.data:
                        self._drop_raw()
                else:  # the budget is spent (other images): stay page by page
                    self._declined = True
            return self._resident

    def _drop_raw(self):
        """Let go of the raw array that `_resident` now copies (a decompressed image, no
        one else's): from here on the image is its float32 copy (with the lock held)."""
        values = self._resident
        self._pixels = (values.reshape(-1), values, (1.0, 0.0, None))  # `take`, at once
        self.data = values
        self.bscale, self.bzero, self.blank, self.plain = 1.0, 0.0, None, True
        self._file_span = None
        log.debug("%s: its raw pixels are let go for their float32 copy", self.name)

    def level(self, fy, fx):
        """This image block-averaged by ``fy`` rows and ``fx`` columns (NaN-aware), cached.

        A block-averaged copy (one pass over the image) where the image is in
        memory or the stamps will sample it densely (`plan_samples`: at least an
        eighth of its pixels over ``fy * fx``); otherwise a `_BinnedView`, which
        averages only the blocks under the stamps, so that a sparse catalogue
        does not read a memory-mapped image whole nor hold a copy of a quarter of
        it per tile.
        """
        if fy == fx == 1:
            return self
        with self.lock:
            if not self._loaded:
                self._load()
            cached = self._levels.get((fy, fx))
            # on demand, each stamp pixel gathers 4 * fy * fx image pixels (bilinear
            # sampling of block means): a copy is cheaper where that reaches the image size
            dense = (self._resident is not None or 8 * fy * fx
                     * max(self._sampled, self._planned) >= self.data.size)
            if cached is None or (dense and isinstance(cached, _BinnedView)):
                if dense:
                    cached = SkyImage(self._strips(fy, fx), None,
                                      name=f"{self.name}/{fy}x{fx}", band=self.band)
                    cached.extent = (self.shape[0] / fy, self.shape[1] / fx)
                else:
                    cached = _BinnedView(self, fy, fx)
                self._levels[fy, fx] = cached
            return cached

    def _read_whole(self):
        """Native float32 copy of an uncompressed FITS image by one read call, or None.

        Faster than touching every page of the memory map; None where the
        file cannot be read so (then `_strips` reads the memory map).
        """
        if self._file_span is None:
            return None
        path, offset = self._file_span
        raw = np.empty(self.data.shape, self.data.dtype)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                if f.readinto(memoryview(raw).cast("B")) != raw.nbytes:
                    return None
        except (OSError, ValueError, TypeError):
            return None
        if not raw.dtype.isnative:
            raw = raw.byteswap(inplace=True).view(raw.dtype.newbyteorder())
        # the values `_scaled` gives, computed in row strips: its whole-image temporaries
        # (|value|, masks, scaled copies) are several times the image and miss the caches
        # (an 8192 x 8192 float32 image: 0.06 s instead of 0.3 s for the sentinel check)
        if self.plain:
            with np.errstate(over="ignore"):  # float64 beyond float32: inf, then NaN
                values = raw.astype(np.float32, copy=False)  # raw is a fresh array
            _sentinels_to_nan(values)  # as `_scaled`
            return values
        return self._scaled_whole(raw)

    def _strips(self, fy=1, fx=1):
        """Float32 copy of the image read from ``data`` in row strips: as it is
        (factors 1, the values `take` gives) or block-averaged over ``fy`` rows
        and ``fx`` columns (NaN-aware).

        Blocks at the top and right edges that the image fills only in part
        hold the mean of the pixels they have, so that no edge pixel is lost.
        """
        ny, nx = -(-self.shape[0] // fy), -(-self.shape[1] // fx)
        if fy == fx == 1:  # the values `take` gives, as they are
            return self._scaled_whole(self.data)
        out = np.empty((ny, nx), np.float32)
        strip = max(1, (1 << 22) // max(self.shape[1], 1) // fy) * fy
        for y0 in range(0, self.shape[0], strip):  # row strips: bounded memory
            y1 = min(y0 + strip, self.shape[0])
            block = self._scaled(self.data[y0:y1])
            rows = -(-(y1 - y0) // fy)
            if block.shape != (rows * fy, nx * fx):  # partial blocks: NaN padding
                block = np.pad(block, ((0, rows * fy - block.shape[0]),
                                       (0, nx * fx - block.shape[1])),
                               constant_values=np.nan)
            block = block.reshape(rows, fy, nx, fx)
            # summed pixel by pixel of the block in `_BinnedView.take`'s order, in float64,
            # so that the copy's means are its bit for bit (`.sum(axis=(1, 3))` adds in
            # another order): which of the two a stamp is sampled from depends on how many
            # sources share the call, and a row's result must not
            total = np.zeros((rows, nx))
            count = np.zeros((rows, nx), np.int32)
            for dy in range(fy):
                for dx in range(fx):
                    v = block[:, dy, :, dx]
                    good = np.isfinite(v)
                    total += np.where(good, v, 0)
                    count += good
            with np.errstate(invalid="ignore", divide="ignore"):
                out[y0 // fy:y0 // fy + rows] = np.where(count > 0, total / count, np.nan)
        return out


class _BinnedView:
    """A `SkyImage` block-averaged by ``fy`` rows and ``fx`` columns (NaN-aware, as
    `SkyImage.level`'s copy, partial blocks at the top and right edges included), computed
    on demand from the blocks that `take` is asked for."""

    def __init__(self, image, fy, fx):
        self.image, self.fy, self.fx = image, int(fy), int(fx)
        self.shape = (-(-image.shape[0] // fy), -(-image.shape[1] // fx))
        self.extent = (image.shape[0] / fy, image.shape[1] / fx)
        self.name, self.band = f"{image.name}/{fy}x{fx}", image.band

    def resident(self, n_samples):
        return None  # sampled through `take`

    def take(self, flat_index):
        """Block means (float32; NaN where a block has no finite pixel) at flat indices."""
        (ny, nx), fy, fx = self.image.shape, self.fy, self.fx
        y, x = np.divmod(np.asarray(flat_index, np.int64), self.shape[1])
        total = np.zeros(np.shape(flat_index))  # float64: blocks of many pixels
        count = np.zeros(np.shape(flat_index), np.int32)
        for dy in range(fy):  # fy * fx gathers of whole arrays, not a loop over sources
            for dx in range(fx):
                sy, sx = y * fy + dy, x * fx + dx
                inside = (sy < ny) & (sx < nx)  # partial blocks: the pixels they have
                v = np.full(np.shape(flat_index), np.nan, np.float32)
                v[inside] = self.image.take(sy[inside] * nx + sx[inside])
                good = np.isfinite(v)
                total += np.where(good, v, 0)
                count += good
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / count, np.nan).astype(np.float32)


class StampResult:
    """Stamps and per-stamp diagnostics from `cut_stamps`.

    Attributes
    ----------
    stamps : numpy.ndarray, float32, (N, size, size)
        NaN where the stamp falls outside the image or on blank pixels.
    outside : numpy.ndarray, (N,)
        Fraction of stamp pixels outside the image.
    blank : numpy.ndarray, (N,)
        Fraction of stamp pixels inside the image that are NaN/inf/BLANK.
    zoom : numpy.ndarray, (N,)
        Image pixels per stamp pixel (>1 downsampling, <1 upsampling), along
        the image axis with the fewer (the rows of an image whose pixels are
        taller than wide).
    quantum : numpy.ndarray, (N,)
        The spread (max - min) that the quantisation of a lossily compressed image
        (`SkyImage` ``quantisation``) leaves in a stamp of a flat area: the largest step of
        the compression tiles under the stamp (resampling takes weighted means of the
        pixels, with positive weights that add to 1, so the stamp spans no more than they
        do); for a stamp whose pixels average blocks of ``A`` image pixels,
        ``QUANTUM_SIGMAS / sqrt(12 A)`` steps where less (the dither's errors of the means
        shrink as the noise does; without dither a flat area inside one tile reads back
        exactly, and real noise must not pass for flat). 0 for an image whose pixels are
        as written.
    offset : numpy.ndarray, (N, 2)
        The source's position on each stamp less the stamp's centre ``(size - 1) / 2``,
        ``(dy, dx)`` in stamp pixels, within half a pixel: nonzero only for a stamp cut on
        the image's own pixels (`cut_stamps` ``on_pixels``), whose pixels are the image's
        about the pixel (or pixel corner) nearest the source, not interpolated about the
        source.
    """

    def __init__(self, stamps, outside, blank, zoom, quantum=None, offset=None):
        self.stamps, self.outside, self.blank, self.zoom = stamps, outside, blank, zoom
        self.quantum = np.zeros(len(stamps)) if quantum is None else quantum
        self.offset = np.zeros((len(stamps), 2)) if offset is None else offset


def _range_max(values, start, stop, axis):
    """Largest of ``values`` (2D) over ``start:stop`` along ``axis`` (0 or 1), per range:
    ``start``, ``stop`` (K,) ints with ``start < stop <= values.shape[axis]``. Axis 0:
    ``(K, values.shape[1])``; axis 1 (``values`` then K rows, one per range): ``(K,)``.
    One `numpy.ufunc.reduceat`, whatever K (ranges may overlap)."""
    if axis == 0:  # (a row of zeros past the end: ``stop`` may be the number of rows)
        padded = np.concatenate([values, np.zeros((1, values.shape[1]))])
        return np.maximum.reduceat(padded, np.ravel([start, stop], "F"), axis=0)[::2]
    width = values.shape[1] + 1
    padded = np.concatenate([values, np.zeros((len(values), 1))], axis=1).reshape(-1)
    offset = np.arange(len(values)) * width
    return np.maximum.reduceat(padded, np.ravel([start + offset, stop + offset], "F"))[::2]


#: Quantisation of a block-averaged stamp (`StampResult.quantum`): a flat area's stamp
#: spans at most this many standard deviations of its block means' errors (those of one
#: dithered pixel, uniform over a step: 1 / sqrt(12) step, over the sqrt of the block's
#: pixels). Without dither (ZQUANTIZ NO_DITHER) too: its errors are not each pixel's own,
#: but a whole step let 745 of 10,000 noise stamps pass for flat (q = 4, blocks of 10 x 10).
QUANTUM_SIGMAS = 10.0


def _stamp_quantum(image, xy, factors):
    """Per stamp, `StampResult.quantum` from the quantisation (`SkyImage` ``quantisation``)
    of the tiles under it: the pixels ``xy`` (2, K, size, size) sample, by bilinear
    interpolation of blocks of ``factors`` (K, 2) pixels (rows, columns); 0 where the image
    has none, and for a stamp off the image."""
    if image.quantisation is None or not xy.shape[1]:
        return np.zeros(xy.shape[1])
    (tile_y, tile_x), steps = image.quantisation
    ny, nx = image.shape
    bounds = []
    for c, n, f in ((xy[0], nx, factors[:, 1]), (xy[1], ny, factors[:, 0])):
        flat = c.reshape(len(c), -1)
        finite = np.isfinite(flat)
        lo = np.where(finite, flat, np.inf).min(axis=1)
        hi = np.where(finite, flat, -np.inf).max(axis=1)
        reach = f + 1.0  # the bilinear neighbours of the blocks, whole
        with np.errstate(invalid="ignore"):
            lo = np.clip(np.floor(lo - reach), 0, n - 1)
            hi = np.clip(np.ceil(hi + reach), 0, n - 1)
        bounds.append((lo, hi, finite.any(axis=1)))
    (x0, x1, xin), (y0, y1, yin) = bounds
    on = xin & yin
    x0, x1, y0, y1 = (np.where(on, v, 0).astype(np.int64) for v in (x0, x1, y0, y1))
    rows = _range_max(steps, y0 // tile_y, y1 // tile_y + 1, axis=0)
    step = np.where(on, _range_max(rows, x0 // tile_x, x1 // tile_x + 1, axis=1), 0.0)
    return _block_quantum(step, factors.prod(axis=1))


def _block_quantum(step, area):
    """The spread that quantisation with ``step`` leaves in the stamp of a flat area
    whose pixels are means of blocks of ``area`` pixels of the quantised image (broadcast
    together): the step, or `QUANTUM_SIGMAS` standard deviations of the block means' errors
    (``step / sqrt(12 area)``) where less (the errors of the means shrink as the noise's
    do). `cut_stamps` (annotate) and the triplet resampling of `prepare` (predict_files)
    both allow it."""
    return step * np.minimum(1.0, QUANTUM_SIGMAS / np.sqrt(12.0 * np.asarray(area, float)))


def _tangent_to_sky(lon0, lat0, xi, eta):
    """Inverse gnomonic projection (radians) about (lon0, lat0); arrays broadcast."""
    rho = np.hypot(xi, eta)
    c = np.arctan(rho)
    sin_c, cos_c = np.sin(c), np.cos(c)
    sin_d0, cos_d0 = np.sin(lat0), np.cos(lat0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(rho > 0, eta * sin_c / np.where(rho > 0, rho, 1), 0.0)
    lat = np.arcsin(np.clip(cos_c * sin_d0 + ratio * cos_d0, -1, 1))
    lon = lon0 + np.arctan2(xi * sin_c, rho * cos_d0 * cos_c - eta * sin_d0 * sin_c)
    return lon, lat


def _lagrange3(u):
    """Quadratic Lagrange weights for nodes at -1, 0, 1; shape (len(u), 3)."""
    u = np.asarray(u, dtype=np.float64)
    return np.stack([0.5 * u * (u - 1), 1 - u * u, 0.5 * u * (u + 1)], axis=-1)


#: Largest difference (image pixels, or stamp pixels where these are coarser) at the check
#: points of `_pixel_maps` between the
#: quadratic interpolation of a stamp's nodes and the WCS: beyond it, the stamp is mapped
#: pixel by pixel (a stamp across the longitude seam of an all-sky map, whose nodes lie on
#: both edges of the image, or a projection too curved over the stamp to be quadratic).
NODE_TOLERANCE_PIXELS = 0.05


def _stamp_offsets(nodes, c, scale_arcsec, up_angle):
    """Tangent-plane offsets (xi east, eta north; radians) of the stamp points at row and
    column offsets ``nodes[a] * c``, ``nodes[b] * c`` (stamp pixels) from the centre:
    two arrays (N, len(nodes), len(nodes))."""
    half = (c * scale_arcsec * _ARCSEC)[:, None, None]
    up = nodes[None, :, None] * half                    # rows increase upwards
    right = nodes[None, None, :] * half                 # columns increase to the right
    # the stamp's up points to position angle t (east of north): with t = 0, north up and
    # east left (xi = -right, eta = up, exactly)
    t = np.radians(up_angle)[:, None, None]
    return up * np.sin(t) - right * np.cos(t), up * np.cos(t) + right * np.sin(t)


def _pixel_maps(image, lon, lat, size, scale_arcsec, up_angle):
    """Image pixel coordinates (x, y) of every stamp pixel, two (N, size, size) arrays as
    one (2, N, size, size) array; the zoom (image rows and columns per stamp pixel, (N, 2));
    and which stamps were mapped pixel by pixel (N,), their nodes failing
    `NODE_TOLERANCE_PIXELS` or some of them, not all, past the limb of the projection."""
    c = (size - 1) / 2.0
    # nodes at -1, 0, 1 (corners, edge mid-points, centre), then the four check points
    # half-way between them, at -1/2 and 1/2 along both axes
    nodes = np.array([-1.0, 0.0, 1.0])
    checks = np.array([-0.5, 0.5])
    lon0 = np.radians(lon)[:, None, None]
    lat0 = np.radians(lat)[:, None, None]
    points = [_tangent_to_sky(lon0, lat0, *_stamp_offsets(v, c, scale_arcsec, up_angle))
              for v in (nodes, checks)]
    px, py = image.world_to_pixel(
        np.degrees(np.concatenate([p[0].reshape(len(lon), -1) for p in points], 1)).ravel(),
        np.degrees(np.concatenate([p[1].reshape(len(lon), -1) for p in points], 1)).ravel())
    px, py = (np.asarray(v).reshape(len(lon), 13) for v in (px, py))
    nx, ny = px[:, :9].reshape(-1, 3, 3), py[:, :9].reshape(-1, 3, 3)
    # the check points as the quadratic interpolation of the nodes gives them
    w_check = _lagrange3(checks)
    # image columns and rows per stamp pixel, from the node spacing: the lengths of the
    # rows of the Jacobian d(x, y) / d(stamp column, stamp row), whatever the rotation
    dx = np.hypot(nx[:, 1, 2] - nx[:, 1, 0], nx[:, 2, 1] - nx[:, 0, 1])
    dy = np.hypot(ny[:, 1, 2] - ny[:, 1, 0], ny[:, 2, 1] - ny[:, 0, 1])
    zoom = np.stack([dy, dx], axis=1) / max(size - 1, 1)
    # the miss in image pixels, or in stamp pixels where these are coarser (sampled from a
    # level of blocks of about that many image pixels): a stamp of 64 10"/pixel pixels on a
    # 0.2"/pixel SIP image misses by a few tenths of an image pixel, 1/100 of a stamp pixel
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.maximum(np.nan_to_num(zoom, nan=1.0), 1.0)[:, :, None, None]
        miss = np.hypot((w_check @ nx @ w_check.T - px[:, 9:].reshape(-1, 2, 2)) / per[:, 1],
                        (w_check @ ny @ w_check.T - py[:, 9:].reshape(-1, 2, 2)) / per[:, 0])
        exact = (miss > NODE_TOLERANCE_PIXELS).any(axis=(1, 2))
    # some of the 13 points past the limb of a SIN (or other bounded) projection, not all:
    # the stamp is cut by the limb, its pixels on the image placed one by one (all of them
    # past it: outside, whole, in `_bilinear`)
    placed = np.isfinite(px) & np.isfinite(py)
    exact |= placed.any(axis=1) & ~placed.all(axis=1)
    # interpolate offsets from the central node in float32 (exact enough, twice as fast)
    x0, y0 = nx[:, 1, 1, None, None], ny[:, 1, 1, None, None]
    weights = _lagrange3((np.arange(size) - c) / c if c else np.zeros(size)).astype(np.float32)
    dxn = (nx - x0).astype(np.float32)
    dyn = (ny - y0).astype(np.float32)
    # float32 coordinates: 6e-3 pixel precision even 10^5 pixels from the origin
    xy = np.empty((2, len(nx), size, size), np.float32)
    # (stamps wider than 300 pixels, the radio stamps of fine pixels, in bands of 64 rows:
    # whole, a product of inner dimension 3 went to a threaded BLAS path, 60 ms a stamp of
    # 577 x 577 where bands take 1 ms; 300 or fewer: as ever, bit for bit)
    rows = 64 if size > 300 else size
    for i in range(0, size, rows):
        band = slice(i, i + rows)
        np.matmul(weights[band] @ dxn, weights.T, out=xy[0, :, band])  # sum_ab w_ia d_nab w_jb
        np.matmul(weights[band] @ dyn, weights.T, out=xy[1, :, band])
    xy[0] += x0.astype(np.float32)
    xy[1] += y0.astype(np.float32)
    if exact.any():
        k = np.flatnonzero(exact)
        grid = (np.arange(size) - c) / c  # (c > 0: one pixel has no check points to miss)
        glon, glat = _tangent_to_sky(lon0[k], lat0[k], *_stamp_offsets(
            grid, c, scale_arcsec[k], up_angle[k]))
        ex, ey = (np.asarray(v).reshape(len(k), size, size)
                  for v in image.world_to_pixel(np.degrees(glon), np.degrees(glat)))
        xy[0, k], xy[1, k] = ex, ey
        # the zoom from the steps between neighbouring stamp pixels (their median: the
        # steps across a seam are the width of the map)
        zoom[k] = np.stack([_median_step(v) for v in (ey, ex)], axis=1)
    return xy, zoom, exact


def _median_step(v):
    """Median over each of the (K, size, size) maps ``v`` (an image coordinate) of the length
    of its gradient (image pixels per stamp pixel), NaN steps left out (all NaN: NaN)."""
    steps = np.hypot(np.diff(v, axis=2)[:, :-1], np.diff(v, axis=1)[:, :, :-1])
    steps = np.sort(steps.reshape(len(v), -1), axis=1)  # NaN last
    good = np.isfinite(steps).sum(axis=1)
    return steps[np.arange(len(v)), np.maximum(good - 1, 0) // 2]


def _resident_take(image, source):
    """`SkyImage.take` of ``image`` read from ``source``, its pixels held in memory
    (`SkyImage.resident`: scaled, sentinels already NaN), at the cost of a gather: the
    float32 values `take` gives, without its scaling and masking pass."""
    if not source.flags.c_contiguous:  # (an in-memory array's slice: no flat view)
        return image.take
    flat = source.reshape(-1)
    if flat.dtype == np.float32:
        return flat.take
    return lambda index: flat.take(index).astype(np.float32)


def _take_bilinear(image, x, y, out=None, *, take=None):
    """Bilinear samples at pixel coordinates ``x``, ``y`` (clipped to the image) from
    values read with ``take`` (default: `SkyImage.take`, scaled, BLANK and masking
    sentinels -> NaN), written into ``out`` (float32, the shape of ``x``) where given.

    Indices are int32 where the image has fewer than 2**31 pixels, and the arithmetic is
    done in place on the float32 arrays, in the order of
    ``top + fy * (bottom - top)`` with ``top = v00 + fx * (v01 - v00)``.
    """
    ny, nx = image.shape
    index = np.int32 if ny * nx < 2 ** 31 else np.intp
    fx = np.clip(x, 0, nx - 1)
    fy = np.clip(y, 0, ny - 1)
    x0 = np.minimum(fx.astype(index), max(nx - 2, 0))  # (truncation: floor of values >= 0)
    y0 = np.minimum(fy.astype(index), max(ny - 2, 0))
    np.subtract(fx, x0, out=fx)  # the fractions, computed in float64, rounded to float32
    np.subtract(fy, y0, out=fy)
    fx, fy = fx.astype(np.float32, copy=False), fy.astype(np.float32, copy=False)
    base = np.multiply(y0, nx, out=y0)
    base += x0
    del x0
    step_x = 1 if nx > 1 else 0
    step_y = nx if ny > 1 else 0
    take = image.take if take is None else take
    v00 = take(base)
    base += step_x
    top = take(base)  # v01
    base += step_y
    bottom = take(base)  # v11
    base -= step_x
    v10 = take(base)
    del base
    top -= v00
    top *= fx
    top += v00  # v00 + fx * (v01 - v00)
    del v00
    bottom -= v10
    bottom *= fx
    bottom += v10  # v10 + fx * (v11 - v10)
    del v10, fx
    bottom -= top
    bottom *= fy
    return np.add(top, bottom, out=out)


def _bilinear(image, xy, out=None, exact=None):
    """Bilinear samples at pixel coordinates (0-based centres); NaN outside [-0.5, n-0.5]
    (n: ``image.extent``).

    Like ``reproject_interp``, points in the outer half pixel take the edge
    value. One arithmetic (`_take_bilinear`) samples every image, from its pixels in
    memory (`SkyImage.resident`) or by gathering only the pixels asked for
    (`SkyImage.take`, until `SkyImage.resident` has read the image whole), so that a
    stamp is the same bit for bit either way: which of the two it is depends on how many
    sources share the call.

    ``exact``: the stamps mapped pixel by pixel (`_pixel_maps`), whose pixels are tested
    one by one (their grid need not be smooth: across the seam of an all-sky map).

    Returns the samples (written into ``out`` if given), shape ``xy.shape[1:]``,
    and the number of points of each stamp that lie inside the image (its
    ``extent``, a fraction of a pixel short of ``shape`` for a `SkyImage.level`).
    """
    ny, nx = image.shape
    y_end, x_end = (n - 0.5 for n in image.extent)
    x, y = xy
    # the stamp grids are smooth: a stamp is inside when its border is
    border = np.concatenate([x[:, [0, -1], :].reshape(len(x), -1),
                             x[:, :, [0, -1]].reshape(len(x), -1)], 1), \
        np.concatenate([y[:, [0, -1], :].reshape(len(y), -1),
                        y[:, :, [0, -1]].reshape(len(y), -1)], 1)
    # NaN coordinates (where the projection cannot place a node: past the limb of a SIN
    # image) are outside; interpolated from the nodes, they fill whole stamps (those with
    # every check point past the limb; a stamp that the limb cuts is `exact`)
    unplaced = ~(np.isfinite(border[0]).all(1) & np.isfinite(border[1]).all(1))
    if exact is not None:  # (their pixels that the projection cannot place: one by one)
        unplaced &= ~exact
    edge = ((border[0].min(1) < -0.5) | (border[0].max(1) > x_end)
            | (border[1].min(1) < -0.5) | (border[1].max(1) > y_end) | unplaced)
    if exact is not None:
        edge |= exact
    n_inside = np.full(len(x), x[0].size if len(x) else 0)
    if edge.any():
        xe, ye = x[edge], y[edge]
        inside = (xe >= -0.5) & (xe <= x_end) & (ye >= -0.5) & (ye <= y_end)
        n_inside[edge] = inside.sum(axis=(1, 2))
    if unplaced.any():  # sampled at pixel 0, then set to NaN below, as outside
        x, y = (np.where(unplaced[:, None, None], 0, c) for c in (x, y))
    if exact is not None and exact.any():  # likewise their pixels off the projection
        lost = exact[:, None, None] & ~(np.isfinite(x) & np.isfinite(y))
        if lost.any():
            x, y = (np.where(lost, 0, c) for c in (x, y))
    source = image.resident(x.size)
    take = None if source is None else _resident_take(image, source)
    out = _take_bilinear(image, x, y, out=out, take=take)
    if edge.any():
        on_edge = out[edge]
        on_edge[~inside] = np.nan
        out[edge] = on_edge
    return out, n_inside


def cut_stamps(image, lon, lat, *, size, pixel_scale, up_angle=0.0, chunk=None,
               antialias=True, on_pixels=False):
    """Resample stamps of many sources from one image onto their tangent-plane grids.

    Parameters
    ----------
    image : SkyImage
    lon, lat : array_like, (N,)
        Source positions in degrees, in the celestial frame of ``image.wcs``.
    size : int
        Stamp side in pixels.
    pixel_scale : float or array_like (N,)
        Stamp pixel scale in arcsec/pixel (per source for galaxy-scaled stamps).
    up_angle : float or array_like (N,)
        Position angle (degrees east of the north of the image's frame) of the
        stamp's up direction; 0 puts that north up and east left. `annotate`
        passes the angle of ICRS north, so that the stamps of images in
        Galactic or other frames are oriented like those of ICRS images.
    chunk : int, optional
        Sources mapped and sampled together; default: as many stamps as `SAMPLE_PIXELS`
        holds (at least one), which bounds the working memory. The stamps do not depend
        on it.
    antialias : bool
        Block-average the image before sampling where stamp pixels cover
        two or more image pixels.
    on_pixels : bool
        Where a stamp's grid is the image's own about the source (pixels of
        ``pixel_scale`` along the same axes, to `ON_PIXEL_SCALE`, turned by at most
        `ON_PIXEL_TURN_DEG`: a north-up, east-left image of square pixels of that scale),
        take the image's pixels as they are, about the pixel (or pixel corner) nearest
        the source, along the image's axes, rather than interpolate them about the source
        (bilinear weights between neighbours blur the image, but where the source lies on
        a pixel centre): `StampResult.offset` says where the source then lies on the
        stamp. Other stamps are interpolated about the source, as without it.

    Returns
    -------
    StampResult
    """
    lon = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    scale = np.broadcast_to(np.asarray(pixel_scale, dtype=np.float64), lon.shape)
    up_angle = np.broadcast_to(np.asarray(up_angle, dtype=np.float64), lon.shape)
    n = len(lon)
    stamps = np.empty((n, size, size), np.float32)  # every row is written below
    outside = np.zeros(n)
    blank = np.zeros(n)
    zoom = np.ones(n)
    quantum = np.zeros(n)
    offset = np.zeros((n, 2))
    if chunk is None:
        chunk = max(1, SAMPLE_PIXELS // size ** 2)
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        xy, z, exact = _pixel_maps(image, lon[sl], lat[sl], size, scale[sl], up_angle[sl])
        zoom[sl] = z.min(axis=1)
        # block factors (rows, columns): a handful of pyramid levels, not sources
        # (NaN zoom: a stamp past the limb of the projection, outside the image anyway)
        # (at most the image's rows and columns: a stamp pixel wider than the image, from an
        # absurd size, averages the whole image rather than padding it to the factor)
        factors = (np.clip(np.floor(np.nan_to_num(z, nan=1.0)), 1, image.shape).astype(int)
                   if antialias else np.ones_like(z, int))
        # stamps on the image's own pixels (``xy`` made whole there): taken, not sampled
        own = (_own_pixels(image, lon[sl], lat[sl], xy, offset[sl], exact) if on_pixels
               else np.zeros(len(z), bool))
        factors[own] = 1
        quantum[sl] = _stamp_quantum(image, xy, factors)
        parts = []
        if own.any():
            rows = np.flatnonzero(own)
            parts.append((rows, False, _take_own(image, xy[:, rows])))
        rest = np.flatnonzero(~own)
        levels, which = np.unique(factors[rest], axis=0, return_inverse=True)
        for k, (fy, fx) in enumerate(levels):
            rows = rest[which.ravel() == k]
            level = image.level(int(fy), int(fx))
            # centre of block k of the binned image is at original pixel f*k + (f-1)/2
            sub = xy[:, rows] if len(rows) != len(z) else xy
            if fy > 1 or fx > 1:
                f = np.array([fx, fy], np.float32)[:, None, None, None]
                sub = (sub - (f - 1) / 2) / f
            if len(rows) == len(z):  # the usual case: sampled straight into the output
                parts.append((rows, True, _bilinear(level, sub, out=stamps[sl], exact=exact)))
            else:
                parts.append((rows, False, _bilinear(level, sub, exact=exact[rows])))
        for rows, written, (values, n_in) in parts:
            # NaN inside = blank pixels; a masking sentinel sampled where it lies (a
            # memory map read page by page) is one too, as are its bilinear neighbours
            invalid = invalid_pixels(values)
            values[invalid] = np.nan
            if not written:
                stamps[start + rows] = values
            outside[start + rows] = 1 - n_in / size ** 2
            n_nan = invalid.sum(axis=(1, 2))
            blank[start + rows] = np.where(
                n_in > 0, (n_nan - (size ** 2 - n_in)) / np.maximum(n_in, 1), 0)
    return StampResult(stamps, outside, blank, zoom, quantum, offset)


#: `cut_stamps` ``on_pixels``: the stamp's grid is the image's own where, about the source,
#: a stamp pixel steps one image pixel along the same axis to within this fraction (the
#: scale: 3e-4 for a gnomonic image 1 deg from its tangent point), its axes turned from
#: the image's by at most `ON_PIXEL_TURN_DEG`, and the grid is that linear map to within
#: `ON_PIXEL_TOLERANCE` image pixel over the stamp (a stamp across a seam or near a limb,
#: or projected too curved, is not).
ON_PIXEL_SCALE = 1e-3
#: `cut_stamps` ``on_pixels``: the largest angle (degrees) between a stamp's up (north, or
#: ``up_angle``, at the source) and the image's +y axis there, at which the stamp takes the
#: image's pixels as they are, its up the image's +y: the meridians of a north-up image
#: converge by ``sin(dec)`` times the difference in longitude from its reference point
#: (0.03 deg for a source 5' from it at dec 20 deg, 1 deg for 1.2 deg at dec 60), a
#: rotation of the stamp that the radio model, trained on all orientations, does not see.
ON_PIXEL_TURN_DEG = 1.0
#: `cut_stamps` ``on_pixels``: see `ON_PIXEL_SCALE` (image pixels; float32 pixel maps are
#: good to 1e-4 pixel).
ON_PIXEL_TOLERANCE = 0.05


def _own_pixels(image, lon, lat, xy, offset, exact):
    """The stamps of `cut_stamps` whose grid ``xy`` (2, K, size, size) is the image's own
    (`ON_PIXEL_SCALE`, `ON_PIXEL_TURN_DEG`; none of those mapped pixel by pixel,
    ``exact``): ``(K,)`` bool. Their ``xy`` are set to the image's pixels about the pixel
    (or pixel corner) nearest the source (whole numbers), along its own axes, and their
    rows of ``offset`` (K, 2) to the source's position ``(dy, dx)`` on the stamp less its
    centre (within half a pixel)."""
    size = xy.shape[-1]
    c = (size - 1) / 2.0
    x0, y0 = (np.asarray(v, dtype=np.float64).reshape(-1) for v in image.world_to_pixel(lon, lat))
    if size < 3:
        return np.zeros(len(x0), bool)
    m = size // 2  # (the middle row and column; of an odd side, the source's)
    # image pixels per stamp column and per stamp row (x, y), across the whole stamp
    col = (xy[:, :, m, -1].astype(np.float64) - xy[:, :, m, 0]) / (size - 1)
    row = (xy[:, :, -1, m].astype(np.float64) - xy[:, :, 0, m]) / (size - 1)
    grid = np.arange(size) - c
    with np.errstate(invalid="ignore"):
        turn = np.degrees(np.maximum(np.abs(np.arctan2(col[1], col[0])),
                                     np.abs(np.arctan2(-row[0], row[1]))))
        linear = [x0[:, None, None] + col[0][:, None, None] * grid[None, None, :]
                  + row[0][:, None, None] * grid[None, :, None],
                  y0[:, None, None] + col[1][:, None, None] * grid[None, None, :]
                  + row[1][:, None, None] * grid[None, :, None]]
        miss = np.maximum(np.abs(xy[0] - linear[0]).max(axis=(1, 2)),
                          np.abs(xy[1] - linear[1]).max(axis=(1, 2)))
        own = (np.isfinite(x0) & np.isfinite(y0) & ~np.asarray(exact, bool)
               & (np.abs(np.hypot(*col) - 1) <= ON_PIXEL_SCALE)
               & (np.abs(np.hypot(*row) - 1) <= ON_PIXEL_SCALE)
               & (turn <= ON_PIXEL_TURN_DEG) & (miss <= ON_PIXEL_TOLERANCE))
    if own.any():
        k = np.flatnonzero(own)
        first_x, first_y = np.round(x0[k] - c), np.round(y0[k] - c)  # of stamp pixel 0
        offset[k, 0], offset[k, 1] = y0[k] - c - first_y, x0[k] - c - first_x
        whole = np.arange(size, dtype=np.float32)
        xy[0, k] = (first_x[:, None, None] + whole[None, None, :]).astype(np.float32)
        xy[1, k] = (first_y[:, None, None] + whole[None, :, None]).astype(np.float32)
    return own


def _take_own(image, xy):
    """The pixels of ``image`` at whole pixel coordinates ``xy`` (2, K, size, size), as
    `SkyImage.take` gives them (scaled; NaN where blank), NaN off the image: float32
    ``(K, size, size)``, and the number of each stamp's pixels on the image (as
    `_bilinear` returns them)."""
    ny, nx = image.shape
    x, y = xy
    inside = (x >= 0) & (x <= nx - 1) & (y >= 0) & (y <= ny - 1)
    out = np.full(x.shape, np.nan, np.float32)
    index = np.int32 if ny * nx < 2 ** 31 else np.intp
    flat = y[inside].astype(index) * index(nx) + x[inside].astype(index)
    source = image.resident(x.size)
    take = image.take if source is None else _resident_take(image, source)
    if len(flat):
        out[inside] = take(flat)
    return out, inside.sum(axis=(1, 2))
