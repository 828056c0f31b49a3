"""Readers for the files `predict_files` accepts: one dispatcher, `read_file`.

Accepted inputs (recognised by their content first, by extension second):

* FITS (``.fits``, ``.fit``, ``.fts``, ``.fz``, and compressed ``.fits.gz``,
  ``.fits.bz2``, ``.fits.xz``, ``.fits.zip``, a zip archive of one file):
  a 2-D image (one band); a 3-D cube with one plane per band or per triplet
  member; a 4-D array ``(N, C, H, W)`` of N stamps; or one image HDU per band
  (names from ``FILTER``/``BAND`` or ``EXTNAME``) or per triplet member
  (``EXTNAME`` ``SCIENCE``/``REFERENCE`` (or ``TEMPLATE``)/``DIFFERENCE``).
  Integer data are scaled by ``BSCALE``/``BZERO`` with ``BLANK`` pixels set
  to NaN; any byte order; the pixel scale comes from the celestial WCS. A
  ``STOKES`` axis is reduced to its Stokes I plane (no I plane: `Flag.BAD_INPUT`).
* JPEG/PNG colour (or grey) cutouts, read with Pillow (extra ``images``); an
  animated picture (APNG, animated GIF) is `Flag.BAD_INPUT`, its frame count named.
* Avro alert packets (extra ``alerts``): ZTF (``candid``, gzipped FITS
  cutouts in ``cutoutScience``/``cutoutTemplate``/``cutoutDifference``
  ``stampData``) and Rubin (``diaSource.diaSourceId``, FITS bytes in
  ``cutoutScience``/``cutoutTemplate``/``cutoutDifference``).

`read_file` never raises for bad content: an unreadable, truncated or
inconsistent input gives a `Stamp` whose ``flags`` say why (`Flag.BAD_INPUT`,
`Flag.MISSING_BAND`, ...) and whose ``reason`` explains it in words. Only a
missing optional dependency raises (`MissingDependencyError`).
"""
from ._alerts import ZTF_STAMP_SIZE, iter_avro_records
from ._fits import normalise_band, parse_fits_bytes
from ._inputs import SUPPORTED_EXTENSIONS, expand_inputs, read_file, sniff_format
from ._stamp import Stamp

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
