"""Stamps turned north up, east left for display, by their FITS header's celestial WCS.

A stamp whose WCS axes run along its pixel axes (north along a column or a row, whatever
the flips: CDELT1 < 0 or > 0, CROTA2 = 90...) with square pixels is flipped and transposed
only, its pixels kept exactly; a stamp whose WCS is rotated (CD or PC matrix with
off-diagonal terms, CROTA2 = 30), or whose pixels are longer one way than the other, is
resampled onto a north-up grid of square pixels of its own pixel area and of its size,
centred on its centre, by the bilinear sampling of `astromorph._cutouts.cut_stamps` (which
`astromorph.annotate` cuts its stamps with), without its block averaging: a display pixel of
the stamp's own pixel area spans at most the long side of a pixel, so there is little to
average, and none is done (``antialias=False``). North is ICRS north whatever the WCS's
celestial frame (Galactic, FK4, ecliptic...), as `astromorph.annotate` cuts its stamps: a
Galactic stamp is turned (resampled) to ICRS north up; a frame astropy does not know or
cannot transform to ICRS keeps its own north.
"""
import re
import warnings

import numpy as np

__all__ = ["north_up", "AXIS_TOLERANCE_DEG"]

#: Rotation (degrees) of the WCS axes from the pixel axes below which a stamp is only
#: flipped or transposed (no resampling): half a pixel of turn at the corner of a
#: stamp of 60 pixels.
AXIS_TOLERANCE_DEG = 1.0

#: The WCS keywords of a header, copied into the astropy Header the WCS is read from.
_WCS_KEY = re.compile(r"(WCSAXES|NAXIS\d*|CTYPE\d|CUNIT\d|CRPIX\d|CRVAL\d|CDELT\d|CROTA\d|"
                      r"CD\d_\d|PC\d_\d|PV\d_\d+|PS\d_\d+|LONPOLE|LATPOLE|RADESYS|RADECSYS|"
                      r"EQUINOX|EPOCH|MJD-OBS|DATE-OBS|[AB]P?_ORDER|[AB]P?_\d+_\d+)$")


def _header(get):
    """An astropy Header of the WCS keywords that ``get(key, default)`` reads: the
    Header itself for its bound ``get`` (or a `_readers._fits._lenient` getter's), else
    one made of the keywords ``get.keys()`` names (the fast FITS parser's getter); None when
    neither tells its keywords."""
    from astropy.io import fits

    owner = getattr(get, "__self__", None)
    owner = getattr(owner, "header", owner)  # a lenient reader's getter keeps its Header
    if isinstance(owner, fits.Header):
        return owner
    keys = getattr(get, "keys", None)
    if keys is None:
        return None
    return fits.Header([(k, get(k)) for k in keys() if _WCS_KEY.match(k)])


def _celestial_wcs(get):
    """The celestial WCS of the header read by ``get``, or None (no header, no celestial
    axes, keywords astropy cannot read or a WCS that cannot place pixels)."""
    from astropy.wcs import WCS, FITSFixedWarning

    from ._cutouts import _check_wcs
    from ._readers._fits import _e_exponents, wcs_matrix_problem
    from ._warnings import catch_warnings

    if get is None:
        return None
    with catch_warnings():  # astromorph's: taking turns with its other threads' blocks
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            # (astropy refuses a NaN that the fast FITS parser read: CRVAL1 = NaN)
            header = _header(get)
            if header is None:
                return None
            header = _e_exponents(header)  # (CDELT1 = -2.5D-04: wcslib reads -2.5)
            wcs = WCS(header)
            # celestial axes that are not the stamp's two pixel axes (NAXIS1, NAXIS2: a cube
            # of CTYPE1 = 'FREQ'): the celestial WCS would be read along the wrong ones
            if not wcs.has_celestial or {wcs.wcs.lng, wcs.wcs.lat} != {0, 1} \
                    or wcs_matrix_problem(header.get):
                return None  # (a degenerate matrix: wcslib may have made one up)
            wcs = wcs.celestial
            _check_wcs(wcs, "stamp")
        except Exception:  # noqa: BLE001 - malformed WCS keywords: shown as stored
            return None
    return wcs


