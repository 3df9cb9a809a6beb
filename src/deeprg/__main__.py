"""``python -m deeprg`` is the ``deeprg`` command."""

import sys

from deeprg.cli import main

sys.exit(main())
