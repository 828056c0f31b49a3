"""matplotlib, imported lazily; figures made without pyplot, so the user's backend,
interactive state and open figures are never touched."""
from pathlib import Path

from .exceptions import InvalidArgumentError, MissingDependencyError

__all__ = ["matplotlib", "figure", "colormap", "picture_format", "save_figure"]


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


def picture_format(path):
    """The format of the picture file ``path``, named by its extension (``png``, ``pdf``,
    ``svg``, ``jpg``...: what matplotlib writes, PGF aside, which needs LaTeX), checked
    before any work: `InvalidArgumentError` for an extension that names none (a PNG is not
    written under a ``.txt`` name), `MissingDependencyError` without matplotlib."""
    matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    formats = sorted(set(FigureCanvasBase.get_supported_filetypes()) - {"pgf"})
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in formats:
        raise InvalidArgumentError(
            f"picture {str(path)!r}: its extension names no picture format; use .png "
            f"(or {', '.join('.' + f for f in formats if f != 'png')})")
    return fmt


def save_figure(fig, file, *, dpi, fmt):
    """``fig.savefig(file, dpi=dpi, format=fmt)``; `InvalidArgumentError` naming ``dpi``
    where it is too small for FreeType to draw the figure's text (matplotlib's
    ``RuntimeError: FT_Set_Char_Size ... invalid ppem value``, e.g. for ``dpi=3``)."""
    try:
        fig.savefig(file, dpi=dpi, format=fmt)
    except RuntimeError as exc:
        if "ppem" not in str(exc):
            raise
        raise InvalidArgumentError(f"dpi={dpi!r} is too small to draw the picture's text; "
                                   f"use a larger dpi (e.g. 100)") from exc
