"""Gallery tiles of FITS stamps are drawn north up, east left whatever their WCS.

The similarity gallery reversed the rows of every FITS stamp, which puts north up only for
a WCS whose axes run along the pixel axes with east to the left (CDELT1 < 0, CDELT2 > 0):
a rotated WCS (CD matrix with off-diagonal terms, PC with CROTA2) was drawn in pixel
orientation, an east-right WCS mirrored.
"""
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from astromorph import SimilarityIndex
from astromorph._orient import north_up

SIZE = 41
SCALE = 1.0 / 3600  # deg / pixel
RA0, DEC0 = 150.0, 30.0


def _header(kind, angle=0.0):
    """A FITS header of a SIZE x SIZE stamp at (RA0, DEC0): ``cd`` (a CD matrix turned by
    ``angle``, east left), ``crota`` (CDELT with PC of CROTA2 = ``angle``), ``east_right``
    (CDELT1 > 0) or ``none`` (no WCS)."""
    h = fits.Header()
    if kind == "none":
        return h
    c = (SIZE + 1) / 2
    h.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=RA0, CRVAL2=DEC0, CRPIX1=c,
             CRPIX2=c, CUNIT1="deg", CUNIT2="deg")
    t = np.radians(angle)
    if kind == "cd":
        h.update(CD1_1=-SCALE * np.cos(t), CD1_2=SCALE * np.sin(t),
                 CD2_1=SCALE * np.sin(t), CD2_2=SCALE * np.cos(t))
    elif kind == "crota":
        h.update(CDELT1=-SCALE, CDELT2=SCALE, CROTA2=angle)
    elif kind == "east_right":
        h.update(CDELT1=SCALE, CDELT2=SCALE)
    return h


def _stamp(header):
    """Image with a bright blob 10 arcsec north-east of the centre and a fainter one 12
    arcsec north (placed through the WCS; without one, as for the usual east-left WCS)."""
    if len(header):
        w = WCS(header)
        cosd = np.cos(np.radians(DEC0))
        pos = w.world_to_pixel_values([RA0 + 7 / 3600 / cosd, RA0],
                                      [DEC0 + 7 / 3600, DEC0 + 12 / 3600])
        (xa, xb), (ya, yb) = pos
    else:
        c = (SIZE - 1) / 2
        xa, ya, xb, yb = c - 7, c + 7, c, c + 12
    y, x = np.mgrid[:SIZE, :SIZE]
    blob = lambda x0, y0: np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / 4.0)  # noqa: E731
    return (100 * blob(xa, ya) + 40 * blob(xb, yb) + 1.0).astype(np.float32)


def _peak(img):
    """(row, column) of the brightest pixel, top row first, as a tile shows it."""
    return np.unravel_index(np.nanargmax(img), img.shape)


def _gallery_tiles(tmp_path, monkeypatch, headers):
    """(image arrays, titles) of a gallery's tiles (query first) for one FITS stamp per
    header, as matplotlib draws them (the axes' images)."""
    pytest.importorskip("matplotlib")
    import astromorph.embeddings._plots as plots

    figs = []
    real = plots.figure

    def record(**kwargs):
        figs.append(real(**kwargs))
        return figs[-1]

    monkeypatch.setattr(plots, "figure", record)
    paths = []
    for i, h in enumerate(headers):
        p = tmp_path / f"s{i}.fits"
        fits.PrimaryHDU(_stamp(h), header=h).writeto(p)
        paths.append(str(p))
    t = Table()
    t["source"] = paths
    rng = np.random.default_rng(1)
    vec = rng.normal(size=(len(paths), 4))
    t["embedding"] = vec / np.linalg.norm(vec, axis=1, keepdims=True)
    index = SimilarityIndex.from_table(t)
    index.gallery(index.query(row=0, k=len(paths) - 1), tmp_path / "g.png")
    axes = [ax for ax in figs[0].axes if ax.get_title()][:len(paths)]
    rows = [0] + list(index.query(row=0, k=len(paths) - 1)["row"])
    by_row = {r: ax for r, ax in zip(rows, axes)}
    return ([np.asarray(by_row[r].images[0].get_array())[..., 0] for r in range(len(paths))],
            [by_row[r].get_title() for r in range(len(paths))])


