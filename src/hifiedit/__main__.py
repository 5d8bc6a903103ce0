"""`python -m hifiedit` (what `accelerate launch -m hifiedit …` and `torchrun -m hifiedit …` run)."""

import sys

from hifiedit.cli import main

sys.exit(main())
