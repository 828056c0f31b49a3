"""Sexagesimal text read as astropy's `Angle` reads it (`astromorph._angles.parse_angles`)."""
import itertools
import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import Angle
from astropy.table import Table

from astromorph._angles import _read, parse_angles, under_full_turn
from astromorph._annotate import _positions


def astropy_degrees(text, unit):
    """``Angle(s, unit).deg`` string by string, NaN where astropy refuses the string."""
    out = []
    for s in text:
        try:
            out.append(Angle(s, unit=unit).deg)
        except (ValueError, TypeError, u.UnitsError):
            out.append(np.nan)
    return np.array(out)


def forms():
    """Strings of every form the fast path reads, and its near misses."""
    fields = [("10", "00", "00.123"), ("0", "30", "0"), ("00", "00", "00"), ("23", "59", "59.9999"),
              ("23", "59", "59.99999999999999"), ("1", "2", "3"), ("359", "59", "59.5"),
              ("89", "59", "60"), ("10", "60", "00"), ("24", "00", "00"), ("25", "0", "0"),
              ("10", "59", "60.5"), ("5", "07", ".5"), ("5", "7", "30."), ("123456", "1", "1"),
              ("12", "34", "56.789012345678901234"), ("0", "0", "0.000001")]
    seps = [(":", ":", ""), (" : ", ": ", ""), (" ", " ", ""), ("  ", "   ", ""), (" ", "\t", ""),
            ("h", "m", "s"), ("h", "m", ""), ("h ", "m ", "s"), (" h ", " m ", " s"),
            ("d", "m", "s"), ("d", "m", ""), ("°", "′", "″"), ("d", "'", '"'),
            ("hr", "min", "sec"),
            ("hours", "m", "s"), ("deg", "m", "s"), (":", " ", ""), ("h", ":", ""), ("d", "m", "m"),
            ("h", "s", "m"), ("\t", " ", ""), (":", ":", "h"), (":", ":", "d")]
    for (a, m, s), (s1, s2, s3), sign in itertools.product(fields, seps,
                                                          ["", "+", "-", "\u2212", "- ", "+-"]):
        yield f"{sign}{a}{s1}{m}{s2}{s}{s3}"
        yield f"{sign}{a}{s1}{s}{s3 if s1 in 'hd' else ''}"  # two fields: a:m.mmm
        yield f"{sign}{a}{s1}{m}{s3}"
    yield from ["-00:30:00", "+00:00:00.0", "-0:0:0", "10h", "10h30", "10h30.5", "10h30m",
                "10h30.5m", "10d30s", "10.5:30:00", "10:30.5:00", "1e1:00:00", "10:00:1e1",
                "10:00:1.5e1", "10:30:15E", "10:30:15W", "10:30:15S", "10:30:15N", "٣:00:00",
                "10::00", ":10:00", "10:00:", "10:00:00:00", "nan", "10 h 30 m", "- 10 30 15",
                "10:30:15 hours", "2:30:15 deg", "1.5 rad", "10:30:15.5.5", "+", "", "abc",
                "10h30m15s ", "10hh30m", "10h30m15ss", "+-1:00:00", "1 2 3 4", "10 30.5"]


