"""The ``astromorph`` console script (pyproject.toml) and ``python -m astromorph``.

This module, like ``import astromorph``, imports nothing heavy, so that Ctrl-C while numpy
and astropy are being imported, before `astromorph.cli.main` handles it, ends the command as
main does: one line, exit status 130, no traceback.
"""
import sys

__all__ = ["main"]


def main():
    """Run `astromorph.cli.main` on ``sys.argv[1:]``; returns its exit status (130 when
    interrupted while importing it)."""
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("astromorph: interrupted", file=sys.stderr)
        return 130
    return run()
