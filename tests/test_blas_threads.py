"""The preprocessing's small matrix products run on one BLAS thread, with the same values,
and leave the process's BLAS thread count as they found it (astromorph._blas)."""
import ast
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from astromorph import _blas
from astromorph._blas import single_threaded_blas
from astromorph.preprocessing._optical import _display_to_network
from astromorph.preprocessing._triplet import resample_triplet

threadpoolctl = pytest.importorskip("threadpoolctl")


def _blas_threads():
    """Thread counts of the loaded BLAS libraries."""
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


@pytest.fixture
def two_blas_threads():
    """BLAS at two threads (whatever the machine's cores) while the test runs."""
    if not _blas_threads():
        pytest.skip("no BLAS library that threadpoolctl can control")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        assert set(_blas_threads()) == {2}
        yield


@pytest.mark.parametrize("crop_fraction", [0.35, 1.0, 0.123])
@pytest.mark.parametrize("size", [64, 96])
def test_one_blas_thread_gives_the_same_values(crop_fraction, size, two_blas_threads):
    rng = np.random.default_rng(size)
    # 423 pixels (GZ1): products large enough for OpenBLAS to use its threads
    arr = rng.integers(0, 256, (6, 423, 423, 3), dtype=np.uint8)
    flt = rng.random((3, 150, 150, 3), dtype=np.float32)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        several = _display_to_network(arr, size, crop_fraction)
        several_flt = _display_to_network(flt, size, crop_fraction)
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        one = _display_to_network(arr, size, crop_fraction)
        one_flt = _display_to_network(flt, size, crop_fraction)
    assert one.shape == (6, 3, size, size)
    np.testing.assert_array_equal(one, several, strict=True)
    np.testing.assert_array_equal(one_flt, several_flt, strict=True)


def test_one_blas_thread_gives_the_same_triplets(two_blas_threads):
    x = np.random.default_rng(1).normal(size=(8, 3, 101, 101)).astype(np.float32)
    x[0, 1, 5:9, 7] = np.nan
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        several, _ = resample_triplet(x, 0.27)
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        one, _ = resample_triplet(x, 0.27)
    np.testing.assert_array_equal(one, several, strict=True)


def _recording_matmul(monkeypatch, inside):
    """Patch numpy.matmul to record the BLAS thread counts each product runs under
    (and to call ``inside(first)`` before the first, outer, product's check)."""
    real = np.matmul
    seen, local = [], threading.local()

    def matmul(*args, **kwargs):
        first = not getattr(local, "started", False)
        local.started = True
        inside(first)
        seen.append(tuple(_blas_threads()))
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "matmul", matmul)
    return seen


