"""matplotlib, imported lazily, with a non-interactive backend unless one is already in use."""
from .exceptions import MissingDependencyError

__all__ = ["pyplot"]


def pyplot():
    """``matplotlib.pyplot``, or `MissingDependencyError` naming the ``plot`` extra.

    Selects the Agg backend unless Agg or the notebook inline backend is already active, so
    figures can be saved on machines without a display.
    """
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependencyError("drawing needs matplotlib; install it with "
                                     "`pip install 'astromorph[plot]'`") from exc
    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        try:
            matplotlib.use("Agg")
        except Exception:  # noqa: BLE001 - an interactive backend already in use is fine
            pass
    import matplotlib.pyplot as plt

    return plt
