"""Tables the benchmarks write into the README and the docs, so that nobody copies a figure by hand.

Each table in a Markdown file sits under a marker line naming the script and the table::

    <!-- table recommend_qwen.py:picks, written by the benchmark: not by hand -->
    | RAM | budget | pick | ... |
    |---|---:|---|...|
    | 1GB | ... |

``write(path, "recommend_qwen.py:picks", lines)`` replaces the block of ``|`` lines under that
marker (or puts the table there when the block is empty) and leaves every other line alone. With
``merge=N`` a run that measured only some rows replaces the rows whose first N cells match its own
and keeps the others (a table built over several runs, e.g. one model at a time). The
file is rewritten through a temp file and ``os.replace``. A marker that is missing is an error
naming it: a script never appends a table somewhere nobody looks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def marker(key: str) -> str:
    return f"<!-- table {key}, written by the benchmark: not by hand -->"


def closeness(result: dict[str, Any], digits: int) -> tuple[str, str]:
    """An ``eval --json`` result's mean KLD and same top-1 cells; the reference evaluated against itself
    (a Qwen model's shipped file) has neither: 0 by construction."""
    if result["kld_mean"] is None:
        return "0 (reference)", "—"
    return f"{result['kld_mean']:.{digits}f}", f"{100 * result['same_top']:.1f} %"


def cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def merged(old: list[str], new: list[str], merge: int) -> list[str]:
    """``new``'s header and rows, with ``old``'s rows that no new row's first ``merge`` cells match."""
    fresh = {tuple(cells(r)[:merge]): r for r in new[2:]}
    rows = [fresh.pop(tuple(cells(r)[:merge]), r) for r in old[2:]]
    return [*new[:2], *rows, *fresh.values()]


def replace(text: str, key: str, table: list[str], merge: int = 0) -> str:
    """``text`` with the table under ``key``'s marker replaced by ``table`` (merged by ``merge`` cells)."""
    if not table or not all(line.startswith("|") for line in table):
        raise ValueError(f"{key}: a table is a non-empty list of '|' lines")
    lines = text.splitlines()
    found = [i for i, line in enumerate(lines) if line.strip() == marker(key)]
    if len(found) != 1:
        raise SystemExit(f"{len(found)} markers for table {key!r}; put one line {marker(key)!r} where it goes")
    start = found[0] + 1
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[start:end] = merged(lines[start:end], table, merge) if merge and end - start > 2 else table
    return "\n".join(lines) + "\n"


def write(path: Path, key: str, table: list[str], merge: int = 0) -> None:
    """Replace the table under ``key``'s marker in ``path``."""
    text = replace(path.read_text(encoding="utf-8"), key, table, merge)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    print(f"wrote table {key} into {path}")


def write_all(paths: list[Path], key: str, table: list[str], merge: int = 0) -> None:
    for path in paths:
        write(path, key, table, merge)
