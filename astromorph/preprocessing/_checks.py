"""Argument checks shared by the preprocessing functions: angles given as numbers (arcsec)
or as astropy Quantities, images that must hold real numbers, and the pixels that are no
data (NaN, infinities and masking sentinels)."""
import numpy as np

from ..exceptions import (InputDTypeError, InputShapeError, InvalidArgumentError,
                          InvalidArgumentTypeError)

__all__ = ["to_arcsec", "real_array", "unmasked", "is_whole", "in_unit_interval", "SENTINEL",
           "invalid_pixels", "check_number", "check_whole", "check_bool", "check_choice",
           "check_options", "axis_scales"]

#: Pixels whose magnitude reaches this are masking sentinels, not data: ZTF stores
#: masked pixels as -3.4e38 (about -FLT_MAX), other pipelines as +-1e30. Every path
#: treats them like NaN (filled, counted in `Flag.BLANK`, left out of noise estimates).
SENTINEL = 1e30


def axis_scales(scale):
    """``(scale_y, scale_x)`` floats of a pixel scale: one value for both axes, or already
    a pair (pixels that are not square)."""
    if isinstance(scale, (tuple, list)) and len(scale) == 2:  # (per group of rows: fast)
        return float(scale[0]), float(scale[1])
    return tuple(float(v) for v in np.broadcast_to(np.ravel(scale), (2,)))


def invalid_pixels(values):
    """Boolean mask of the pixels of ``values`` that are no data: NaN, +-inf and masking
    sentinels (``|value| >= SENTINEL``). Never warns. A stack is tested one image at a
    time (the absolute values of one image held, not of the stack's)."""
    values = np.asarray(values)
    if values.dtype == np.float16:  # 1e30 overflows float16; every finite float16 is data
        return ~np.isfinite(values)
    if values.ndim > 2 and len(values) > 1:
        out = np.empty(values.shape, dtype=bool)
        for j, image in enumerate(values):
            out[j] = invalid_pixels(image)
        return out
    with np.errstate(invalid="ignore"):
        return ~(np.abs(values) < SENTINEL)


def to_arcsec(value, name, *, positive=True):
    """``value`` in arcsec as floats: a number or array (arcsec) or an angular `Quantity`.

    Parameters
    ----------
    value : float, array_like or astropy.units.Quantity
    name : str
        Parameter name for the error message.
    positive : bool, optional
        Require finite values above zero (pixel scales); else only real numbers.

    Returns
    -------
    float or numpy.ndarray

    Raises
    ------
    astromorph.exceptions.InvalidArgumentError
        For a non-angular unit, non-numbers, or (with ``positive``) values that are
        not finite and positive.
    """
    if hasattr(value, "unit"):
        import astropy.units as u

        try:
            value = u.Quantity(value).to_value(u.arcsec)
        except u.UnitsError:
            raise InvalidArgumentError(f"{name} must be an angle (arcsec), got {value!r}") from None
    try:
        out = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise InvalidArgumentTypeError(f"{name} must be a number of arcsec, "
                                       f"got {value!r}") from None
    if positive and not (np.all(np.isfinite(out)) and np.all(out > 0)):
        raise InvalidArgumentError(f"{name} must be positive and finite, got {value!r}")
    return float(out) if out.ndim == 0 else out


def unmasked(values):
    """``values`` as a numpy array in which masked pixels are NaN.

    A `numpy.ma.MaskedArray` with masked values becomes a copy of its data with NaN
    under the mask (integer data becomes float64 to hold NaN; other dtypes are left
    for the caller to reject), so that every function treats masked pixels as no data,
    whatever value the mask hides; anything else goes through `numpy.asarray`. The
    input is never modified.

    Raises
    ------
    astromorph.exceptions.InputShapeError
        For a sequence of images of unequal shapes (numpy's ValueError before).
    """
    if not np.ma.isMaskedArray(values):
        try:
            return np.asarray(values)
        except ValueError as exc:  # a ragged list of stamps
            raise InputShapeError(f"got images of unequal shapes: {exc}") from None
    data = np.asarray(np.ma.getdata(values))
    mask = np.ma.getmaskarray(values)
    if not mask.any() or data.dtype.kind not in "iuf":
        return data
    out = data.astype(np.float64 if data.dtype.kind in "iu" else data.dtype, copy=True)
    out[mask] = np.nan
    return out