@pytest.mark.parametrize("header", [_header("cd", 30), _header("cd", 90), _header("cd", -135),
                                    _header("crota", 30), _header("east_right"),
                                    _header("cd", 0)],
                         ids=["cd30", "cd90", "cd-135", "crota30", "east_right", "plain"])
def test_gallery_tile_is_north_up_east_left(tmp_path, monkeypatch, header):
    images, titles = _gallery_tiles(tmp_path, monkeypatch, [header, _header("cd", 0)])
    tile = images[0]
    c = (tile.shape[0] - 1) / 2
    row, col = _peak(tile)
    assert row < c - 3 and col < c - 3, (row, col)  # the NE blob: upper left
    # the fainter north blob: straight above the centre (a transposed or mirrored tile
    # would keep the NE blob upper left but put this one on the left or right)
    masked = tile.copy()
    masked[max(row - 3, 0):row + 4, max(col - 3, 0):col + 4] = np.nan
    nrow, ncol = _peak(masked)
    assert nrow < c - 6 and abs(ncol - c) <= 2, (nrow, ncol)
    assert "pixel axes" not in titles[0]


@pytest.mark.parametrize("header", [_header("cd", 90), _header("cd", 180), _header("east_right"),
                                    _header("cd", 0), _header("cd", 0.5)],
                         ids=["cd90", "cd180", "east_right", "plain", "cd0.5"])
def test_axis_aligned_stamp_keeps_its_pixels(header):
    """Flips and transposition only: the pixels drawn are the stamp's own, none resampled."""
    data = _stamp(header)[None]
    shown, oriented = north_up(data, header.get)
    assert oriented
    assert shown.shape == data.shape
    candidates = [data[..., ::a, ::b] for a in (1, -1) for b in (1, -1)]
    candidates += [np.swapaxes(c, -1, -2) for c in candidates]
    assert any(np.array_equal(shown, c) for c in candidates)


def test_plain_east_left_stamp_is_drawn_as_before():
    """The usual WCS (CDELT1 < 0, CDELT2 > 0): rows reversed, exactly as galleries drew it."""
    h = _header("cd", 0)
    data = _stamp(h)[None]
    shown, oriented = north_up(data, h.get)
    assert oriented and np.array_equal(shown, data[..., ::-1, :])


def test_stamp_without_wcs_is_drawn_in_pixel_orientation_and_says_so(tmp_path, monkeypatch):
    images, titles = _gallery_tiles(tmp_path, monkeypatch, [_header("none"), _header("cd", 0)])
    from astromorph.embeddings import display_image

    data = _stamp(_header("none"))
    # FITS row 0 at the bottom, as ds9 shows it: the rows reversed, nothing else
    assert np.array_equal(images[0], display_image(data[::-1])[..., 0])
    assert "pixel axes" in titles[0] and "pixel axes" not in titles[1]


@pytest.mark.parametrize("layout", ["cube", "hdus"])
def test_rotated_band_stack_is_north_up(tmp_path, layout):
    """A g, r, i cube and a file of one HDU per band, WCS turned by 30 degrees: each band
    of the tile north up, east left (the header of the cube, of the first band HDU)."""
    from astromorph.embeddings._plots import _read_stamp

    h = _header("cd", 30)
    img = _stamp(h)
    path = tmp_path / "s.fits"
    if layout == "cube":
        cube_header = h.copy()
        cube_header.update(BAND1="g", BAND2="r", BAND3="i")
        fits.PrimaryHDU(np.stack([img] * 3), header=cube_header).writeto(path)
    else:
        fits.HDUList([fits.PrimaryHDU()] + [fits.ImageHDU(img, header=h, name=b)
                                            for b in "GRI"]).writeto(path)
    data, why, note = _read_stamp(path, None)
    assert why is None and note == "" and data.shape[0] == 3
    c = (data.shape[-1] - 1) / 2
    for plane in data:
        row, col = _peak(plane)
        assert row < c - 3 and col < c - 3, (row, col)


