"""`python -m eccm`: the same entry point as the `eccm` console script."""
import sys

from eccm.cli import main

sys.exit(main())