def real_array(images, name="images"):
    """``images`` as a numpy array of real numbers (integers or floats, any byte order),
    masked values NaN (`unmasked`).

    Raises
    ------
    astromorph.exceptions.InputDTypeError
        For complex, boolean, string or object data (a complex image would lose its
        imaginary part silently); an `~astromorph.exceptions.InputError` and a `TypeError`.
    """
    arr = unmasked(images)
    if arr.dtype.kind not in "iuf":
        raise InputDTypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def is_whole(value, minimum=1):
    """True for a whole number (int, numpy integer, or a float such as 64.0) >= ``minimum``;
    False, never an exception, for NaN, infinities, strings, None, sequences or booleans."""
    if isinstance(value, (bool, np.bool_)):
        return False
    try:
        return bool(int(value) == value and value >= minimum)
    except (TypeError, ValueError, OverflowError):
        return False


def in_unit_interval(value):
    """True for a real number in (0, 1]; False, never an exception, for anything else."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        return False
    try:
        return bool(0 < float(value) <= 1)
    except (TypeError, ValueError):
        return False


def check_number(value, name, *, minimum=None, positive=False):
    """``value`` as a finite float, for a numeric option.

    Parameters
    ----------
    value : object
    name : str
        Option name for the error message.
    minimum : float, optional
        Smallest value allowed.
    positive : bool, optional
        Require a value above zero.

    Raises
    ------
    astromorph.exceptions.InvalidArgumentTypeError
        For something that is no real number (a string, None, a boolean, a sequence).
    astromorph.exceptions.InvalidArgumentError
        For NaN, infinities, or a value out of range.
    """
    if isinstance(value, (bool, np.bool_, str, bytes)) or np.ndim(value) != 0:
        raise InvalidArgumentTypeError(f"{name} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentTypeError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(out) or (positive and not out > 0) or (minimum is not None
                                                              and out < minimum):
        what = "positive" if positive else ("finite" if minimum is None else f">= {minimum}")
        raise InvalidArgumentError(f"{name} must be a {what} number, got {value!r}")
    return out


def check_whole(value, name, minimum=1):
    """``value`` as an int, for a count or a size in pixels; `InvalidArgumentTypeError` for a
    non-number, `InvalidArgumentError` for a number that is not whole or below ``minimum``."""
    if not is_whole(value, minimum):
        if isinstance(value, (bool, np.bool_, str, bytes)) or value is None \
                or np.ndim(value) != 0:
            raise InvalidArgumentTypeError(f"{name} must be a whole number, got {value!r}")
        raise InvalidArgumentError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def check_bool(value, name):
    """``value`` as a bool (True, False, numpy booleans, or 0 and 1); anything else (a
    string such as ``"no"``, which Python would take as true) is an
    `InvalidArgumentTypeError`."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    raise InvalidArgumentTypeError(f"{name} must be True or False, got {value!r}")


def check_choice(value, name, choices, *, optional=False):
    """``value`` if it is one of the names ``choices`` (or None, with ``optional``): the one
    check of every option that takes one of a few names. Anything that is no string (``1``,
    a list) is an `InvalidArgumentTypeError`; a string that is none of them an
    `InvalidArgumentError`; both name the option, the value and the choices."""
    if optional and value is None:
        return value
    if not isinstance(value, str) or value not in choices:
        names = [*map(repr, choices), *(["None"] if optional else [])]
        listed = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        error = InvalidArgumentError if isinstance(value, str) else InvalidArgumentTypeError
        raise error(f"{name} must be {listed}, got {value!r}")
    return value


def check_options(options, allowed, function):
    """Refuse keywords of ``options`` (a public function's ``**options``, passed on to a
    helper) that are not in ``allowed``: an `InvalidArgumentTypeError` (a TypeError, as
    Python's own) naming ``function`` and the keyword, before any work, rather than
    Python's error naming the private helper that receives them; with "did you mean" and
    the nearest of ``allowed`` where one is close (`difflib.get_close_matches`)."""
    import difflib

    unknown = [k for k in options if k not in allowed]
    if unknown:
        close = difflib.get_close_matches(unknown[0], allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InvalidArgumentTypeError(f"{function}() got an unexpected keyword argument "
                                       f"{unknown[0]!r}{hint} (it also takes: "
                                       f"{', '.join(allowed)})")
