"""Warnings attributed to the user's line: the first caller outside astromorph."""
import os
import sys
import warnings

__all__ = ["warn"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message, category):
    """`warnings.warn` with the stack level of the first frame outside this package.

    For warnings raised at a depth that depends on the entry point (``load_model``,
    ``annotate(model="name")``, ``predict_files``...), where a fixed ``stacklevel`` would
    point inside astromorph, and the default filter would then show the warning once per
    session instead of once per calling line.
    """
    level, frame = 2, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