def test_galactic_stamp_is_drawn_icrs_north_up(tmp_path, monkeypatch):
    """A stamp whose WCS is Galactic (GLON-TAN/GLAT-TAN, Galactic north up) was drawn
    Galactic-north up, while `annotate` cuts its stamps ICRS-north up whatever the image's
    frame; the gallery now turns it ICRS north up, east left too (here by about 60 degrees:
    the ICRS north-east blob upper left, the ICRS north one straight above the centre)."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    centre = SkyCoord(RA0 * u.deg, DEC0 * u.deg)
    gal = centre.galactic
    c = (SIZE + 1) / 2
    h = fits.Header()
    h.update(CTYPE1="GLON-TAN", CTYPE2="GLAT-TAN", CRVAL1=gal.l.deg, CRVAL2=gal.b.deg,
             CRPIX1=c, CRPIX2=c, CUNIT1="deg", CUNIT2="deg", CDELT1=-SCALE, CDELT2=SCALE)
    w = WCS(h)
    blobs = SkyCoord([RA0 + 7 / 3600 / np.cos(np.radians(DEC0)), RA0] * u.deg,
                     [DEC0 + 7 / 3600, DEC0 + 12 / 3600] * u.deg)
    (xa, xb), (ya, yb) = w.world_to_pixel(blobs)
    y, x = np.mgrid[:SIZE, :SIZE]
    blob = lambda x0, y0: np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / 4.0)  # noqa: E731
    data = (100 * blob(xa, ya) + 40 * blob(xb, yb) + 1.0).astype(np.float32)
    shown, oriented = north_up(data[None], h.get)
    assert oriented
    tile = shown[0]
    c = (tile.shape[0] - 1) / 2
    row, col = _peak(tile)
    assert row < c - 3 and col < c - 3, (row, col)
    masked = tile.copy()
    masked[max(row - 3, 0):row + 4, max(col - 3, 0):col + 4] = np.nan
    nrow, ncol = _peak(masked)
    assert nrow < c - 6 and abs(ncol - c) <= 2, (nrow, ncol)
    # the same blobs on an ICRS stamp: drawn at the same place (to a pixel)
    icrs = north_up(_stamp(_header("cd", 0))[None], _header("cd", 0).get)[0][0]
    assert np.abs(np.subtract(_peak(icrs), _peak(tile))).max() <= 1


def test_ecliptic_stamp_is_drawn_icrs_north_up():
    """A stamp whose WCS is ecliptic (ELON-TAN/ELAT-TAN, ecliptic north up; wcslib sets
    RADESYS = ICRS) was read by astropy as an ICRS stamp and drawn ecliptic-north up (about
    15 degrees off here); it is now turned ICRS north up, as `annotate` cuts its stamps:
    its blobs fall where those of the ICRS stamp of the same sky do (to a pixel)."""
    from astropy import units as u
    from astropy.coordinates import BarycentricMeanEcliptic, SkyCoord

    ecl = SkyCoord(RA0 * u.deg, DEC0 * u.deg).transform_to(BarycentricMeanEcliptic())
    c = (SIZE + 1) / 2
    h = fits.Header()
    h.update(CTYPE1="ELON-TAN", CTYPE2="ELAT-TAN", CRVAL1=ecl.lon.deg, CRVAL2=ecl.lat.deg,
             CRPIX1=c, CRPIX2=c, CUNIT1="deg", CUNIT2="deg", CDELT1=-SCALE, CDELT2=SCALE)
    w = WCS(h)
    cosd = np.cos(np.radians(DEC0))
    blobs = SkyCoord([RA0 + 7 / 3600 / cosd, RA0] * u.deg,
                     [DEC0 + 7 / 3600, DEC0 + 12 / 3600] * u.deg).transform_to(ecl.frame)
    (xa, xb), (ya, yb) = w.world_to_pixel_values(blobs.lon.deg, blobs.lat.deg)
    y, x = np.mgrid[:SIZE, :SIZE]
    blob = lambda x0, y0: np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / 4.0)  # noqa: E731
    data = (100 * blob(xa, ya) + 40 * blob(xb, yb) + 1.0).astype(np.float32)
    shown, oriented = north_up(data[None], h.get)
    assert oriented
    icrs = north_up(_stamp(_header("cd", 0))[None], _header("cd", 0).get)[0][0]

    def peaks(tile):  # the bright blob's (row, column), then the faint one's
        row, col = _peak(tile)
        masked = tile.copy()
        masked[max(row - 3, 0):row + 4, max(col - 3, 0):col + 4] = np.nan
        return np.array([(row, col), _peak(masked)])

    assert np.abs(peaks(shown[0]) - peaks(icrs)).max() <= 1


def _blob_peaks(tile):
    """The bright blob's (row, column), then the faint one's, top row first."""
    row, col = _peak(tile)
    masked = tile.copy()
    masked[max(row - 3, 0):row + 4, max(col - 3, 0):col + 4] = np.nan
    return np.array([(row, col), _peak(masked)])


def _two_blobs(w, shape, lon, lat):
    """A stamp of ``shape`` with a bright blob at (lon[0], lat[0]) and a faint one at
    (lon[1], lat[1]), degrees in the frame of ``w``."""
    (xa, xb), (ya, yb) = w.world_to_pixel_values(lon, lat)
    y, x = np.mgrid[:shape[0], :shape[1]]
    blob = lambda x0, y0: np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / 4.0)  # noqa: E731
    return (100 * blob(xa, ya) + 40 * blob(xb, yb) + 1.0).astype(np.float32)


def test_non_square_pixels_are_drawn_square():
    """Pixels of 1 x 2 arcsec along a WCS that runs along the pixel axes were kept, so the
    tile was drawn stretched (the blob 45 degrees north-east shown 63 degrees east of north);
    the stamp is now resampled onto square pixels: the blobs are where those of a stamp of
    square pixels of the same sky are, to a pixel."""
    h = _header("cd", 0)
    h.update(CD1_1=-SCALE, CD2_2=2 * SCALE)
    cosd = np.cos(np.radians(DEC0))
    data = _two_blobs(WCS(h), (SIZE, SIZE), [RA0 + 10 / 3600 / cosd, RA0],
                      [DEC0 + 10 / 3600, DEC0 + 20 / 3600])
    shown, oriented = north_up(data[None], h.get)
    assert oriented and shown.shape == (1, SIZE, SIZE)
    (r1, c1), (r2, c2) = _blob_peaks(shown[0]) - (SIZE - 1) / 2
    assert abs(np.degrees(np.arctan2(-c1, -r1)) - 45) < 4, (r1, c1)  # north-east
    assert abs(c2) <= 1 and r2 < -10, (r2, c2)  # north


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_stamp_at_the_pole_is_north_up(offset):
    """A stamp centred on the north celestial pole was drawn in pixel orientation (its
    east steps came out of a difference of longitudes times cos(90 deg): zero), and one
    centred half a pixel from it was resampled at a pixel scale 13% off; the offsets are
    now taken on the tangent plane of the centre: north (towards longitude 180 from the
    pole at longitude 0, as ``directional_offset_by`` has it) up, the pixels kept."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    c = (SIZE + 1) / 2
    h = fits.Header()
    h.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=0.0, CRVAL2=90.0, CRPIX1=c + offset,
             CRPIX2=c, CD1_1=-SCALE, CD1_2=0.0, CD2_1=0.0, CD2_2=SCALE)
    w = WCS(h)
    centre = SkyCoord(*w.pixel_to_world_values((SIZE - 1) / 2, (SIZE - 1) / 2), unit="deg")
    blobs = centre.directional_offset_by([45, 0] * u.deg, [10, 12] * u.arcsec)
    data = _two_blobs(w, (SIZE, SIZE), blobs.ra.deg, blobs.dec.deg)
    shown, oriented = north_up(data[None], h.get)
    assert oriented
    (r1, c1), (r2, c2) = _blob_peaks(shown[0]) - (SIZE - 1) / 2
    assert abs(np.hypot(r1, c1) - 10) <= 1 and abs(np.hypot(r2, c2) - 12) <= 1  # the scale
    assert abs(np.degrees(np.arctan2(-c1, -r1)) - 45) < 6, (r1, c1)  # north-east
    assert abs(c2) <= 1 and r2 < -10, (r2, c2)  # north