@pytest.mark.parametrize("unit", [u.hourangle, u.deg])
def test_same_degrees_as_astropy_angle(unit):
    """Every form, sign, separator, decimal and out-of-range field: bit for bit what
    ``Angle(s, unit).deg`` gives (NaN where astropy refuses)."""
    text = np.array(sorted(set(forms())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's, on 60 s, 60 min and 24 h
        got, expected = parse_angles(text, unit), astropy_degrees(text, unit)
    wrong = [(s, g, e) for s, g, e in zip(text, got, expected)
             if not (g == e or (np.isnan(g) and np.isnan(e)))]
    assert not wrong, wrong[:10]
    assert np.isfinite(expected).sum() > 1000 and np.isnan(expected).sum() > 100
    # the fast path reads most of them itself (not a test that passes through astropy alone)
    assert np.isfinite(_read(text, unit)).sum() > 0.5 * np.isfinite(expected).sum()


@pytest.mark.parametrize("unit", [u.hourangle, u.deg])
def test_astropy_warnings_kept(unit):
    """60 s, 60 min and 24 h are astropy's to warn about (or refuse), string by string."""
    def warns(parse, s):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parse(s)
        return [str(w.message) for w in caught]

    text = [s for s in sorted(set(forms())) if "60" in s or "24" in s]
    ours = [warns(lambda s: parse_angles(np.array([s]), unit), s) for s in text]
    theirs = [warns(lambda s: astropy_degrees([s], unit), s) for s in text]
    assert ours == theirs
    assert sum(map(bool, ours)) > 50


def test_random_angles_round_trip():
    """Angles written by astropy at several precisions read back exactly as astropy does."""
    rng = np.random.default_rng(3)
    ra, dec = Angle(rng.uniform(0, 360, 3000) * u.deg), Angle(rng.uniform(-90, 90, 3000) * u.deg)
    for precision in (0, 3, 9):
        for r in (ra.to_string(u.hourangle, sep=":", precision=precision),
                  ra.to_string(u.hourangle, sep="hms", precision=precision)):
            np.testing.assert_array_equal(parse_angles(r, u.hourangle),
                                          Angle(r, unit=u.hourangle).deg)
        for d in (dec.to_string(u.deg, sep=":", precision=precision, alwayssign=True),
                  dec.to_string(u.deg, sep=" ", precision=precision),
                  dec.to_string(u.deg, sep="dms", precision=precision)):
            np.testing.assert_array_equal(parse_angles(d, u.deg), Angle(d, unit=u.deg).deg)


def test_catalogue_positions_and_flags():
    """annotate's positions: hours for RA, degrees for Dec, repeated and distinct strings,
    and a bad entry flags its row only; 24 h is no right ascension (astropy gives
    359.99999999999994 degrees for it, which used to pass as one)."""
    ra = ["10:00:00.123", "10h00m00.1s", "-00:30:00", "10 00 00", "not an angle", "24:00:00",
          "10:00:00.123", "150.5", "9:59:60"]
    dec = ["+02:00:00.1", "-00:30:00", "+02:00:00.1", "2d30m", "+02:00:00.1", "0:0:0",
           "89:60:00", "-0.5", "10 20 30"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's 60 s / 60 min warnings
        coords, bad = _positions(Table({"ra": ra, "dec": dec}), None, None, None)
    assert bad.tolist() == [False, False, True, False, True, True, False, False, False]
    good = ~bad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp_ra = astropy_degrees(np.array(ra)[good], u.hourangle)
        exp_dec = astropy_degrees(np.array(dec)[good], u.deg)
    exp_ra[np.array(ra)[good] == "150.5"] = 150.5  # decimal text is degrees
    exp_dec[np.array(dec)[good] == "-0.5"] = -0.5
    np.testing.assert_array_equal(coords.ra.deg[good], exp_ra)
    np.testing.assert_array_equal(coords.dec.deg[good], exp_dec)


def test_right_ascension_just_under_24h_is_a_position():
    """'23:59:59.99999999999999' is under 24 h, but astropy rounds it to the same double
    as '24:00:00' (359.99999999999994 degrees), and the row was flagged as 24 h. Whether a
    text RA is a full turn or more is decided on its fields: just under 24 h (or 360 degrees)
    is a position with astropy's `Longitude` degrees; 24 h, 23:59:60 and 360d are not."""
    from astropy.coordinates import Longitude

    ra = ["23:59:59.99999999999999", "23h59m59.99999999999999s", "23 59 59.99999999999999",
          "23:59.9999999999999999", "359d59m59.99999999999999s",
          "24:00:00", "23:59:60", "24h", "360d", "23:59:59.9"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's 24 h / 60 s warnings
        coords, bad = _positions(Table({"ra": ra, "dec": ["0:0:0"] * len(ra)}), None, None, None)
        expected = [Longitude(s, unit=u.hourangle).deg for s in ra]
    assert bad.tolist() == [False] * 5 + [True] * 4 + [False]
    np.testing.assert_array_equal(coords.ra.deg[~bad], np.array(expected)[~bad])
    assert coords.ra.deg[0] == 359.99999999999994 and coords.ra.deg[4] == 0.0


@pytest.mark.parametrize("unit", [u.hourangle, u.deg])
def test_huge_fields_are_no_angle(unit):
    """A field of hundreds of digits (a corrupt column) overflows a float: astropy raises
    OverflowError, which must flag the string (NaN), not give infinity from the fast path nor
    stop the whole column; a long field that fits a float is still read as astropy reads it."""
    huge = "9" * 400
    text = np.array([f"{huge}:00:00", f"-{huge} 30", f"{huge}d30m", f"{huge}h", "10:00:00",
                     "1" * 300 + ":00:00"])
    got = parse_angles(text, unit)
    assert np.isnan(got[:4]).all(), got
    assert got[4] == Angle("10:00:00", unit=unit).deg
    np.testing.assert_array_equal(got[5:], astropy_degrees(text[5:], unit))


def test_huge_field_flags_its_row_only():
    """annotate's positions: an overflowing Dec flags its row (BAD_INPUT), the others stay."""
    ra = ["10:00:00", "10:00:01", "10:00:02"]
    dec = ["+02:00:00", "9" * 400 + "d30m", "9" * 400 + ":00:00"]
    coords, bad = _positions(Table({"ra": ra, "dec": dec}), None, None, None)
    assert bad.tolist() == [False, True, True]


def test_under_full_turn_reads_the_fields_and_the_sign():
    """`under_full_turn` decides on the text's fields: '23:60' is a:m with 60 minutes, a
    full 24 h (the minutes are the last field, not seconds), while '23:59.9999999999999999'
    is under; a negative angle is never 0 up to a full turn, and degrees are compared with
    360."""
    text = np.array(["23:60", "23:60.0", "23:59.9999999999999999", "-23:59:59", "\u221223:59",
                     "-0:0:1", "359d60m", "359d59.99999999999", "24:00:00", "23:59:59.9"])
    assert under_full_turn(text, u.hourangle).tolist() == [
        False, False, True, False, False, False, False, True, False, True]
