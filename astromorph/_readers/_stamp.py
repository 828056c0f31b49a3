"""`Stamp`: what every reader returns, a raw stamp or the record of why there is none."""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._flags import Flag
from ..preprocessing._checks import axis_scales

__all__ = ["Stamp", "common_pixel_scale", "pixel_scales", "central_disk", "reaches_saturation",
           "saturated_centres"]

#: Relative difference of pixel scale beyond which stamps are on different grids.
SCALE_TOLERANCE = 0.01
#: Radius in pixels of the data of the central region that `Flag.SATURATED` looks at: a
#: saturated core is a plateau a few pixels across, and a source 3 pixels off the centre
#: is still the one the stamp is of.
SATURATION_RADIUS = 3


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
    #: Pixel scale in arcsec/pixel from the WCS (`pixel_scales`): one float for square
    #: pixels, ``(scale_y, scale_x)`` for pixels longer one way than the other; or None.
    pixel_scale: float = None
    #: Restoring beam FWHM (major axis) in arcsec from the header (BMAJ), or None.
    beam: float = None
    flags: int = 0
    reason: list = field(default_factory=list)
    #: HDU whose header gets the results (FITS files only), else None.
    header_hdu: int = None
    #: Stamp index inside a file holding several stamps, else None.
    index: int = None
    #: The stamp is on the survey's native grid although it has no WCS (ZTF alerts).
    native_grid: bool = False
    #: Position ``(y, x)`` of the candidate in the stamp's arrays (0-based pixels, from the
    #: cutouts' WCS and the candidate's sky position: Rubin alerts), where the real-bogus
    #: resampling centres the model's grid; None for the central pixel ``n // 2``.
    centre: tuple = None
    #: How an ambiguous stamp was read (e.g. unnamed planes taken as g, r, i), else None.
    assumption: str = None
    #: The astronomical object an alert belongs to (ZTF objectId, Rubin diaObjectId), else None.
    object: str = None
    #: The sky position of an alert's candidate in degrees (ZTF candidate.ra/dec, Rubin
    #: diaSource.ra/dec), else None.
    ra: float = None
    dec: float = None
    #: Read from a file of alert packets (Avro), usable or not: the table has an ``object``
    #: and ``ra``, ``dec``.
    alert: bool = False
    #: The file's extension names another format than its content, by which it was read
    #: (a usable stamp): the words saying both, else None.
    misnamed: str = None
    #: Band name -> words for the file's image HDU of that band that holds no data
    #: (one-HDU-per-band FITS files), to say why a band is missing.
    empty_hdus: dict = field(default_factory=dict)
    #: What the FITS header says of the pixel unit where it is not SDSS nanomaggies
    #: (`astromorph._readers._fits.flux_unit_note`, e.g. ``"BUNIT='count'"``), else None.
    flux_note: str = None
    #: Saturation level of each plane of ``data`` from its FITS header
    #: (`astromorph._readers._fits.saturation_of_header`; NaN where unknown), or None
    #: where no header gives one (`Flag.SATURATED`).
    saturation: np.ndarray = None
    #: ``get(key, default)`` of the FITS header of the stamp's image (the first image HDU
    #: of a file of one HDU per band or triplet member), else None: what a gallery
    #: orients the stamp by (`astromorph._orient.north_up`).
    header_get: object = None
    #: Per plane of ``data``, the quantisation step of the pixels of a float FITS image
    #: tile-compressed with loss (fpack's default: the largest ZSCALE of the tiles the
    #: plane lies in, `astromorph._readers._fits._plane_steps`; 0 for a plane stored as
    #: written), whose flat planes read back as values up to that far apart
    #: (`Flag.CONSTANT`); None where every plane is as written.
    quantum: np.ndarray = None

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


#: Relative difference of the pixel's two sides (a turn of 1e-3 radian's worth) beyond
#: which its pixels are not square (`pixel_scales`).
SQUARE_TOLERANCE = 1e-3


def pixel_scales(matrix):
    """Pixel scale in arcsec/pixel of a celestial pixel scale matrix (degrees per pixel,
    world axes by pixel axes): ``sqrt|det|`` (the side of a pixel's area) for pixels whose
    two sides agree within `SQUARE_TOLERANCE`, else ``(scale_y, scale_x)``, the length on
    the sky of a step along the rows (FITS axis 2) and along the columns (axis 1), so that
    a stamp of such pixels is resampled along each axis by its own scale (for a skewed
    matrix, lengths in the ratio of its sides whose product is the pixel's area)."""
    m = np.asarray(matrix, dtype=float)
    sx, sy = np.hypot(m[0], m[1])  # the matrix's columns: one pixel step each
    area = abs(np.linalg.det(m))
    if abs(np.log(sy / sx)) <= SQUARE_TOLERANCE:
        return float(np.sqrt(area) * 3600.0)
    return float(np.sqrt(area * sy / sx) * 3600.0), float(np.sqrt(area * sx / sy) * 3600.0)


def common_pixel_scale(scales):
    """``(scale, problem)`` for the planes of one stamp (triplet members or bands), each
    with its pixel scale in arcsec/pixel (one float or ``(scale_y, scale_x)``,
    `pixel_scales`) or None: the first known scale, and words saying that the known scales
    differ by more than `SCALE_TOLERANCE` along either axis (planes of one size on
    different grids, which cannot be stacked pixel for pixel), else None."""
    known = [s for s in scales if s is not None]
    axes = np.array([axis_scales(s) for s in known]).reshape(-1, 2)
    if not known or np.all(axes.max(axis=0) <= axes.min(axis=0) * (1 + SCALE_TOLERANCE)):
        return (known[0] if known else None), None
    shown = ", ".join("none" if s is None else
                      "x".join(f"{v:.4g}" for v in np.ravel(s)) for s in scales)
    return known[0], f"differ in pixel scale ({shown} arcsec/pixel)"


def central_disk(shape, radius=SATURATION_RADIUS):
    """Row and column indices of the pixels of an ``(H, W)`` stamp whose centres lie within
    ``radius`` pixels of the stamp's centre (``((H - 1) / 2, (W - 1) / 2)``)."""
    h, w = shape
    y, x = np.ogrid[:h, :w]
    return np.nonzero((y - (h - 1) / 2) ** 2 + (x - (w - 1) / 2) ** 2 <= radius ** 2)


def reaches_saturation(values, levels):
    """Whether any of ``values`` (``(..., K)`` pixel values) reaches its level (``levels``,
    broadcast against ``values[..., 0]``; NaN: unknown, never reached). NaN, inf and
    masking sentinels (|value| >= 1e30) are no data and never count."""
    from ..preprocessing._checks import invalid_pixels

    values = np.asarray(values)
    levels = np.asarray(levels, dtype=float)[..., None]
    with np.errstate(invalid="ignore"):
        return ((values >= levels) & ~invalid_pixels(values)).any(axis=-1)


def saturated_centres(data, levels):
    """`Flag.SATURATED` test of a stack of stamps: ``data`` ``(N, P, H, W)``, ``levels``
    ``(N, P)`` (each plane's saturation level, NaN where unknown) -> ``(N,)`` bool, True
    where a pixel of some plane within `SATURATION_RADIUS` of the centre reaches its
    plane's level."""
    rows, cols = central_disk(np.shape(data)[-2:])
    return reaches_saturation(np.asarray(data)[..., rows, cols], levels).any(axis=-1)