def test_cube_whose_celestial_axes_are_not_its_image_axes():
    """A cube of CTYPE1 = 'FREQ', CTYPE2/3 = RA/DEC: its celestial WCS was applied to the
    stamp's (NAXIS2, NAXIS1) planes, which are not its celestial axes, and the tile said
    to be north up; it is now drawn in pixel orientation (and the tile says so)."""
    h = fits.Header()
    h.update(NAXIS=3, NAXIS1=3, NAXIS2=SIZE, NAXIS3=SIZE, CTYPE1="FREQ", CRVAL1=1e9,
             CDELT1=1e6, CRPIX1=1, CTYPE2="RA---TAN", CTYPE3="DEC--TAN", CRVAL2=RA0,
             CRVAL3=DEC0, CRPIX2=21, CRPIX3=21, CDELT2=-SCALE, CDELT3=SCALE)
    data = np.arange(SIZE * SIZE * 3, dtype=np.float32).reshape(SIZE, SIZE, 3)
    shown, oriented = north_up(data, h.get)
    assert not oriented
    assert np.array_equal(shown, data[..., ::-1, :])


@pytest.mark.parametrize("keys", [
    dict(CD1_1=0.0, CD1_2=0.0, CD2_2=SCALE),          # zero row and column: wcslib fills 1 deg
    dict(CD1_1=SCALE, CD1_2=SCALE, CD2_1=SCALE, CD2_2=SCALE),  # singular
    dict(CDELT1=0.0, CDELT2=SCALE),
    dict(CDELT1=-SCALE, CDELT2=SCALE, PC1_1=0.0, PC1_2=0.0),
    dict(),                                           # no scale keyword: wcslib takes 1 deg
], ids=["cd_zero_row", "cd_singular", "cdelt_zero", "pc_zero_row", "no_scale"])
def test_degenerate_wcs_is_drawn_in_pixel_orientation(keys):
    """A CD matrix with a zero row (CD1_1 = CD1_2 = 0) was silently repaired by wcslib
    (1 degree/pixel on the diagonal), as a header without CDELTi, CDi_j or PCi_j gets
    FITS's default 1 degree/pixel, and the stamp resampled "north up" into an almost
    blank tile; a degenerate WCS is now no usable WCS: pixel orientation."""
    h = fits.Header()
    c = (SIZE + 1) / 2
    h.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=RA0, CRVAL2=DEC0, CRPIX1=c,
             CRPIX2=c, **keys)
    data = _stamp(_header("none"))[None]
    shown, oriented = north_up(data, h.get)
    assert not oriented
    assert np.array_equal(shown, data[..., ::-1, :])


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")  # the NaN card under test
def test_stamp_with_a_nan_reference_point_is_drawn_in_pixel_orientation(tmp_path):
    """``CRVAL1 = NaN`` (no FITS number, but the fast FITS parser reads it as NaN): drawing
    the stamp raised astropy's "Floating point nan values are not allowed in FITS
    headers"; it is no usable WCS, drawn in pixel orientation."""
    from astromorph._readers import read_file

    h = _header("cd", 30)
    h["CRVAL1"] = 123.25  # replaced by NaN in the file's bytes
    path = tmp_path / "nan.fits"
    fits.PrimaryHDU(_stamp(_header("cd", 30)), header=h).writeto(path)
    path.write_bytes(path.read_bytes().replace(b" 123.25", b"    NaN", 1))
    stamp = read_file(path)[0]
    assert np.isnan(stamp.header_get("CRVAL1"))
    shown, oriented = north_up(stamp.data, stamp.header_get)
    assert not oriented
    assert np.array_equal(shown, stamp.data[..., ::-1, :])
    with fits.open(path) as hdul:  # astropy's header (wcslib reads the card as 0)
        assert not north_up(stamp.data, hdul[0].header.get)[1]


