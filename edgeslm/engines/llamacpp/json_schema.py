"""JSON Schema to GBNF: llama-cpp-python's converter, with integer bounds.

GBNF for the integers within bounds. The JSON-Schema converter that llama-cpp-python ships
leaves ``minimum``/``maximum`` out (its TODO); llama-server enforces them on integers with
``build_min_max_int`` (``common/json-schema-to-grammar.cpp``), whose same-length ranges
(``_uniform``) are ported here. Its one-sided branch is not: a line-by-line port of it took 19
for minimum 109 (a check over every integer in -3,000..5,000 found that), so one-sided bounds
are built here from the same-length ranges, and the tests check them the same way."""

from __future__ import annotations

import copy
import math
from typing import Any

BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")  # enforced on integers only


def integer_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    """An integer schema's inclusive bounds (exclusive ones and fractions rounded inwards)."""
    lows = [math.ceil(schema["minimum"])] if "minimum" in schema else []
    lows += [math.floor(schema["exclusiveMinimum"]) + 1] if "exclusiveMinimum" in schema else []
    highs = [math.floor(schema["maximum"])] if "maximum" in schema else []
    highs += [math.ceil(schema["exclusiveMaximum"]) - 1] if "exclusiveMaximum" in schema else []
    return (max(lows) if lows else None), (min(highs) if highs else None)


def int_range(lo: int | None, hi: int | None) -> str:
    """A GBNF expression for the decimal integers lo..hi (None: unbounded on that side; at most
    16 digits, as llama.cpp's ``integral-part``)."""
    if lo is not None and hi is not None:
        return _between(lo, hi)
    if lo is not None:
        return f'"-" ({_between(1, -lo)}) | [0] | [1-9] {_more(0, 15)}' if lo < 0 else _at_least(lo)
    if hi is not None:
        return f'"-" [1-9] {_more(0, 15)} | {_between(0, hi)}' if hi >= 0 else f'"-" ({_at_least(-hi)})'
    return f'"-"? ([0] | [1-9] {_more(0, 15)})'


def _at_least(lo: int) -> str:
    """lo (>= 0) and above: lo's length from lo, then every longer number."""
    length = len(str(lo))
    return f"{_between(lo, 10**length - 1)} | [1-9] {_more(length, 15)}"


def _between(lo: int, hi: int) -> str:
    """lo..hi, both bounds given (llama.cpp's construction: each length's uniform range)."""
    out: list[str] = []
    if lo < 0 and hi < 0:
        return f'"-" ({_between(-hi, -lo)})'
    if lo < 0:
        out.append(f'"-" ({_between(1, -lo)}) | ')
        lo = 0
    low, high = str(lo), str(hi)
    for digits in range(len(low), len(high)):
        _uniform(low, "9" * digits, out)
        low = "1" + "0" * digits
        out.append(" | ")
    _uniform(low, high, out)
    return "".join(out)


def _digits(a: str, b: str) -> str:
    return f"[{a}]" if a == b else f"[{a}-{b}]"


def _more(low: int, high: int | None) -> str:
    if low == high == 1:
        return "[0-9]"
    return "[0-9]{" + str(low) + ("" if high == low else "," + ("" if high is None else str(high))) + "}"


def _uniform(frm: str, to: str, out: list[str]) -> None:
    """Numbers of one length, frm..to."""
    i = 0
    while i < len(frm) and i < len(to) and frm[i] == to[i]:
        i += 1
    if i > 0:
        out.append(f'"{frm[:i]}"')
    if i >= len(frm) or i >= len(to):
        return
    if i > 0:
        out.append(" ")
    rest = len(frm) - i - 1
    if rest == 0:
        out.append(f"[{frm[i]}-{to[i]}]")
        return
    low, high, zeros, nines = frm[i + 1 :], to[i + 1 :], "0" * rest, "9" * rest
    below, above = chr(ord(to[i]) - 1), chr(ord(frm[i]) + 1)
    reached = False
    out.append("(")
    if low == zeros:
        out.append(f"{_digits(frm[i], below)} {_more(rest, rest)}")
    else:
        out.append(f"[{frm[i]}] (")
        _uniform(low, nines, out)
        out.append(")")
        if frm[i] < below:
            reached = high == nines
            out.append(f" | {_digits(above, to[i] if reached else below)} {_more(rest, rest)}")
    if not reached:
        out.append(f" | {_digits(to[i], to[i])} ")
        _uniform(zeros, high, out)
    out.append(")")


def schema_converter() -> Any:
    """llama-cpp-python's JSON-Schema-to-GBNF converter, with integer bounds enforced."""
    from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter  # pure Python: GBNF text only

    class Bounded(SchemaConverter):
        def visit(self, schema: Any, name: str) -> Any:
            if isinstance(schema, dict) and schema.get("type") == "integer" and any(b in schema for b in BOUNDS):
                rule_name = name + "-" if name in RESERVED_NAMES else name or "root"  # as the converter names it
                return self._add_rule(rule_name, f"({int_range(*integer_bounds(schema))}) space")  # type: ignore[no-untyped-call]
            return super().visit(schema, name)  # type: ignore[no-untyped-call]

    return Bounded(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)  # type: ignore[no-untyped-call]


def schema_gbnf(schema: dict[str, Any]) -> str:
    """GBNF whose ``root`` is the JSON that ``schema`` describes (``json_schema_to_gbnf``, bounded)."""
    converter = schema_converter()
    converter.visit(converter.resolve_refs(copy.deepcopy(schema), "schema"), "")
    return str(converter.format_grammar())
