"""ONNX Runtime sessions: provider choice, fallback with a warning, and caching."""
import logging
import os

from ._once import OnceCache
from ._warnings import warn
from .exceptions import (InvalidArgumentError, InvalidArgumentTypeError, MissingRuntimeError,
                         ModelLoadError, ProviderFallbackWarning)

__all__ = ["onnxruntime", "available_providers", "resolve_providers", "provider_names",
           "get_session", "clear_session_cache", "PROVIDER_ALIASES", "SESSION_CACHE_SIZE"]

log = logging.getLogger(__name__)

#: Short names accepted for ``providers=``.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",  # the name of the install extra
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
#: Order tried by ``providers="auto"``.
AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CPU = "CPUExecutionProvider"

#: Environment variables used when the arguments are not given.
PROVIDERS_ENV = "ASTROMORPH_PROVIDERS"
THREADS_ENV = "ASTROMORPH_NUM_THREADS"
#: The most ``threads`` a session is given. ONNX Runtime starts every thread it is asked
#: for, up to a C int's largest value: ``--threads 1000000`` had the process killed for its
#: memory (exit 137, no message). No machine it runs on has more hardware threads than this.
MAX_THREADS = 1024


def onnxruntime():
    """Import ONNX Runtime lazily, with an error that names both extras."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        if getattr(exc, "name", None) == "onnxruntime":
            raise MissingRuntimeError(
                "ONNX Runtime is not installed; install it with `pip install 'astromorph[cpu]'` "
                "(CPU) or `pip install 'astromorph[gpu]'` (CUDA/TensorRT), never both") from exc
        # Installed but broken: a library it links cannot be loaded, or the CPU and GPU
        # wheels were installed together and overwrote each other's files.
        raise MissingRuntimeError(
            f"ONNX Runtime is installed but cannot be imported ({exc}); reinstall one of "
            "`pip install 'astromorph[cpu]'` or `pip install 'astromorph[gpu]'` (never both: "
            "`pip uninstall onnxruntime onnxruntime-gpu` first)") from exc
    return ort


def available_providers():
    """Execution providers this ONNX Runtime build offers, e.g. ``['CPUExecutionProvider']``.

    Returns
    -------
    list of str
        ONNX Runtime provider names, in its order of preference.
    """
    return list(onnxruntime().get_available_providers())


def resolve_providers(providers=None):
    """Turn a ``providers=`` argument into ``(requested, usable)`` provider lists.

    Parameters
    ----------
    providers : None, str or sequence of str
        ``None`` reads ``$ASTROMORPH_PROVIDERS`` and defaults to ``"auto"``.
        ``"auto"`` means TensorRT, then CUDA, then CPU, among those available,
        and requests nothing explicitly. Otherwise a name (``"cpu"``,
        ``"cuda"``, ``"tensorrt"`` or a full ONNX Runtime provider name) or a
        comma-separated string or list of them, in order of preference (any case).
        Requested providers this build lacks are left out silently: `get_session` warns
        about them, once per session made. A name ONNX Runtime does not know is an
        `InvalidArgumentError`.

    Returns
    -------
    requested : list of str
        Providers the caller asked for explicitly (empty for ``"auto"``).
    usable : list of str
        Providers to hand to ONNX Runtime, always ending with the CPU provider.
    """
    requested = provider_names(providers)
    available = available_providers()
    # a full name in any case, as the short ones; one ONNX Runtime does not know (a typo)
    # is refused, not taken for a provider missing from this build
    known = {p.lower(): p for p in [*onnxruntime().get_all_providers(), *available]}
    unknown = [p for p in requested if p.lower() not in known]
    if unknown:
        from_env = providers is None and bool(os.environ.get(PROVIDERS_ENV))
        raise InvalidArgumentError(
            f"unknown execution provider {unknown[0]!r}; ONNX Runtime knows "
            f"{', '.join(known.values())}" + (f" (from ${PROVIDERS_ENV})" if from_env else ""))
    requested = list(dict.fromkeys(known[p.lower()] for p in requested))
    if not requested:
        return [], [p for p in AUTO_ORDER if p in available]
    usable = [p for p in requested if p in available]
    if CPU not in usable:
        usable.append(CPU)
    return requested, usable


def provider_names(providers=None):
    """The full provider names a ``providers=`` argument asks for (``[]`` for ``"auto"``),
    checked without ONNX Runtime; `InvalidArgumentError` for an unknown name."""
    from_env = providers is None and bool(os.environ.get(PROVIDERS_ENV))
    if providers is None:
        providers = os.environ.get(PROVIDERS_ENV, "").strip() or "auto"  # set empty: unset
    given = providers
    if isinstance(providers, (bytes, bytearray)):
        raise InvalidArgumentTypeError(f"providers must be a name such as 'cpu' or a list of "
                                       f"names (str), got {providers!r}")
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
        if not providers:  # an empty --providers: not 'auto' unless said
            raise InvalidArgumentError(
                f"providers={given!r} names no execution provider; use 'auto', 'cpu', 'cuda' "
                "(or 'gpu'), 'tensorrt' or an ONNX Runtime provider name"
                + (f" (from ${PROVIDERS_ENV})" if from_env else ""))
    try:
        providers = list(providers)
    except TypeError:
        raise InvalidArgumentTypeError(f"providers must be a name such as 'cpu' or a list of "
                                       f"names, got {providers!r}") from None
    if [p.lower() if isinstance(p, str) else p for p in providers] in ([], ["auto"]):
        return []
    if any(isinstance(p, str) and p.lower() == "auto" for p in providers):
        raise InvalidArgumentError(
            f"'auto' chooses the providers itself and must be given alone, got {given!r}"
            + (f" (from ${PROVIDERS_ENV})" if from_env else ""))
    requested = []
    for p in providers:
        if not isinstance(p, str):
            hint = ("; (name, options) pairs are not taken: choose the GPU with "
                    "$CUDA_VISIBLE_DEVICES" if isinstance(p, (tuple, list)) else "")
            raise InvalidArgumentTypeError(f"providers must be execution provider names "
                                           f"(str), got {p!r} in {given!r}{hint}")
        full = PROVIDER_ALIASES.get(p.lower(), p)
        if not full.lower().endswith("executionprovider"):
            raise InvalidArgumentError(
                f"unknown execution provider {p!r} in providers={given!r}; use 'auto', "
                "'cpu', 'cuda' (or 'gpu'), 'tensorrt' or an ONNX Runtime provider name"
                + (f" (from ${PROVIDERS_ENV})" if from_env else ""))
        if full not in requested:
            requested.append(full)
    return requested


#: Sessions the cache holds: the most recently used ones (a `Model` keeps its own session
#: whether or not the cache still holds it).
SESSION_CACHE_SIZE = 32

#: Sessions by (file, sha256, providers asked for and used, threads), made once whichever
#: threads ask at once (only those asking for that very session wait for it).
_SESSIONS = OnceCache(size=lambda: SESSION_CACHE_SIZE)


def clear_session_cache():
    """Forget every cached ONNX Runtime session (`Model` objects keep theirs)."""
    _SESSIONS.clear()


def check_threads(threads):
    """``threads`` as an int; `InvalidArgumentError` for a number that is not whole (2.5,
    NaN), `InvalidArgumentTypeError` for something that is no number (``"2"``, a bool), as
    for ``batch_size`` (``int()`` leaked ValueError/TypeError, e.g. for ``"x"``)."""
    import numpy as np

    try:
        value = int(threads)
        whole = not isinstance(threads, (bool, np.bool_, str, bytes)) and value == threads
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        number = isinstance(threads, (int, float, np.number)) and not isinstance(
            threads, (bool, np.bool_))
        raise (InvalidArgumentError if number else InvalidArgumentTypeError)(
            f"threads must be a whole number of threads, got {threads!r}")
    return int(threads)


def get_session(path, *, providers=None, threads=None, sha256=None):
    """A (cached) ONNX Runtime session for a model file.

    Sessions are cached on (file, sha256, providers asked for and used, threads) and
    reused; the cache keeps the `SESSION_CACHE_SIZE` most recently used. A requested
    provider that this ONNX Runtime build lacks, or a provider that was requested (or
    offered by ``"auto"``) but fails to initialise, gives a `ProviderFallbackWarning` and a
    session on the next providers that do initialise (a failing TensorRT falls back to
    CUDA, then CPU). One warning names them all; it comes when the session is made, not
    again when the cached session is reused (e.g. by every Dask partition or every
    `annotate` call of a process). Every request that ends on the CPU alone (``"cpu"``,
    ``"auto"`` without a GPU, or a fallback) shares one session per (file, sha256,
    threads): the model is in memory once.

    Returns
    -------
    session : onnxruntime.InferenceSession
    """
    ort = onnxruntime()
    requested, usable = resolve_providers(providers)
    from_env = threads is None and bool(os.environ.get(THREADS_ENV))
    if from_env:
        try:
            threads = int(os.environ[THREADS_ENV])
        except ValueError:
            raise InvalidArgumentError(f"${THREADS_ENV} must be a whole number of threads, "
                                       f"got {os.environ[THREADS_ENV]!r}") from None
    if threads is not None:
        threads = check_threads(threads)
        if not 0 <= threads <= MAX_THREADS:
            raise InvalidArgumentError(
                f"threads must be >= 0 (0 = ONNX Runtime default) and <= {MAX_THREADS}, got "
                f"{threads}" + (f" (from ${THREADS_ENV})" if from_env else ""))
    # what was asked for is part of the key: a "cuda" request that falls back to the CPU
    # warns when its entry is made, not again on reuse; every request that ends on the CPU
    # alone shares one session (the model in memory once), cached under cpu_key
    key = (str(path), sha256, tuple(requested), tuple(usable), threads)
    cpu_key = (str(path), sha256, CPU, threads)
    return _cached(key, lambda: _make_session(ort, path, requested, usable, threads, cpu_key))


def _cached(key, make):
    """The session cached under ``key``, made by ``make()`` (once, whichever threads ask).
    A request's session may be made while its key's lock is held (the shared CPU one),
    never the other way round."""
    return _SESSIONS.get(key, make)


def _make_session(ort, path, requested, usable, threads, cpu_key):
    """A session for one request (`get_session` without its cache), with one
    `ProviderFallbackWarning` naming every provider asked for or offered by ``"auto"`` that
    it did not get. A session on the CPU alone is the one cached under ``cpu_key``."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    session, errors = _first_session(
        ort, path, opts, usable,
        cpu=lambda: _cached(cpu_key, lambda: _load(ort, path, opts, [CPU])))
    got = list(session.get_providers())
    if got == [CPU]:  # ONNX Runtime dropped the others: keep one CPU session, not two
        session = _cached(cpu_key, lambda: session)
    # one warning per request when its session is made (not on every reuse)
    missing = [p for p in requested if p not in usable]
    dropped = [p for p in usable if p != CPU and p not in got and p not in errors]
    if missing or errors or dropped:
        reasons = []
        if missing:
            reasons.append(f"{', '.join(missing)} not available in this ONNX Runtime "
                           f"build (available: {', '.join(available_providers())}); "
                           + _gpu_install_hint())
        reasons += [f"{p} could not create a session ({exc})" for p, exc in errors.items()]
        if dropped:
            reasons.append(f"{', '.join(dropped)} failed to initialise")
        # the folder too: every shipped model's file is model.onnx
        where = "/".join(os.path.normpath(str(path)).split(os.sep)[-2:])
        warn(f"execution provider(s) not used for {where}: "
             f"{'; '.join(reasons)}; "
             + ("falling back to CPUExecutionProvider" if got == [CPU]
                else f"running on {', '.join(got)}"), ProviderFallbackWarning)
    log.debug("session for %s on %s (requested %s)", path, got, requested or "auto")
    return session