def test_orienting_leaves_the_warning_filters_of_other_threads_alone():
    """north_up's `warnings.catch_warnings` block did not take turns with astromorph's
    others (a reader thread, Dask's threaded partitions): a block of another thread entered
    while it ran and left after it put back, for good, the filter north_up had added
    (FITSFixedWarning ignored in the whole process). The blocks are ordered with events;
    the timeout only bounds how long a regression takes to show (the other block entering
    while north_up's runs)."""
    import threading
    import warnings

    from astromorph._warnings import catch_warnings

    h = _header("cd", 30)
    inside, other_inside, other_may_leave = (threading.Event() for _ in range(3))

    def get(key, default=None):  # the stamp's header, read inside north_up's block
        if not inside.is_set():
            inside.set()
            other_inside.wait(5)
        return h.get(key, default)

    get.keys = h.keys

    def other():
        with catch_warnings():
            other_inside.set()
            other_may_leave.wait(60)

    before = list(warnings.filters)
    results = []
    orienting = threading.Thread(target=lambda: results.append(north_up(_stamp(h)[None], get)))
    orienting.start()
    assert inside.wait(60)
    entering = threading.Thread(target=other)
    entering.start()
    orienting.join(60)
    other_may_leave.set()
    entering.join(60)
    assert results and results[0][1]  # oriented by its WCS
    assert warnings.filters == before


