"""Plain-text tables for the terminal (used by the CLI and the benchmarks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str], floatfmt: str = ".3f") -> str:
    """Render ``rows`` (dicts) as an aligned text table with the given ``columns``: numbers right-aligned, text
    left-aligned."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(columns)]
    # numbers right-aligned; the first column and any column holding text left-aligned
    left = [i == 0 or any(b[i] and not _is_number(b[i]) for b in body) for i in range(len(columns))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if lft else c.rjust(w) for c, w, lft in zip(cells, widths, left, strict=True)
        ).rstrip()

    out = [line(list(columns)), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    return "\n".join(out)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
