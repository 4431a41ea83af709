"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class PathsegError(Exception):
    """A problem with the user's input or environment (bad file, missing model, ...)."""


class InputImageError(PathsegError):
    """An input image is missing, empty, truncated, not an image, or too large."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
