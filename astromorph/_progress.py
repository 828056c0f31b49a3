"""Opt-out progress bars (tqdm when installed, nothing otherwise)."""
import logging
import os
import sys

__all__ = ["progress_bar", "check_progress"]

log = logging.getLogger(__name__)

#: Set to ``0`` (or ``false``, ``no``, ``off``) to silence every progress bar.
PROGRESS_ENV = "ASTROMORPH_PROGRESS"

_OFF = {"0", "false", "no", "off"}


def _wanted(total, min_total):
    """Whether a bar is shown by default: ``$ASTROMORPH_PROGRESS`` not off, enough units, and
    standard error a terminal (not None, as with fd 2 closed or pythonw, nor closed)."""
    if os.environ.get(PROGRESS_ENV, "1").strip().lower() in _OFF or total < min_total:
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_progress(progress):
    """``progress`` as ``None`` or a bool; anything else (``"no"``, which Python would take
    as true) is an `~astromorph.exceptions.InvalidArgumentTypeError` naming it. For the
    functions that may finish, or pass the work on, without drawing a bar."""
    if progress is None:
        return None
    from .preprocessing._checks import check_bool

    return check_bool(progress, "progress")


def progress_bar(total, *, desc="", unit="it", enabled=None, min_total=2):
    """A context manager with ``update(n)``: a tqdm bar, or a silent stand-in.

    Parameters
    ----------
    total : int
        Expected number of units.
    enabled : bool or None
        ``None`` shows the bar when stderr is a terminal, ``total >= min_total``
        and ``$ASTROMORPH_PROGRESS`` is not ``0`` (``false``, ``no``, ``off``);
        ``True`` forces it (where tqdm is installed; without tqdm the work runs
        without a bar and a warning is logged), ``False`` hides it.
    """
    enabled = check_progress(enabled)
    asked = enabled is True
    if enabled is None:
        enabled = _wanted(total, min_total)
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if asked:
            log.warning("progress=True, but tqdm is not installed: no progress bar "
                        "(pip install 'astromorph[progress]')")
        else:
            log.debug("tqdm is not installed: no progress bar (pip install "
                      "'astromorph[progress]')")
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, leave=False)
