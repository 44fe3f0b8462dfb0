"""``python -m interp ...`` (and ``torchrun -m interp reproduce ...``): the command line."""

import sys

from .cli import main

sys.exit(main())