def test_concurrent_preprocessing_restores_blas_threads(monkeypatch, two_blas_threads):
    """Eight threads inside at once; one leaves while the others are still inside: their
    later products still run on one thread, and after the last one BLAS is back at two."""
    n = 8
    all_inside = threading.Barrier(n, timeout=60)
    first_left = threading.Event()

    def inside(first):
        if first:  # the inner product of each call: wait until every thread is inside
            all_inside.wait()
        elif threading.current_thread().name != "stamp-0":
            assert first_left.wait(60)  # the outer product: after stamp-0 has left

    seen = _recording_matmul(monkeypatch, inside)
    arr = np.random.default_rng(2).integers(0, 256, (4, 100, 100, 3), dtype=np.uint8)
    errors = []

    def work():
        try:
            _display_to_network(arr, 64, 0.5)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            if threading.current_thread().name == "stamp-0":
                first_left.set()

    threads = [threading.Thread(target=work, name=f"stamp-{k}") for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert len(seen) == 2 * n and all(set(s) == {1} for s in seen), seen
    assert set(_blas_threads()) == {2}


def test_nested_and_failing_blocks_restore_blas_threads(two_blas_threads):
    with pytest.raises(ZeroDivisionError):
        with single_threaded_blas():
            with single_threaded_blas():
                assert set(_blas_threads()) == {1}
            assert set(_blas_threads()) == {1}  # the outer block is still inside
            1 / 0
    assert set(_blas_threads()) == {2}


def test_a_live_worker_thread_keeps_no_control_of_blas(two_blas_threads):
    """A pool thread (still alive) that ran the preprocessing leaves other threads free to
    set BLAS limits (threadpoolctl lets one thread at a time control OpenBLAS)."""
    done, finish = threading.Event(), threading.Event()

    def worker():
        with single_threaded_blas():
            pass
        done.set()
        finish.wait(60)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert done.wait(60)
        with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
            assert set(_blas_threads()) == {1}
        assert set(_blas_threads()) == {2}
    finally:
        finish.set()
        thread.join(60)


def _in_forked_child(check):
    """Run ``check()`` in a child made by `os.fork` from this thread; fail with the child's
    error (sent through a pipe). A child that hangs (a lock held at the fork) is killed."""
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork on this platform")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read)
            check()
            status = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(write, f"{type(exc).__name__}: {exc}".encode()[:4000])
        finally:
            os._exit(status)
    os.close(write)
    try:
        for _ in range(600):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung (killed after 60 s)")
        with os.fdopen(read, "rb") as pipe:
            message = pipe.read().decode()
    except BaseException:
        os.close(read)
        raise
    if os.waitstatus_to_exitcode(status) != 0:
        pytest.fail(f"in the forked child: {message or os.waitstatus_to_exitcode(status)}")


# Python 3.12+ warns on any fork of a process with threads: forking with a thread inside
# the block is the point of these tests
_FORK_WARNING = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")


def _check_child_blas():
    """In the child: BLAS back at the parent's two threads, and the block still limits
    and restores."""
    assert set(_blas_threads()) == {2}, f"child BLAS threads {_blas_threads()}, not 2"
    with single_threaded_blas():
        assert set(_blas_threads()) == {1}, f"inside the block: {_blas_threads()}"
    assert set(_blas_threads()) == {2}, f"after the block: {_blas_threads()}"


def _locks_held_at_fork():
    """astromorph's lock and threadpoolctl's (for OpenBLAS's controlling thread), which a
    thread may hold at the moment another forks."""
    shared = getattr(getattr(threadpoolctl, "OpenBLASController", None), "_SHARED_STATE", None)
    return [_blas._LOCK] + ([shared.lock] if hasattr(shared, "lock") else [])


@_FORK_WARNING
@pytest.mark.parametrize("locks_held", [False, True])
def test_a_child_forked_while_another_thread_is_inside_starts_afresh(locks_held,
                                                                     two_blas_threads):
    """A fork (multiprocessing, Dask processes, DataLoader workers) while another thread is
    inside the block: that thread never leaves it in the child, whose BLAS is restored at
    the fork rather than left at one thread for its life; locks that a third thread holds
    at the fork (held for good in the child) do not hang the child."""
    inside, holding, leave = threading.Event(), threading.Event(), threading.Event()

    def worker():
        with single_threaded_blas():
            inside.set()
            leave.wait(120)

    def holder():
        locks = _locks_held_at_fork()
        for lock in locks:
            lock.acquire()
        holding.set()
        leave.wait(120)
        for lock in reversed(locks):
            lock.release()

    threads = [threading.Thread(target=worker)]
    if locks_held:
        threads.append(threading.Thread(target=holder))
    threads[0].start()
    try:
        assert inside.wait(60)
        if locks_held:
            threads[1].start()
            assert holding.wait(60)
        assert set(_blas_threads()) == {1}
        _in_forked_child(_check_child_blas)
    finally:
        leave.set()
        for thread in threads:
            if thread.is_alive():
                thread.join(60)
    assert set(_blas_threads()) == {2}


@_FORK_WARNING
def test_a_child_forked_inside_the_block_starts_afresh(two_blas_threads):
    """The forking thread itself inside the block: BLAS is restored in the child at the
    fork, and leaving the block there leaves the child's count balanced."""
    block = contextlib.ExitStack()
    block.enter_context(single_threaded_blas())

    def child():
        assert set(_blas_threads()) == {2}, f"child BLAS threads {_blas_threads()}, not 2"
        block.close()  # leaves, in the child, the block entered before the fork
        _check_child_blas()

    try:
        assert set(_blas_threads()) == {1}
        _in_forked_child(child)
    finally:
        block.close()
    assert set(_blas_threads()) == {2}


def test_a_blas_loaded_after_the_first_block_is_limited_too():
    """The threadpoolctl controller was built once, at the first block: a BLAS that a module
    imported later brings (scipy.linalg's own OpenBLAS) was never limited, so its products
    ran on every core inside the block. The controller is built again after imports. In a
    fresh interpreter, so that scipy.linalg is not loaded before the first block."""
    code = textwrap.dedent("""
        import numpy, threadpoolctl
        from astromorph._blas import single_threaded_blas
        with single_threaded_blas():
            pass
        import scipy.linalg
        with single_threaded_blas():
            info = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        print([i["num_threads"] for i in info])
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout
    counts = ast.literal_eval(out.strip().splitlines()[-1])
    assert counts and set(counts) == {1}, counts


def test_entering_the_block_again_builds_no_new_controller(monkeypatch):
    """The threadpoolctl controller (about 2 ms to build: it scans the loaded libraries) is
    built once and reused while no module is imported, so that entering and leaving the
    block costs microseconds per stamp, not milliseconds."""
    real, built = threadpoolctl.ThreadpoolController, []

    def counting():
        built.append(1)
        return real()

    monkeypatch.setattr(threadpoolctl, "ThreadpoolController", counting)
    monkeypatch.setitem(_blas._STATE, "controller", None)
    monkeypatch.setitem(_blas._STATE, "modules", -1)
    for _ in range(3):
        with single_threaded_blas():
            pass
    assert len(built) == 1


@_FORK_WARNING
def test_a_child_forked_after_the_block_keeps_the_parents_blas_threads(two_blas_threads):
    """A block left before the fork leaves nothing for the child to restore: a process that
    set its BLAS threads after using astromorph (here to three) forks children with those
    threads, not the counts found when the block was last entered (two)."""
    with single_threaded_blas():
        pass
    with threadpoolctl.threadpool_limits(limits=3, user_api="blas"):
        def child():
            assert set(_blas_threads()) == {3}, f"child BLAS threads {_blas_threads()}, not 3"
        _in_forked_child(child)
