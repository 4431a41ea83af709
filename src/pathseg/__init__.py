"""pathseg: segmentation for computational pathology (H&E).

Python entry points live in :mod:`pathseg.api`; the ``pathseg`` command is a thin shell over them.
"""

from pathseg.errors import PathsegError

__version__ = "0.1.0"

__all__ = ["PathsegError", "__version__"]
