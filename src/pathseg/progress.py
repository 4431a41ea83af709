"""Progress reporting: library functions take an optional callback; the CLI turns it into a bar."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

#: ``callback(done, total, message)`` — called as work advances; ``total`` may be ``None`` if unknown.
ProgressCallback = Callable[[int, int | None, str], None]


def track(items: Iterable[T], *, total: int | None = None, desc: str = "", quiet: bool = False) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar on stderr unless ``quiet``."""
    if quiet:
        yield from items
        return
    yield from tqdm(items, total=total, desc=desc, unit="it", leave=False, dynamic_ncols=True)


class Bar:
    """A :data:`ProgressCallback` that drives a tqdm bar (used by the CLI); ``with Bar(...) as bar:`` closes it on
    the way out, errors included."""

    def __init__(self, desc: str, quiet: bool = False) -> None:
        self._bar: tqdm | None = None
        self._desc = desc
        self._quiet = quiet

    def __call__(self, done: int, total: int | None, message: str = "") -> None:
        if self._quiet:
            return
        if self._bar is None:
            self._bar = tqdm(total=total, desc=self._desc, leave=False, dynamic_ncols=True)
        if total is not None and self._bar.total != total:
            self._bar.total = total
        self._bar.n = done
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
