"""Docs that cannot drift: every ``edgeslm …`` command in README.md, in every page of docs/ and
in the Makefile's demo parses with the real argument parser, so a renamed or removed flag fails
here before a reader trips on it; the site builds with warnings as errors (broken links, missing
pages, a generated page that lost a command); the Python API page's example runs."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
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
    assert len(commands) >= 12, "the README's commands were not found: did the fences change?"
    problems = [f"README.md:{n}: {cmd}\n    {why}" for n, cmd in commands if (why := problem_with(cmd))]
    assert not problems, "\n".join(problems)


def doc_pages() -> list[Path]:
    return sorted((ROOT / "docs").rglob("*.md"))


def test_every_docs_page_command_parses() -> None:
    pages = doc_pages()
    assert len(pages) >= 20, "docs/ lost its pages"
    problems, total = [], 0
    for page in pages:
        commands = readme_commands(page.read_text())
        total += len(commands)
        where = page.relative_to(ROOT)
        problems += [f"{where}:{n}: {cmd}\n    {why}" for n, cmd in commands if (why := problem_with(cmd))]
    assert total >= 100, f"only {total} commands found in docs/: did the fences change?"
    assert not problems, "\n".join(problems)


def test_the_readme_is_the_short_front_door() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) < 12_000, "the README grew past 12 KB: move the detail into docs/"
    links = re.findall(r"\]\(((?:docs/)[^)#]+)", text)
    assert len(links) >= 15
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, f"README links to missing files: {missing}"
    listed = (ROOT / "mkdocs.yml").read_text()
    unlisted = [p.relative_to(ROOT / "docs").as_posix() for p in doc_pages()]
    unlisted = [page for page in unlisted if page not in listed]
    assert not unlisted, f"docs pages missing from mkdocs.yml's nav: {unlisted}"


def mkdocs_env() -> dict[str, str]:
    # Material 9.8 and a plugin print notices about MkDocs 2 on every build; mkdocs is pinned to 1.6.1
    return {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=mkdocs_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    cli = (site / "reference" / "cli" / "index.html").read_text()
    from edgeslm.cli import COMMANDS

    assert all(f"edgeslm {command}</code>" in cli for command in COMMANDS), (
        "a command is missing from the CLI reference"
    )
    assert "--imatrix" in cli and "--max-kld" in cli  # flags come from the parser itself
    trouble = (site / "troubleshooting" / "index.html").read_text()
    from edgeslm.errors import EXIT_CODES

    assert all(f"<code>{cls.__name__}</code>" in trouble for cls in EXIT_CODES)
    api = (site / "reference" / "python" / "index.html").read_text()
    documented = re.findall(r'id="edgeslm\.([\w.]+)"', api)
    assert {"generation.stream_generate", "quantize.quantize", "evaluate.core.evaluate"} <= set(documented)
    assert "sums divided by counts" not in api  # docstrings, not the prose of other pages


@pytest.mark.real_model
def test_the_python_api_example_runs(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "reference" / "python.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    script = tmp_path / "example.py"
    script.write_text("\n".join(blocks))
    env = {**os.environ, "EDGESLM_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    ppl, kld = (float(x) for x in done.stdout.strip().splitlines()[-1].split())
    assert ppl > 1 and kld > 0


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