def _gpu_install_hint():
    """How to get the GPU providers: install the GPU build, or, where both builds are
    installed (the CPU one, e.g. pulled in by another package, shadows the GPU one), keep
    only the GPU build."""
    from importlib import metadata

    def installed(name):
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return False
        return True

    if installed("onnxruntime-gpu") and installed("onnxruntime"):
        return ("onnxruntime-gpu is installed, but so is the CPU build onnxruntime, which "
                "shadows it: `pip uninstall onnxruntime onnxruntime-gpu` and then "
                "`pip install onnxruntime-gpu`")
    return "for GPU support install `astromorph[gpu]` (onnxruntime-gpu) with CUDA"


def _first_session(ort, path, opts, usable, cpu):
    """A session on ``usable``, leaving out, one at a time, the first provider of a list
    that ONNX Runtime cannot make a session with (a TensorRT that fails still lets CUDA be
    tried before the CPU), and ``cpu()`` for the CPU alone; the session and {provider left
    out: its error}."""
    usable, errors = list(usable), {}
    while usable and usable != [CPU]:
        try:
            return _load(ort, path, opts, usable), errors
        except ModelLoadError as exc:
            errors[usable.pop(0)] = exc.__cause__
    return cpu(), errors


def _load(ort, path, opts, providers):
    """``ort.InferenceSession`` on ``providers``; `ModelLoadError` if it cannot be made."""
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises plain RuntimeError/Fail
        raise ModelLoadError(f"ONNX Runtime cannot load {str(path)!r}: {exc}") from exc
