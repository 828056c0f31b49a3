"""Stopping a task early: the partitions of an `astromorph.annotate_dask` call that are
still running in the caller's process when one of them fails (or the caller is
interrupted), each at its next part of work, so that the caller raises only once none
runs."""
import contextvars

__all__ = ["STOP", "Stopped", "check_stop"]

#: The `threading.Event` that, once set, stops the work running in this context (None:
#: nothing stops it; set by `annotate_dask` for each partition it computes).
STOP = contextvars.ContextVar("astromorph_stop", default=None)


class Stopped(Exception):
    """The work was stopped (`check_stop`): its caller has already given up on it (an
    `annotate_dask` call whose other partition failed), so this never reaches the user."""


def check_stop():
    """Raise `Stopped` where this context's `STOP` event is set; a cheap check, made
    between the parts of `annotate` and `annotate_stamps`."""
    stop = STOP.get()
    if stop is not None and stop.is_set():
        raise Stopped("stopped: another partition of the annotate_dask call failed, or the "
                      "call was interrupted")
