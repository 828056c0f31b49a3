"""Warnings attributed to the user's line: the first caller outside astromorph; collected
where a task runs (a Dask partition) to be given once by the caller; and
`warnings.catch_warnings` blocks that astromorph's threads enter one at a time."""
import contextlib
import contextvars
import os
import sys
import threading
import warnings

__all__ = ["warn", "warn_again", "collecting", "catch_warnings", "first_few"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep

#: Held inside every `catch_warnings` block of astromorph (re-entrant: blocks nest).
_CATCH_LOCK = threading.RLock()

#: The list that `warn` appends to instead of warning, inside `collecting`.
_COLLECTED = contextvars.ContextVar("astromorph_collected_warnings", default=None)


def warn(message, category):
    """`warnings.warn` with the stack level of the first frame outside this package.

    For warnings raised at a depth that depends on the entry point (``load_model``,
    ``annotate(model="name")``, ``predict_files``...), where a fixed ``stacklevel`` would
    point inside astromorph, and the default filter would then show the warning once per
    session instead of once per calling line.

    Inside `collecting`, the warning is added to its list instead.
    """
    if _collect(message, category):
        return
    level, frame = 2, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def warn_again(record):
    """Give again a warning recorded by ``catch_warnings(record=True)`` (from its own line,
    e.g. in astropy), or add it to the list of `collecting`."""
    if _collect(record.message, record.category):
        return
    warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)


def _collect(message, category):
    """Inside `collecting`: add the warning to its list and return True; else False."""
    collected = _COLLECTED.get()
    if collected is None:
        return False
    collected.append((str(message), category))
    return True


@contextlib.contextmanager
def collecting():
    """Collect, as a list of ``(message, category)``, the warnings that `warn` and
    `warn_again` give in this thread (this context) while the block runs, instead of giving them.

    For work run by Dask, whose worker threads or processes would give each warning once
    per task, pointing into Dask's code (and `warnings.catch_warnings`, which could record
    them, is not thread-safe): the caller gives them once, from its user's line.
    """
    found = []
    token = _COLLECTED.set(found)
    try:
        yield found
    finally:
        _COLLECTED.reset(token)


@contextlib.contextmanager
def catch_warnings(**kwargs):
    """`warnings.catch_warnings` (same arguments) for code that may run in several threads
    at once (Dask partitions, the reader thread of `predict_files`, `annotate`'s workers).

    ``catch_warnings`` saves the process's warning filters and ``showwarning`` on entry and
    puts them back on exit; two threads whose blocks overlap without nesting (A enters, B
    enters, A leaves, B leaves) would leave B's saved copy, A's filters and recorder, in
    place for good. astromorph's blocks take turns instead. A block must not wait for
    another thread that may enter one (the lock is held throughout).
    """
    with _CATCH_LOCK, warnings.catch_warnings(**kwargs) as caught:
        yield caught


def first_few(texts, sep, *, shown=5):
    """``texts`` joined by ``sep``, the first ``shown`` of them, then ``"<sep>and N more"``
    for the others: how a warning or an error lists many files, rows or reasons."""
    texts = list(texts)
    more = f"{sep}and {len(texts) - shown} more" if len(texts) > shown else ""
    return sep.join(texts[:shown]) + more
