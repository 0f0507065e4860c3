"""The benchmarks' table writer: it replaces the table under its marker and nothing else."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "benchmarks" / "tables.py")
assert _spec and _spec.loader
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)

OLD = ["| a | b |", "|---|---:|", "| x | 1 |"]
NEW = ["| a | b |", "|---|---:|", "| x | 2 |", "| y | 3 |"]


def doc(table: list[str]) -> str:
    lines = ["# T", "", "prose above", tables.marker("s.py:t"), *table, "", "prose below", "| other | table |"]
    return "\n".join(lines)


def test_the_table_under_its_marker_is_replaced_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "doc.md"
    path.write_text(doc(OLD), encoding="utf-8")
    tables.write(path, "s.py:t", NEW)
    assert path.read_text(encoding="utf-8") == doc(NEW) + "\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_empty_block_under_a_marker_gets_the_table() -> None:
    assert tables.replace(doc([]), "s.py:t", NEW) == doc(NEW) + "\n"


@pytest.mark.parametrize("text", ["no marker here", doc(OLD) + "\n" + tables.marker("s.py:t")])
def test_a_missing_or_doubled_marker_is_refused_by_name(text: str) -> None:
    with pytest.raises(SystemExit, match=re.escape("s.py:t")):
        tables.replace(text, "s.py:t", NEW)


def test_a_partial_run_merges_its_rows_by_their_first_cells() -> None:
    old = ["| m | t | v |", "|---|---|---:|", "| a | q4 | 1 |", "| a | q8 | 2 |", "| b | q4 | 3 |"]
    new = ["| m | t | v |", "|---|---|---:|", "| a | q8 | 9 |", "| c | q4 | 7 |"]
    out = tables.replace(doc(old), "s.py:t", new, merge=2)
    assert out == doc(["| m | t | v |", "|---|---|---:|", "| a | q4 | 1 |", "| a | q8 | 9 |", "| b | q4 | 3 |",
                       "| c | q4 | 7 |"]) + "\n"


def test_a_table_is_made_of_table_lines() -> None:
    with pytest.raises(ValueError):
        tables.replace(doc(OLD), "s.py:t", ["not a table"])


def test_every_marker_in_the_docs_names_a_benchmark_that_writes_it() -> None:
    """A marker whose script does not call tables.write with its key would be a table nobody rewrites."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    keys = {m for p in docs for m in re.findall(r"<!-- table (\S+), written by the benchmark", p.read_text("utf-8"))}
    assert keys, "no table markers found in the README or docs"
    for key in keys:
        script = key.partition(":")[0]
        source = (ROOT / "benchmarks" / script).read_text(encoding="utf-8")
        assert "tables.write" in source, f"{key}: benchmarks/{script} does not write tables"


def test_the_reference_row_reads_zero_and_a_variant_its_figures() -> None:
    assert tables.closeness({"kld_mean": None, "same_top": None}, 5) == ("0 (reference)", "—")
    assert tables.closeness({"kld_mean": 0.0508812, "same_top": 0.88627}, 4) == ("0.0509", "88.6 %")
