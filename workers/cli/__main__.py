"""`python -m workers.cli`: the same as `vcm`."""

import sys

from . import main

sys.exit(main())
