"""``python -m pathseg.cli`` (e.g. under torchrun)."""

import sys

from pathseg.cli import main

sys.exit(main())
