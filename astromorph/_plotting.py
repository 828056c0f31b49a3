"""matplotlib, imported lazily; figures made without pyplot, so the user's backend,
interactive state and open figures are never touched."""
from .exceptions import MissingDependencyError

__all__ = ["matplotlib", "figure", "colormap"]


def matplotlib():
    """The ``matplotlib`` module, or `MissingDependencyError` naming the ``plot`` extra."""
    try:
        import matplotlib as mpl
    except ImportError as exc:
        raise MissingDependencyError("drawing needs matplotlib; install it with "
                                     "`pip install 'astromorph[plot]'`") from exc
    return mpl


def figure(**kwargs):
    """A new `matplotlib.figure.Figure` that is not registered with pyplot.

    It renders with Agg when saved (``fig.savefig(..., format="png")``), works on machines
    without a display and needs no ``plt.close``; the active backend is left as it is.
    """
    matplotlib()
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def colormap(name):
    """A registered matplotlib colormap by name (no pyplot)."""
    return matplotlib().colormaps[name]
