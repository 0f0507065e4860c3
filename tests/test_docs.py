"""Every ``edgeslm …`` command in README.md (and in the Makefile's demo) parses with the real
argument parser, so a renamed or removed flag fails here before a reader trips on it."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from edgeslm.cli import make_parser

ROOT = Path(__file__).resolve().parents[1]
INLINE = re.compile(r"`(edgeslm [^`]+)`")


def readme_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) for each ``edgeslm`` line of a fenced block (continuations joined,
    comments cut) and each inline code span that starts with ``edgeslm ``."""
    found: list[tuple[int, str]] = []
    fenced, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            if pending or line.strip().startswith("edgeslm "):
                start = start if pending else number
                body = line.strip()
                if body.endswith("\\"):
                    pending += body[:-1].rstrip() + " "
                    continue
                found.append((start, pending + body))
                pending = ""
        else:
            found += [(number, m.group(1)) for m in INLINE.finditer(line)]
    return found


def makefile_commands(text: str) -> list[tuple[int, str]]:
    found, pending, start = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        body = line.strip()
        if pending or body.startswith("$(VENV)/bin/edgeslm "):
            start = start if pending else number
            if body.endswith("\\"):
                pending += body[:-1].rstrip() + " "
                continue
            found.append((start, (pending + body).replace("$(VENV)/bin/", "")))
            pending = ""
    return found


def problem_with(command: str) -> str | None:
    """None when ``command`` parses; else what argparse said."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError as exc:
        return f"cannot split: {exc}"
    if not words or words[0] != "edgeslm":
        return "does not start with 'edgeslm'"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            make_parser().parse_args(words[1:])
        except SystemExit as exc:
            if exc.code:
                return err.getvalue().strip().splitlines()[-1]
    return None


def test_the_readme_commands_parse() -> None:
    commands = readme_commands((ROOT / "README.md").read_text())
    assert len(commands) >= 40, "the README's commands were not found: did the fences change?"
    problems = [f"README.md:{n}: {cmd}\n    {why}" for n, cmd in commands if (why := problem_with(cmd))]
    assert not problems, "\n".join(problems)


def test_the_makefile_demo_commands_parse() -> None:
    commands = makefile_commands((ROOT / "Makefile").read_text())
    assert len(commands) >= 15
    problems = [f"Makefile:{n}: {cmd}\n    {why}" for n, cmd in commands if (why := problem_with(cmd))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("edgeslm list --no-such-flag", "unrecognized arguments: --no-such-flag"),
        ("edgeslm quantize mine --type", "expected one argument"),
        ("edgeslm frobnicate", "invalid choice: 'frobnicate'"),
        ("edgeslm run 'unterminated", "cannot split"),
    ],
)
def test_a_broken_command_in_the_docs_is_caught(line: str, why: str) -> None:
    text = f"Intro\n\n```sh\n{line}\nedgeslm list\n```\n"
    commands = readme_commands(text)
    assert [c for _, c in commands] == [line, "edgeslm list"]
    problem = problem_with(commands[0][1])
    assert problem is not None and why in problem
    assert problem_with(commands[1][1]) is None


def test_continuations_and_inline_spans_are_read() -> None:
    text = "Run `edgeslm show x --json` here.\n```sh\nedgeslm optimize m --max-size 80MB \\\n  --max-kld 0.05\n```\n"
    joined = "edgeslm optimize m --max-size 80MB --max-kld 0.05"
    assert readme_commands(text) == [(1, "edgeslm show x --json"), (3, joined)]
