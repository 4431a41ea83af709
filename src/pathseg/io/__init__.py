"""Reading images and slides, writing outputs."""

from pathseg.io.images import DEFAULT_MAX_PIXELS, LoadedImage, read_image, read_labels

__all__ = ["DEFAULT_MAX_PIXELS", "LoadedImage", "read_image", "read_labels"]
