"""``python -m pathseg`` runs the ``pathseg`` command (where the scripts folder is not on PATH)."""

import sys

from pathseg.cli import main

if __name__ == "__main__":  # importing this module (docs tools, package walks) must not run the command
    sys.exit(main())
