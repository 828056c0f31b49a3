"""Sexagesimal angle text ('10:00:00.5', '-00:30:00', '10h00m00.5s') to degrees, vectorised.

astropy's `~astropy.coordinates.Angle` parses one string at a time (about 65 us each), which
made a 100,000-row CSV catalogue take seconds. `parse_angles` reads the common forms with one
compiled regular expression applied to the distinct strings and numpy arithmetic that
reproduces `Angle` bit for bit; every string it does not recognise, or whose fields are out of
range (60 seconds, 24 hours: astropy warns or refuses), goes to `Angle` itself, so the result
is never different from astropy's.
"""
import re
from decimal import Decimal
from fractions import Fraction

import numpy as np
from astropy import units as u

__all__ = ["parse_angles", "under_full_turn"]

_NUM = r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+"  # astropy's UFLOAT | UINT, without exponents
#: the forms read here, as astropy's grammar reads them: a:m:s or a:m with colons, spaces or
#: unit letters (h or d, then m, s), the minutes as a decimal where they come last; spaces
#: separate tokens and are otherwise ignored, as astropy's lexer does
_FORMS = re.compile(rf"""
    (?P<sign>[-+\u2212])?\ *(?P<a>[0-9]+)
    (?:(?P<colon>\ *:\ *)|(?P<letter>\ *(?P<unit>[hd\u00b0])\ *)|\ +)   # 10: 10h 10d 10°
    (?:(?P<m>[0-9]+)(?(colon)\ *:\ *|(?(letter)\ *[m\u2032']\ *|\ +)))?  # 00: 00m 00'
    (?P<s>{_NUM})(?(letter)(?(m)\ *[s\u2033"]?))                        # 00.5 00.5s
    """, re.VERBOSE)


def _read(text, unit):
    """Degrees of the strings in ``text`` that `_FORMS` reads with their fields in range
    (NaN for the others): the arithmetic of `Angle` for a sexagesimal tuple."""
    out = np.full(len(text), np.nan)
    found = [_FORMS.fullmatch(s) for s in text.tolist()]
    rows = np.flatnonzero([m is not None for m in found])
    if not len(rows):
        return out
    # groups in order: sign, a, colon, letter, unit, m, s ("" where absent)
    sign, a, _, _, letter, m, s = np.array([found[i].groups("") for i in rows], dtype=str).T
    a, s = a.astype(float), s.astype(float)
    three = m != ""  # a:m:s, else a:m, the minutes then with decimals
    minutes = np.where(three, np.where(three, m, "0").astype(float), s)
    seconds = np.where(three, s, 0.0)
    hours = (letter == "h") | ((letter == "") & (unit == u.hourangle))
    # astropy refuses or warns about 24 h, 60 min or 60 s: those rows are left to it
    ok = (minutes < 60) & (seconds < 60) & ~(hours & (a >= 24))
    # Angle's arithmetic: |a| + m / 60 (+ s / 3600), with the sign
    value = np.copysign(a + minutes / 60.0 + seconds / 3600.0,
                        np.where((sign == "-") | (sign == "\u2212"), -1.0, 1.0))
    ok &= np.isfinite(value)  # hundreds of digits: astropy's OverflowError, left to it
    for parsed_unit, sel in ((u.hourangle, ok & hours), (u.deg, ok & ~hours)):
        if sel.any():  # Angle(text, unit): in the unit parsed, then in `unit`, then .deg
            in_unit = u.Quantity(value[sel], parsed_unit).to_value(unit)
            out[rows[sel]] = u.Quantity(in_unit, unit).to_value(u.deg)
    return out


def parse_angles(text, unit):
    """Degrees of the angles written in the strings ``text`` (a 1-d array), NaN where a
    string is no angle; as ``Angle(text, unit=unit).deg`` string by string.

    Parameters
    ----------
    text : numpy.ndarray of str
        Angles as text, stripped.
    unit : `~astropy.units.Unit`
        The unit of fields without a unit letter (`~astropy.units.hourangle` for right
        ascension, `~astropy.units.deg` for declination).

    Returns
    -------
    numpy.ndarray of float
    """
    from astropy.coordinates import Angle

    text = np.asarray(text, dtype=str)
    distinct, index = np.unique(text, return_inverse=True)
    values = _read(distinct, unit)
    rest = np.flatnonzero(np.isnan(values))
    if len(rest):
        try:  # one call where every remaining string is an angle
            values[rest] = Angle(distinct[rest], unit=unit).deg
        except (ValueError, TypeError, OverflowError, u.UnitsError):
            for i in rest:
                try:
                    values[i] = Angle(distinct[i], unit=unit).deg
                except (ValueError, TypeError, OverflowError, u.UnitsError):
                    pass  # not an angle (OverflowError: a field of hundreds of digits)
    return values[index.reshape(-1)]


def under_full_turn(text, unit):
    """Whether each string of ``text`` is, in exact arithmetic, an angle of 0 up to (not
    including) a full turn: 24 h, or 360 degrees where it says ``d``.

    For the few strings that `parse_angles` reads as 24 h (or 360 degrees) or a float just
    under: '23:59:59.99999999999999' and '24:00:00' both give 359.99999999999994 degrees,
    but only the first is under 24 h. Strings of forms the fast path does not read: False.
    """
    out = np.zeros(len(text), bool)
    for i, s in enumerate(np.asarray(text, dtype=str).tolist()):
        found = _FORMS.fullmatch(s)
        if found is None or found["sign"] in ("-", "\u2212"):
            continue
        a, m, sec = (Fraction(Decimal(found[g] or "0")) for g in ("a", "m", "s"))
        if not found["m"]:  # a:m.mmm, the minutes last
            m, sec = sec, Fraction(0)
        hours = found["unit"] == "h" or (not found["letter"] and unit == u.hourangle)
        out[i] = a + m / 60 + sec / 3600 < (24 if hours else 360)
    return out