def _sky_jacobian(wcs, shape):
    """``((dE/dx, dE/dy), (dN/dx, dN/dy))``: the arcsec east and north (ICRS) of one pixel
    step along x (columns) and y (FITS rows, upwards) at the stamp's centre; the centre's
    (lon, lat) in degrees in the WCS's frame; and the position angle there of ICRS north
    (degrees east of the frame's north). East and north are those of the WCS's own frame
    (and the angle 0) where astropy cannot transform it to ICRS."""
    from astropy.coordinates import SkyCoord

    from ._annotate import _icrs_north
    from ._cutouts import _celestial_frame

    cy, cx = (np.asarray(shape, float) - 1) / 2
    x = cx + np.array([0.0, 0.5, -0.5, 0.0, 0.0])
    y = cy + np.array([0.0, 0.0, 0.0, 0.5, -0.5])
    world = wcs.all_pix2world(x, y, 0)
    lon, lat = world[wcs.wcs.lng], world[wcs.wcs.lat]
    centre, up = (lon[0], lat[0]), 0.0
    try:
        points = SkyCoord(lon, lat, unit="deg", frame=_celestial_frame(wcs, "stamp"))
        icrs = points.icrs
        up = float(_icrs_north(points[:1], points.frame.replicate_without_data())[0])
        lon, lat = icrs.ra.deg, icrs.dec.deg
    except Exception:  # noqa: BLE001 - a frame astropy does not know or cannot transform
        pass
    # offsets on the tangent plane at the centre (gnomonic): exact directions and scale
    # there, also within a pixel of a pole, where steps in longitude are not small
    a, d = np.radians(lon), np.radians(lat)
    cos_da = np.cos(a[1:] - a[0])
    cos_c = np.sin(d[0]) * np.sin(d[1:]) + np.cos(d[0]) * np.cos(d[1:]) * cos_da
    xi = np.cos(d[1:]) * np.sin(a[1:] - a[0]) / cos_c
    eta = (np.cos(d[0]) * np.sin(d[1:]) - np.sin(d[0]) * np.cos(d[1:]) * cos_da) / cos_c
    east = np.degrees(xi[[0, 2]] - xi[[1, 3]]) * 3600.0
    north = np.degrees(eta[[0, 2]] - eta[[1, 3]]) * 3600.0
    return np.array([east, north]), centre, up


def north_up(data, header_get):
    """``data`` (``(P, H, W)`` planes, FITS rows: row 0 at the bottom) drawn top row
    first, north up and east left by the celestial WCS of its FITS header.

    Parameters
    ----------
    data : numpy.ndarray, (P, H, W)
    header_get : callable or None
        ``get(key, default)`` of the stamp's FITS header (`Stamp.header_get`).

    Returns
    -------
    shown : numpy.ndarray, (P, H', W')
        Top row first: ``data`` flipped or transposed (its pixels unchanged) where the WCS
        axes run along the pixel axes and its pixels are square, else resampled north up
        (``H' = W' = max(H, W)``, NaN where the grid leaves the stamp); without a usable
        celestial WCS, ``data`` with its rows reversed (FITS row 0 at the bottom, as ds9
        shows it).
    oriented : bool
        Whether a WCS oriented it (False: pixel orientation).
    """
    data = np.asarray(data)
    wcs = _celestial_wcs(header_get)
    jac = None if wcs is None else _sky_jacobian(wcs, data.shape[-2:])
    if jac is None or not np.all(np.isfinite(jac[0])) or np.linalg.det(jac[0]) == 0:
        return data[..., ::-1, :], False
    m, (lon, lat), up = jac
    # angle between the pixel axis nearest to north and north itself
    along_y = abs(m[1, 1]) >= abs(m[1, 0])
    north_axis = m[:, 1] if along_y else m[:, 0]
    east_axis = m[:, 0] if along_y else m[:, 1]
    turn = np.degrees(max(np.arctan2(abs(north_axis[0]), abs(north_axis[1])),
                          np.arctan2(abs(east_axis[1]), abs(east_axis[0]))))
    # pixels longer along one axis than the other (CDELT1 = -1", CDELT2 = 2"): kept, they
    # would be drawn square and the stamp stretched; resampled onto square pixels instead
    # (a difference of length tolerated as a turn of the same angle in radians is)
    stretch = abs(np.log(np.hypot(*north_axis) / np.hypot(*east_axis)))
    if turn <= AXIS_TOLERANCE_DEG and stretch <= np.radians(AXIS_TOLERANCE_DEG):
        out = data if along_y else np.swapaxes(data, -1, -2)  # (.., north axis, east axis)
        if north_axis[1] > 0:  # rows run north: the last one goes on top
            out = out[..., ::-1, :]
        if east_axis[0] > 0:  # columns run east: the last one goes on the left
            out = out[..., :, ::-1]
        return out, True
    from ._cutouts import SkyImage, cut_stamps

    size = max(data.shape[-2:])
    scale = float(np.sqrt(abs(np.linalg.det(m))))
    # (up: ICRS north, as `annotate` cuts its stamps)
    planes = [cut_stamps(SkyImage(np.asarray(p, np.float32), wcs, name="stamp"), [lon], [lat],
                         size=size, pixel_scale=scale, up_angle=up,
                         antialias=False).stamps[0]
              for p in data]
    return np.stack(planes)[..., ::-1, :], True