def test_corners_outside_a_rotated_stamp_are_transparent(tmp_path, monkeypatch):
    """A stamp turned north up by resampling (WCS rotated 30 degrees) has NaN corners,
    outside the stamp: they were drawn black, the stretch's floor, like the faintest sky;
    now they are transparent (the figure's background shows), the stamp itself opaque,
    and a stamp that needs no resampling is drawn as before (RGB, no alpha)."""
    pytest.importorskip("matplotlib")
    import astromorph.embeddings._plots as plots

    figs = []
    real = plots.figure
    monkeypatch.setattr(plots, "figure", lambda **kw: figs.append(real(**kw)) or figs[-1])
    paths = []
    for i, h in enumerate([_header("cd", 30), _header("cd", 0)]):
        p = tmp_path / f"s{i}.fits"
        fits.PrimaryHDU(_stamp(h), header=h).writeto(p)
        paths.append(str(p))
    t = Table({"source": paths, "embedding": np.array([[1.0, 0.0], [0.8, 0.6]])})
    index = SimilarityIndex.from_table(t)
    index.gallery(index.query(row=0, k=1), tmp_path / "g.png")
    rotated, plain = (np.asarray(ax.images[0].get_array())
                      for ax in figs[0].axes if ax.get_title())
    assert rotated.shape == (SIZE, SIZE, 4) and np.isfinite(rotated).all()
    alpha = rotated[..., 3]
    for corner in (alpha[0, 0], alpha[0, -1], alpha[-1, 0], alpha[-1, -1]):
        assert corner == 0
    c = SIZE // 2
    assert alpha[c - 10:c + 11, c - 10:c + 11].min() == 1  # the stamp itself: opaque
    shown, _ = north_up(_stamp(_header("cd", 30))[None], _header("cd", 30).get)
    assert np.array_equal(alpha == 0, np.isnan(shown[0]))
    assert plain.shape == (SIZE, SIZE, 3)


def _expected_peaks(w, shape, lon, lat, size):
    """Where blobs at (lon, lat) fall on a north-up, east-left tile of ``size`` pixels of
    SCALE centred on the stamp's centre (astropy's pixel_to_world, offsets on the sky)."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    centre = w.pixel_to_world((shape[1] - 1) / 2, (shape[0] - 1) / 2)
    blobs = SkyCoord(lon * u.deg, lat * u.deg)
    east, north = centre.spherical_offsets_to(blobs)
    c = (size - 1) / 2
    return np.stack([c - north.to_value(u.deg) / SCALE, c - east.to_value(u.deg) / SCALE], 1)


@pytest.mark.parametrize("shape", [(31, 51), (51, 31)])
def test_rotated_stamp_that_is_not_square_is_north_up(shape):
    """A stamp of H != W pixels, WCS turned by 30 degrees: resampled onto a square grid of
    max(H, W) pixels centred on the stamp's centre, its blobs where the WCS puts them."""
    h = _header("cd", 30)
    h.update(CRPIX1=(shape[1] + 1) / 2, CRPIX2=(shape[0] + 1) / 2)
    cosd = np.cos(np.radians(DEC0))
    lon = np.array([RA0 + 6 / 3600 / cosd, RA0 - 3 / 3600 / cosd])
    lat = np.array([DEC0 + 4 / 3600, DEC0 + 9 / 3600])
    data = _two_blobs(WCS(h), shape, lon, lat)
    shown, oriented = north_up(data[None], h.get)
    size = max(shape)
    assert oriented and shown.shape == (1, size, size)
    expected = _expected_peaks(WCS(h), shape, lon, lat, size)
    assert np.abs(_blob_peaks(shown[0]) - expected).max() <= 1, (_blob_peaks(shown[0]),
                                                                 expected)


