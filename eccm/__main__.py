"""`python -m eccm`: the same entry point as the `eccm` console script."""
import sys

from .cli import main

sys.exit(main())
