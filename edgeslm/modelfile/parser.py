"""Modelfiles as Ollama parses them (``parser/parser.go``), with line numbers in every error.

A Modelfile is a list of instructions, one per line, names case-insensitive::

    FROM smollm2-135m-instruct:q8_0      # a stored model, a .gguf file or a Hugging Face folder
    PARAMETER temperature 0.3
    SYSTEM \"\"\"You answer questions
    about the Zephyr-9 router.\"\"\"
    MESSAGE user "How do I reset it?"

A value runs to the end of its line; one in ``"…"`` or ``\"\"\"…\"\"\"`` may span lines and ends at
the first line end after its closing quotes. ``#`` starts a comment where an instruction could
start. As Ollama does, a value keeps what follows it on its line; edgeslm drops a trailing
`` # comment`` from an unquoted FROM or ADAPTER only (paths and names hold no `` #``).
Control characters other than tab and newline are dropped from values, as Go's
``strconv.IsPrint`` drops them. Unlike Ollama, CRLF line ends read as LF and lines are counted
once per line end.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import ModelfileError

MAX_MODELFILE_BYTES = 16 << 20  # read at most this much of a file
MAX_VALUE_CHARS = 1 << 18  # one instruction's value: a long system prompt fits, a 10 MB one does not
MAX_INSTRUCTIONS = 4096
ROLES = ("system", "user", "assistant")
_NAME = re.compile(r"[A-Za-z]+")
_PARAM = re.compile(r"[A-Za-z0-9_]+")
_TRAILING_COMMENT = re.compile(r"[ \t]+#.*\Z", re.S)
_CLOSE1 = re.compile(r'"[^\S\n]*(?:\n|\Z)')
_CLOSE3 = re.compile(r'"""[^\S\n]*(?:\n|\Z)')
Fail = Callable[[str], ModelfileError]


class Instruction(str, enum.Enum):
    FROM = "from"
    ADAPTER = "adapter"
    PARAMETER = "parameter"
    SYSTEM = "system"
    TEMPLATE = "template"
    MESSAGE = "message"
    LICENSE = "license"
    DRAFT = "draft"
    RENDERER = "renderer"
    PARSER = "parser"
    REQUIRES = "requires"


VALID = ", ".join(i.name for i in Instruction)


@dataclass(frozen=True)
class Command:
    instruction: Instruction
    value: str
    line: int  # where the instruction starts (1-based)
    key: str = ""  # PARAMETER's name, MESSAGE's role

    def render(self) -> str:
        """The line (or lines) that parse back to this command: Ollama's ``Command.String``."""
        if self.instruction is Instruction.FROM:
            return f"FROM {quote(self.value)}"
        if self.instruction is Instruction.MESSAGE:
            return f"MESSAGE {self.key} {quote(self.value)}"
        if self.instruction is Instruction.PARAMETER:
            return f"PARAMETER {self.key} {quote(self.value)}"
        return f"{self.instruction.name} {quote(self.value)}"


@dataclass(frozen=True)
class Modelfile:
    commands: tuple[Command, ...]

    def all(self, instruction: Instruction) -> list[Command]:
        return [c for c in self.commands if c.instruction is instruction]

    def last(self, instruction: Instruction) -> Command | None:
        found = self.all(instruction)
        return found[-1] if found else None

    def render(self) -> str:
        return "".join(c.render() + "\n" for c in self.commands)


def quote(value: str) -> str:
    """Ollama's quoting: plain unless the value has a line end or edge spaces (here also: a ``#``,
    a leading quote, or nothing); triple quotes when it holds a double quote."""
    plain = value and value == value.strip() and "\n" not in value and "#" not in value and not value.startswith('"')
    if plain:
        return value
    if '"' in value:
        if '"""' in value:
            raise ModelfileError(f"a value holds {value[:40]!r}… that no Modelfile quoting can carry")
        return f'"""{value}"""'
    return f'"{value}"'


def unquote(text: str) -> str | None:
    """The value inside its quotes; None while a quoted value is still open."""
    if text.startswith('"""'):
        return text[3:-3] if len(text) >= 6 and text.endswith('"""') else None
    if text.startswith('"'):
        return text[1:-1] if len(text) >= 2 and text.endswith('"') else None
    return text


