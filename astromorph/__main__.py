"""``python -m astromorph``: the ``astromorph`` command line."""
import sys

from astromorph._console import main

sys.exit(main())
