"""Progress reporting: library functions take an optional callback; the CLI turns it into a bar.

On a terminal the bar is tqdm's. When stderr is a file or a pipe (a cluster job's log, ``2> run.log``) a bar's
redraws would pile up in it, so work that lasts longer than :data:`LOG_EVERY` seconds writes a plain line that often,
and one at its end: ``training: 1200/20000 (6%) loss 0.412, 3.1 s/it, ~16 h left``; shorter work writes none.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

#: ``callback(done, total, message)`` — called as work advances; ``total`` may be ``None`` if unknown.
ProgressCallback = Callable[[int, int | None, str], None]

#: Seconds between progress lines when stderr is no terminal.
LOG_EVERY = 60.0


def _terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def track(items: Iterable[T], *, total: int | None = None, desc: str = "", quiet: bool = False) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar on stderr unless ``quiet``."""
    if quiet:
        yield from items
        return
    if _terminal():
        yield from tqdm(items, total=total, desc=desc, unit="it", leave=False, dynamic_ncols=True)
        return
    with Bar(desc) as bar:
        done = 0
        for item in items:
            bar(done, total)
            yield item
            done += 1
        bar(done, total)


class Bar:
    """A :data:`ProgressCallback` that drives a tqdm bar (used by the CLI), or writes plain lines when stderr is no
    terminal; ``with Bar(...) as bar:`` closes it on the way out, errors included."""

    def __init__(self, desc: str, quiet: bool = False) -> None:
        self._bar: tqdm | None = None
        self._desc = desc
        self._quiet = quiet
        self._plain = not _terminal()
        self._start: float | None = None  # when the first call came, at step self._first
        self._first = 0
        self._last: tuple[int, int | None, str] | None = None  # the latest call, written at the end if not yet
        self._written: float | None = None  # when the last line was written

    def __call__(self, done: int, total: int | None, message: str = "") -> None:
        if self._quiet:
            return
        if self._plain:
            self._line(done, total, message)
            return
        if self._bar is None:
            self._bar = tqdm(total=total, desc=self._desc, leave=False, dynamic_ncols=True)
        if total is not None and self._bar.total != total:
            self._bar.total = total
        self._bar.n = done
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def _line(self, done: int, total: int | None, message: str, final: bool = False) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start, self._first = now, done
        self._last = (done, total, message)
        since = now - (self._start if self._written is None else self._written)
        if since < LOG_EVERY and not ((final or done == total) and self._written is not None):
            return  # short work leaves no lines; long work one a minute and its end
        self._written = now
        self._last = None
        said = f"{self._desc}: {done}" + (f"/{total} ({100 * done / total:.0f}%)" if total else "")
        extra = [message] if message else []
        elapsed, steps = now - self._start, done - self._first  # since the first call
        if steps > 0 and elapsed > 1:
            per = elapsed / steps
            extra.append(f"{per:.{1 if per < 10 else 0}f} s/it" if per >= 1 else f"{1 / per:.1f} it/s")
            if total and done < total:
                extra.append(f"~{_duration(per * (total - done))} left")
        print(said + (" " + ", ".join(extra) if extra else ""), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._plain and self._last is not None and self._last[0]:  # the end of a run between two lines
            self._line(*self._last, final=True)
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
