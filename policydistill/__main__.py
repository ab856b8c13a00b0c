"""``python -m policydistill`` (and ``torchrun -m policydistill``): the command line."""

import sys

from policydistill.cli import main

sys.exit(main())
