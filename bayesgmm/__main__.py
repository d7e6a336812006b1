"""``python -m bayesgmm``: the command line (see :mod:`bayesgmm.cli`)."""

import sys

from .cli import console_main

sys.exit(console_main())
