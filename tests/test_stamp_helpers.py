"""`astromorph._readers._stamp`'s helpers: pixel scales of a WCS matrix, the scale common to
a stamp's planes, the central disk `Flag.SATURATED` looks at, and
`Stamp`'s usable state.

Each test here was written against a mutant of ``astromorph/_readers/_stamp.py`` that the
rest of the suite let pass (a mutation-testing round): it fails on that mutant and passes on
the code as it is. No model is loaded.
"""
from pathlib import Path

import numpy as np
import pytest

from astromorph._flags import Flag
from astromorph._readers._stamp import (Stamp, central_disk, common_pixel_scale, pixel_scales,
                                        saturated_centres)


def rotated(side_x, side_y, degrees):
    """A pixel scale matrix (degrees/pixel) of pixels ``side_x`` by ``side_y`` arcsec turned
    by ``degrees``: its columns are one pixel step along x and along y."""
    t = np.radians(degrees)
    turn = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return turn @ np.diag([side_x, side_y]) / 3600.0


def test_scales_of_turned_oblong_pixels_are_the_lengths_of_their_steps():
    """The sides of a pixel are the lengths of the matrix's columns (one step along each
    pixel axis), not of its rows: a turned 1x2 arcsec pixel is (2, 1) arcsec (y, x)."""
    assert pixel_scales(rotated(1.0, 2.0, 30.0)) == pytest.approx((2.0, 1.0))
    assert pixel_scales(rotated(0.5, 0.5, 30.0)) == pytest.approx(0.5)


def test_scales_within_one_percent_are_one_grid_beyond_it_are_not():
    """Planes whose scales differ by under 1 % are on one grid; by 5 %, they are not."""
    assert common_pixel_scale([0.2, 0.2019]) == (0.2, None)
    scale, problem = common_pixel_scale([0.2, 0.21])
    assert scale == 0.2 and problem and "differ in pixel scale" in problem, problem


def test_common_scale_is_the_first_known_one():
    """The scale of planes on one grid is the first plane's that has one."""
    assert common_pixel_scale([None, 0.2, 0.2015]) == (0.2, None)
    assert common_pixel_scale([None, None]) == (None, None)


def test_central_disk_takes_the_pixels_at_the_radius():
    """Pixels whose centres lie at exactly 3 pixels from the centre are in the disk (29
    pixels for a 7x7 stamp: the lattice points of a closed disk of radius 3)."""
    rows, cols = central_disk((7, 7))
    taken = set(zip(rows.tolist(), cols.tolist()))
    assert len(taken) == 29
    assert {(0, 3), (6, 3), (3, 0), (3, 6)} <= taken


def test_central_disk_of_an_even_stamp_is_centred_between_pixels():
    """The centre of a 6x6 stamp lies between its pixels, at (2.5, 2.5): the disk is
    symmetric about it."""
    rows, cols = central_disk((6, 6))
    taken = set(zip(rows.tolist(), cols.tolist()))
    assert taken == {(5 - y, 5 - x) for y, x in taken}
    assert len(taken) == 32 and (0, 1) in taken and (0, 0) not in taken


def test_saturated_centre_of_one_plane_flags_the_stamp():
    """A stamp is saturated where any one plane reaches its level at the centre; pixels
    that are no data (inf, masking sentinels) never reach it."""
    data = np.zeros((2, 3, 7, 7))
    data[0, 1, 3, 3] = 100.0
    data[1, :, 3, 3] = [np.inf, 1e30, np.nan]
    levels = np.full((2, 3), 50.0)
    assert saturated_centres(data, levels).tolist() == [True, False]


def test_stamp_without_data_is_not_usable():
    """A stamp with no kind (nothing read) is unusable even with no flag set."""
    assert not Stamp("x", Path("x")).usable
    assert Stamp("x", Path("x"), "colour", np.zeros((2, 2, 3), np.uint8)).usable


def test_unusable_flag_drops_the_data():
    """Flagging a stamp unusable drops its kind and data (nothing is scored from them) and
    records the reason; a flag that leaves it usable keeps them."""
    data = np.zeros((3, 4, 4), np.float32)
    stamp = Stamp("x", Path("x"), "bands", data).flag(Flag.CONSTANT, "flat")
    assert stamp.usable and stamp.data is data
    stamp.flag(Flag.BAD_INPUT, "broken")
    assert not stamp.usable and stamp.kind is None and stamp.data is None
    assert stamp.reason == ["flat", "broken"]