def decode(raw: bytes, where: str = "the Modelfile") -> str:
    """Text of a Modelfile: UTF-8 (a BOM is dropped), or UTF-16 with its BOM, as Ollama reads it."""
    if len(raw) > MAX_MODELFILE_BYTES:
        raise ModelfileError(f"{where} is {len(raw):,} bytes; at most {MAX_MODELFILE_BYTES:,}")
    try:
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            return raw.decode("utf-16")
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ModelfileError(f"{where} (line {line}): not UTF-8 text; save it as UTF-8") from None


def parse(text: str, where: str = "Modelfile") -> Modelfile:
    """Parse a Modelfile; raise ModelfileError naming the line at fault."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    commands = list(_scan(text, where))
    if not any(c.instruction is Instruction.FROM for c in commands):
        raise ModelfileError(f"{where}: no FROM line; start it with FROM and a model name, .gguf file or folder")
    return Modelfile(tuple(commands))


def _scan(text: str, where: str) -> Iterator[Command]:
    i, line, n, count = 0, 1, len(text), 0

    def fail(at: int, message: str) -> ModelfileError:
        return ModelfileError(f"{where} (line {at}): {message}")

    while i < n:
        ch = text[i]
        if ch == "\n":
            line, i = line + 1, i + 1
            continue
        if ch in " \t":
            i += 1
            continue
        if ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        word = _NAME.match(text, i)
        name = word.group(0) if word else text[i : i + 20].split()[0]
        try:
            instruction = Instruction(name.lower())
        except ValueError:
            raise fail(line, f"unknown instruction {name[:40]!r}; a line starts with one of {VALID}") from None
        assert word is not None
        i = word.end()
        if i >= n or text[i] not in " \t":
            raise fail(line, f"{instruction.name} needs a value on its line")
        start_line = line
        at_start: Fail = functools.partial(fail, start_line)
        key, i = _key(text, i, instruction, at_start)
        value, i, line = _value(text, i, line, at_start)
        if instruction in (Instruction.FROM, Instruction.ADAPTER) and not value.startswith('"'):
            value = _TRAILING_COMMENT.sub("", value)
        inner = unquote(value)
        assert inner is not None  # _value returns complete values only
        value = inner
        if not value.isprintable():
            value = "".join(c for c in value if c.isprintable() or c in "\n\t")
        if len(value) > MAX_VALUE_CHARS:
            raise fail(start_line, f"{instruction.name} is {len(value):,} characters long; at most {MAX_VALUE_CHARS:,}")
        count += 1
        if count > MAX_INSTRUCTIONS:
            raise fail(start_line, f"more than {MAX_INSTRUCTIONS:,} instructions")
        yield Command(instruction, value, start_line, key)


def _key(text: str, i: int, instruction: Instruction, fail: Fail) -> tuple[str, int]:
    """PARAMETER's name or MESSAGE's role, and where the value starts."""
    i = _skip_blanks(text, i)
    if instruction not in (Instruction.PARAMETER, Instruction.MESSAGE):
        return "", i
    pattern = _PARAM if instruction is Instruction.PARAMETER else _NAME
    match = pattern.match(text, i)
    if instruction is Instruction.PARAMETER:
        if not match or match.end() >= len(text) or text[match.end()] not in " \t":
            raise fail("PARAMETER needs a name and a value: PARAMETER temperature 0.7")
        return match.group(0), _skip_blanks(text, match.end())
    role = match.group(0) if match else text[i : i + 20].split("\n")[0]
    if role not in ROLES:
        raise fail(f"message role {role[:20]!r} must be one of {', '.join(ROLES)}")
    assert match is not None
    if match.end() >= len(text) or text[match.end()] not in " \t":
        raise fail(f"MESSAGE {role} needs a content on its line")
    return role, _skip_blanks(text, match.end())


def _skip_blanks(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _value(text: str, i: int, line: int, fail: Fail) -> tuple[str, int, int]:
    """The raw (still quoted) value from ``i``, its end and the line it ends on: the first line
    end where it is complete, as Ollama's parser ends it."""
    end = text.find("\n", i)
    stop = len(text) if end < 0 else end
    raw = text[i:stop].strip()
    if unquote(raw) is not None:
        if not raw:
            raise fail("the instruction has no value")
        return raw, stop, line
    opener = '"""' if raw.startswith('"""') else '"'
    close = (_CLOSE3 if opener == '"""' else _CLOSE1).search(text, stop)
    if end < 0 or close is None:
        raise fail(f"the {opener} opened here is never closed (it must end a line)")
    stop = close.end() - (1 if close.group(0).endswith("\n") else 0)
    return text[i:stop].strip(), stop, line + text.count("\n", i, stop)
