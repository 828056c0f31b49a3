"""``python -m astromorph``: the ``astromorph`` command line."""
import sys

from astromorph.cli import main

sys.exit(main())
