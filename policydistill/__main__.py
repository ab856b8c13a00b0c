"""``python -m policydistill`` (and ``torchrun -m policydistill``): the command line."""

import sys

from policydistill.cli import main
from policydistill.scale.torchrun import exit_rank, under_torchrun

code = main()
if under_torchrun():
    exit_rank(code)
sys.exit(code)
