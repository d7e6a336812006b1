"""``python -m bayesgmm``: the command line (see :mod:`bayesgmm.cli`)."""

import sys

from .cli import main

sys.exit(main())