def test_stamp_turned_beyond_the_tolerance_is_resampled_not_flipped():
    """A WCS turned by 5 degrees (more than AXIS_TOLERANCE_DEG) is resampled north up: no
    flip or transposition of the stamp's own pixels, and its north blob straight above."""
    from astromorph._orient import AXIS_TOLERANCE_DEG

    assert AXIS_TOLERANCE_DEG < 5
    h = _header("cd", 5)
    data = _stamp(h)[None]
    shown, oriented = north_up(data, h.get)
    assert oriented
    candidates = [data[..., ::a, ::b] for a in (1, -1) for b in (1, -1)]
    candidates += [np.swapaxes(c, -1, -2) for c in candidates]
    assert not any(np.array_equal(shown, c) for c in candidates)
    lon = np.array([RA0 + 7 / 3600 / np.cos(np.radians(DEC0)), RA0])
    lat = np.array([DEC0 + 7 / 3600, DEC0 + 12 / 3600])
    expected = _expected_peaks(WCS(h), (SIZE, SIZE), lon, lat, SIZE)
    assert np.abs(_blob_peaks(shown[0]) - expected).max() <= 1


@pytest.mark.parametrize("shear", [8.0, -8.0])
def test_sheared_stamp_whose_north_runs_along_a_pixel_axis_is_resampled(shear):
    """A CD matrix with a shear: north runs exactly along the pixel rows' axis (CD1_2 = 0)
    but a step along x goes west and ``shear`` degrees north. Only the north axis was
    tested against the axis tolerance, so the stamp was flipped, its pixels kept, and a
    blob due east shown 2.5 pixels off; it is now resampled, its blobs (18 arcsec east,
    12 arcsec north) where astropy's pixel_to_world puts them, to a pixel."""
    t = np.radians(shear)
    h = _header("cd", 0)
    h.update(CD1_1=-SCALE * np.cos(t), CD1_2=0.0, CD2_1=SCALE * np.sin(t), CD2_2=SCALE)
    w = WCS(h)
    cosd = np.cos(np.radians(DEC0))
    lon = np.array([RA0 + 18 / 3600 / cosd, RA0])
    lat = np.array([DEC0, DEC0 + 12 / 3600])
    data = _two_blobs(w, (SIZE, SIZE), lon, lat)[None]
    (xa, _), (ya, _) = w.world_to_pixel_values(lon, lat)
    assert abs(ya - (SIZE - 1) / 2) > 2  # the east blob is off the centre's row
    shown, oriented = north_up(data, h.get)
    assert oriented and shown.shape == (1, SIZE, SIZE)
    candidates = [data[..., ::a, ::b] for a in (1, -1) for b in (1, -1)]
    candidates += [np.swapaxes(c, -1, -2) for c in candidates]
    assert not any(np.array_equal(shown, c) for c in candidates)
    expected = _expected_peaks(w, (SIZE, SIZE), lon, lat, SIZE)
    assert np.abs(expected[0] - [(SIZE - 1) / 2, (SIZE - 1) / 2 - 18]).max() < 0.1
    assert np.abs(_blob_peaks(shown[0]) - expected).max() <= 1, (_blob_peaks(shown[0]),
                                                                 expected)


def _d_exponents(header):
    """``header`` with its CDi_j cards written with a D exponent (``-2.7D-04``, as FITS
    allows and Fortran writers print), their card images kept so by astropy."""
    text = "".join(f"{k:<8}= {f'{v:.16E}'.replace('E', 'D'):>20}".ljust(80)
                   if k.startswith("CD") else str(card).ljust(80)
                   for (k, v), card in zip(header.items(), header.cards))
    return fits.Header.fromstring(text)


