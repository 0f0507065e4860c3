"""Terminal output for the CLI: tables, JSON, progress bars, confirmations.

Results go to stdout; progress, warnings and questions go to stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import AbortedError


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[int] = ()) -> None:
    """A plain aligned table, like 'ollama list'."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("   ".join(parts).rstrip())


def print_fields(fields: Sequence[tuple[str, Any]], indent: int = 2) -> None:
    width = max((len(k) for k, _ in fields), default=0)
    for key, value in fields:
        print(f"{' ' * indent}{key.ljust(width)}   {value}")


def status(message: str) -> None:
    print(message, file=sys.stderr)


@contextmanager
def progress_bar(total: int | None, label: str, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A byte progress bar on stderr, only when ``enabled`` and stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, leave=False) as bar:
        yield bar.update


@contextmanager
def task_progress(label: str, enabled: bool) -> Iterator[Callable[[int, int, int], None] | None]:
    """Problems done, passing so far and the time left, on stderr when it is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc=label, unit="problem", leave=False) as bar:

        def tick(done: int, total: int, passed: int) -> None:
            bar.total = total
            bar.set_postfix_str(f"passing {passed}/{done}", refresh=False)
            bar.update(done - bar.n)

        yield tick


def confirm(question: str, assume_yes: bool) -> None:
    """Ask on the terminal; without one (or on 'no'), raise AbortedError unless ``assume_yes``."""
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise AbortedError(f"{question} Not confirmed: no terminal to ask on; pass -y to confirm")
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise AbortedError("nothing was changed")
