"""Single-threaded BLAS around astromorph's small matrix products.

The stamp preprocessing resamples with many small matrix products (one BLAS call per
stamp and colour, each a few hundred microseconds at most). A multi-threaded BLAS
(numpy's OpenBLAS uses every core by default) hands each of those calls to all its
threads and waits for the slowest: on a machine whose cores are busy (ONNX Runtime's
threads, a reader thread, Dask workers, other processes) that wait made preprocessing
5 to 50 times slower than one thread, with the same values (a single-threaded product
runs the same kernel on the same blocks: the results are bit-identical).
`single_threaded_blas` limits BLAS to one thread while astromorph's own products run.

A process forked while a thread is inside the block (multiprocessing's fork start method,
Dask's process scheduler, PyTorch's DataLoader workers) starts afresh: `_after_fork_in_child`
restores the child's BLAS thread counts and resets the count of callers inside, which no
thread of the child would otherwise bring back to zero.
"""
import contextlib
import os
import sys
import threading

__all__ = []

_LOCK = threading.Lock()
_STATE = {"controller": None, "modules": 0, "depth": 0, "limiter": None}


def _controller():
    """The process's `threadpoolctl.ThreadpoolController` (about 2 ms to build: it scans
    the loaded libraries), built again when modules have been imported since the last one
    was built: a module can bring a BLAS of its own (scipy.linalg, PyTorch...), which a
    controller built before it would never limit; None without threadpoolctl (a declared
    dependency; an environment lacking it only loses the speed-up)."""
    if _STATE["controller"] is None or (_STATE["controller"]
                                        and _STATE["modules"] != len(sys.modules)):
        try:
            import threadpoolctl
        except ImportError:  # pragma: no cover - threadpoolctl is a required dependency
            _STATE["controller"] = False
        else:
            _STATE["controller"] = threadpoolctl.ThreadpoolController()
        _STATE["modules"] = len(sys.modules)
    return _STATE["controller"] or None


def _threadpoolctl_shared_state():
    """threadpoolctl's record of the thread that controls OpenBLAS (with its lock), or None
    (an older threadpoolctl, which has none)."""
    import threadpoolctl

    return getattr(getattr(threadpoolctl, "OpenBLASController", None), "_SHARED_STATE", None)


def _release_control():
    """Let the calling thread change OpenBLAS's thread count.

    threadpoolctl 3.8 lets one thread only, the first to set a limit on an OpenBLAS with
    a process-wide thread pool, change that limit, and silently ignores the others (until
    that thread leaves a ``with`` block or dies). astromorph limits and restores from
    whichever of its threads comes in first and goes out last (under `_LOCK`), often a
    worker thread: without this, a restore from another thread than the one that set the
    limit would be ignored and leave BLAS at one thread.
    """
    import threadpoolctl

    clear = getattr(getattr(threadpoolctl, "OpenBLASController", None),
                    "clear_controlling_thread", None)
    if clear is not None:  # older threadpoolctl: any thread may set the limit
        clear(force=True)


def _as_controller(action):
    """``action()``, run with the calling thread free to change OpenBLAS's thread count
    (`_release_control` before and after it); its result."""
    _release_control()
    try:
        return action()
    finally:
        _release_control()


@contextlib.contextmanager
def single_threaded_blas():
    """Limit the BLAS libraries of the process to one thread inside the block.

    The limit is process-wide (BLAS has one thread setting per library), so other
    threads' BLAS calls made meanwhile are single-threaded too. Nested and concurrent
    uses share one limit: the first caller in sets it, the last one out restores the
    thread counts found on entry, so BLAS is never left at one thread after every caller
    has left, nor restored while another caller is still inside, whichever threads they
    run in (threadpoolctl's rule that only the first thread to set an OpenBLAS limit may
    change it is lifted for these two moments). A limit that another thread sets while a
    caller is inside is overwritten on the way out. Entering and leaving costs about 10
    microseconds; values are unchanged.
    """
    pid = os.getpid()
    with _LOCK:
        if _STATE["depth"] == 0 and _controller() is not None:
            _STATE["limiter"] = _as_controller(
                lambda: _controller().limit(limits=1, user_api="blas"))
        _STATE["depth"] += 1
    try:
        yield
    finally:
        # a block entered before a fork leaves the child's state alone (reset at the fork)
        if os.getpid() == pid:
            with _LOCK:
                _STATE["depth"] -= 1
                if _STATE["depth"] == 0 and _STATE["limiter"] is not None:
                    limiter, _STATE["limiter"] = _STATE["limiter"], None
                    _as_controller(limiter.restore_original_limits)


def _after_fork_in_child():
    """Start the forked child with no caller inside `single_threaded_blas`.

    Only the forking thread lives on in the child: the callers that were inside the block
    in the parent never leave it there, so the child would otherwise keep the count above
    zero and BLAS at one thread for its life. This restores the thread counts that the
    first caller in found (the parent's own), resets the count, and replaces the locks that
    another parent thread may have held at the fork (held for good in the child: the next
    use would deadlock), ours and threadpoolctl's (for its controlling thread, cleared here
    as on every limit and restore). A block that the forking thread itself entered before
    the fork leaves, in the child, without touching the child's state.
    """
    global _LOCK
    _LOCK = threading.Lock()
    limiter = _STATE["limiter"]
    _STATE["depth"], _STATE["limiter"] = 0, None
    if limiter is None:
        return
    shared = _threadpoolctl_shared_state()
    lock = getattr(shared, "lock", None)
    if lock is not None:
        if lock.acquire(blocking=False):
            lock.release()
        else:
            shared.lock = threading.Lock()
    _as_controller(limiter.restore_original_limits)


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