def test_stamp_whose_wcs_cards_have_d_exponents_is_oriented_as_with_e(tmp_path):
    """A CD matrix written with D exponents (CD1_1 = -2.7D-04, CD1_2 = 4.8D-05: turned by 10
    degrees): wcslib reads such a card as the digits before its D (-2.7 and 4.8 degrees:
    turned by 60 degrees), so a stamp read with astropy's header (`north_up` takes the
    Header itself where the getter keeps one: astropy's reader of FITS stamps) was resampled
    along the wrong north. It is drawn as the stamp of the same cards written with E."""
    from astromorph._readers._fits import _read_fits_astropy

    h = _header("cd", 10)
    d = _d_exponents(h)
    assert "D-04" in d.tostring() and "D-05" in d.tostring()
    assert all(d[k] == h[k] for k in h)
    data = _stamp(h)
    expected, oriented = north_up(data[None], h.get)
    assert oriented
    for header in (h, d):  # astropy's reader's header getter (`_lenient`), and a Header's
        path = tmp_path / f"{'ed'[header is d]}.fits"
        fits.PrimaryHDU(data, header=header).writeto(path)
        stamp, = _read_fits_astropy(path, want_scale=False, triplet_hint=False)
        for get in (stamp.header_get, header.get):
            shown, oriented = north_up(stamp.data, get)
            assert oriented
            np.testing.assert_array_equal(shown, expected)


def test_pixels_shorter_north_than_east_are_drawn_square():
    """Pixels of 2 x 1 arcsec (longer east-west than north-south) are resampled onto square
    pixels as those of 1 x 2 arcsec are: the stretch is the size of the log of the ratio of
    the two lengths, whichever is longer; taken with its sign, such stamps were kept as
    they are and drawn squashed (a blob north-east shown 27 degrees east of north)."""
    h = _header("cd", 0)
    h.update(CD1_1=-2 * SCALE, CD2_2=SCALE)
    cosd = np.cos(np.radians(DEC0))
    data = _two_blobs(WCS(h), (SIZE, SIZE), [RA0 + 8 / 3600 / cosd, RA0],
                      [DEC0 + 8 / 3600, DEC0 + 12 / 3600])
    shown, oriented = north_up(data[None], h.get)
    assert oriented and shown.shape == (1, SIZE, SIZE)
    (r1, c1), (r2, c2) = _blob_peaks(shown[0]) - (SIZE - 1) / 2
    assert abs(np.degrees(np.arctan2(-c1, -r1)) - 45) < 5, (r1, c1)  # north-east
    assert abs(c2) <= 1 and r2 < -6, (r2, c2)  # north


def test_stamp_whose_centre_is_beyond_the_projection_is_drawn_in_pixel_orientation():
    """A WCS that places the stamp's centre off the sphere (SIN projection, reference pixel
    far away: no sky there) has no north there: the stamp is drawn in pixel orientation
    and said to be, not resampled about a NaN position into a blank tile marked
    oriented."""
    h = fits.Header()
    h.update(CTYPE1="RA---SIN", CTYPE2="DEC--SIN", CRVAL1=RA0, CRVAL2=DEC0, CRPIX1=-5000.0,
             CRPIX2=21.0, CDELT1=-0.02, CDELT2=0.02)
    data = _stamp(_header("none"))[None]
    shown, oriented = north_up(data, h.get)
    assert not oriented
    assert np.array_equal(shown, data[..., ::-1, :])


def test_orienting_a_stamp_whose_header_wcslib_fixes_says_nothing(recwarn):
    """wcslib's fixes of a header (MJD-OBS set from DATE-OBS) are no news to a gallery
    user: orienting the stamp raises no FITSFixedWarning (one per tile otherwise)."""
    import warnings

    data = _stamp(_header("cd", 30))[None]
    h = _header("cd", 30)
    h["DATE-OBS"] = "2020-01-01T00:00:00"
    warnings.simplefilter("always")
    shown, oriented = north_up(data, h.get)
    assert oriented
    assert not [w for w in recwarn if "FITSFixed" in type(w.message).__name__], \
        [str(w.message) for w in recwarn]
