"""`north_up` checked against an independent construction of the sky.

A FITS WCS is built from a CD matrix of known rotation and parity; an L-shaped pattern (a
long arm running north from the reference point, a short one running east) is drawn into
the stamp at pixels found by inverting that matrix by hand (and checked against astropy's
own transformation), and the oriented stamp is compared with the same L drawn directly on
a north-up, east-left grid. The L is chiral, so a mirror (east right), a transpose or any
turn matches one of the other seven ways to lay it down better than the right one.
"""
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astromorph._orient import north_up

SIZE = 41
C = (SIZE - 1) / 2  # the centre pixel (0-based), the WCS's reference point
SCALE = 1.0  # arcsec / pixel
RA0, DEC0 = 150.0, 30.0
#: (east, north) arcsec offsets of the points of the L: 12" north, 6" east from its corner.
L_POINTS = [(0.0, n) for n in np.arange(0.0, 12.01, 0.5)] + \
           [(e, 0.0) for e in np.arange(0.5, 6.01, 0.5)]


def _cd(angle, parity):
    """CD matrix (deg / pixel) of a pixel grid turned by ``angle`` degrees; ``parity`` +1
    is the sky as seen (east left when ``angle`` is 0), -1 its mirror (east right)."""
    t = np.radians(angle)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return SCALE / 3600 * rot @ np.diag([-parity, 1.0])


def _header(cd):
    h = fits.Header()
    h.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=RA0, CRVAL2=DEC0,
             CRPIX1=C + 1, CRPIX2=C + 1, CUNIT1="deg", CUNIT2="deg",
             CD1_1=cd[0, 0], CD1_2=cd[0, 1], CD2_1=cd[1, 0], CD2_2=cd[1, 1])
    return h


def _draw(xy):
    """A stamp (rows, columns) with a Gaussian spot (sigma 1 pixel) at every ``(x, y)``."""
    y, x = np.mgrid[:SIZE, :SIZE]
    img = np.zeros((SIZE, SIZE))
    for x0, y0 in xy:
        img += np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / 2.0)
    return img


def _stamp(cd):
    """The L drawn at the pixels of its sky offsets: (dx, dy) = CD^-1 (east, north), the
    tangent plane being flat to far better than a pixel 12 arcsec from its point."""
    offsets = np.array(L_POINTS).T / 3600  # (east, north), degrees
    dx, dy = np.linalg.solve(cd, offsets)
    return _draw(zip(C + dx, C + dy)), (C + dx, C + dy)


def _expected():
    """The L as a north-up, east-left picture shows it, top row first: north is up (a
    smaller row), east is left (a smaller column)."""
    return _draw((C - e / SCALE, C - n / SCALE) for e, n in L_POINTS)


def _dihedral(img):
    """The eight ways of laying ``img`` down (turns and mirrors), the identity first."""
    turns = [np.rot90(img, k) for k in range(4)]
    return turns + [t[:, ::-1] for t in turns]


def _corr(a, b):
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


@pytest.mark.parametrize("parity", [1, -1], ids=["east-left", "mirrored"])
@pytest.mark.parametrize("angle", [0, 37, 90, 180, -123])
def test_oriented_stamp_puts_north_up_and_east_left(angle, parity):
    """Whatever the turn and handedness of the WCS, the L comes out with its long arm
    running up (north) and its short arm running left (east) from the corner at the
    centre: users would otherwise see galaxies mirrored or turned in galleries and
    pictures, with nothing to tell them so."""
    cd = _cd(angle, parity)
    header = _header(cd)
    img, (px, py) = _stamp(cd)
    # the hand-made inversion agrees with astropy's (which north_up does not share)
    ex = np.array(L_POINTS).T / 3600
    ax, ay = WCS(header).world_to_pixel_values(
        RA0 + ex[0] / np.cos(np.radians(DEC0 + ex[1])), DEC0 + ex[1])
    assert np.allclose(ax, px, atol=0.05) and np.allclose(ay, py, atol=0.05)

    shown, oriented = north_up(img[None], header.get)
    assert oriented and shown.shape == (1, SIZE, SIZE)
    scores = [_corr(shown[0], layout) for layout in _dihedral(_expected())]
    assert scores[0] > 0.97, scores  # (a mirror keeping one arm scores 0.74)
    assert scores[0] - max(scores[1:]) > 0.2, scores
    # the corner of the L stays on the centre, the north arm's tip 12 pixels above it
    tip = shown[0][int(C - 12):int(C - 9), int(C) - 1:int(C) + 2]
    assert np.nanmax(tip) > 0.5
    if angle % 90 == 0:  # axes along the pixel axes: flipped or turned, pixels kept
        assert sorted(shown[0].ravel()) == sorted(img.ravel())
