"""``python -m vislab`` (and ``torchrun -m vislab``) runs the command-line tool."""
import sys

from vislab.cli import main

sys.exit(main())
