"""Ollama's Go chat templates, translated once into a Jinja template that the sandboxed renderer
(``edgeslm.chat``) runs; refused, naming the construct, beyond the subset Ollama's own library
templates use.

The subset: text; ``{{ .System }}``, ``{{ .Prompt }}``, ``{{ .Response }}`` (``$.`` too);
``{{ range .Messages }}`` (or ``range $i, $m := .Messages``) with ``.Role`` and ``.Content``;
``{{ if }}`` / ``{{ else if }}`` / ``{{ else }}`` / ``{{ end }}`` over a field, ``not``, ``and``,
``or``, ``eq`` and ``ne`` with string literals, and the idiom
``{{ $last := eq (len (slice $.Messages $i)) 1 }}``; ``{{-`` and ``-}}`` trim as in Go; comments.

It renders as Ollama's ``template.Execute`` does (``template/template.go``): consecutive messages
of one role are joined by a blank line; ``.System`` is every system message joined so. A template
that ranges over ``.Messages`` renders once. One without (the older form) renders once per
exchange, with that exchange's system prompt, prompt and response, and the last exchange stops at
``{{ .Response }}``: the rest of the template is cut there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..errors import ModelfileError

MAX_TEMPLATE_CHARS = 1 << 16
_ACTION = re.compile(r"\{\{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?\}\}", re.S)
_TOKEN = re.compile(
    r'\s*(?:(\()|(\))|("(?:[^"\\\n]|\\.)*")|(`[^`]*`)|(-?\d+)|(:=)|(,)|(\$\w*)?((?:\.[A-Za-z_]\w*)+)|(\$\w+)|([A-Za-z_]\w*))'
)
_KINDS = ("(", ")", "string", "raw", "number", ":=", ",", None, "field", "var", "ident")
_FUNCTIONS = ("not", "eq", "ne", "and", "or")
_TOP_FIELDS = {"System": "system", "Prompt": "prompt", "Response": "response", "Messages": "c.msgs"}
_MESSAGE_FIELDS = {"Role": "m.role", "Content": "m.content"}


class Unsupported(ModelfileError):
    pass


@dataclass
class _If:
    branches: list[tuple[str, list[object]]] = field(default_factory=list)  # (Jinja condition, body)
    otherwise: list[object] | None = None


@dataclass
class _Range:
    body: list[object] = field(default_factory=list)


@dataclass(frozen=True)
class _Out:
    expr: str  # Jinja
    response: bool = False  # {{ .Response }}: where the last exchange is cut


def is_go_template(text: str) -> bool:
    """Ollama's form (``{{ .Prompt }}``, ``{{ range .Messages }}``...), not Jinja (``{% ... %}``,
    ``{{ messages }}``)."""
    if "{%" in text:
        return False
    keyword = re.search(r"\{\{-?\s*(?:\.|\$|if\s|range\s|with\s|end\b|else\b|/\*)", text)
    return bool(keyword or re.search(r"\{\{[^}]*(?:^|[\s($])\.[A-Z]", text))


def translate(source: str) -> str:
    """A Jinja chat template that renders ``messages`` as Ollama renders ``source``."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise Unsupported(f"the template is {len(source):,} characters; at most {MAX_TEMPLATE_CHARS:,}")
    body = _Parser(source).parse()
    prelude = _COLLATE
    if _uses_messages(body):
        return prelude + "{%- set system = c.system -%}{%- set prompt = '' -%}{%- set response = '' -%}" + _emit(body)
    full, cut = _emit(body), _emit_cut(body)[0]
    return prelude + _LEGACY.replace("@FULL@", full).replace("@CUT@", cut)


_COLLATE = (
    "{%- set c = namespace(system='', nsys=0, msgs=[], role='', content='') -%}"
    "{%- for m in messages -%}{%- set text = m.content if m.content is string else '' -%}"
    "{%- if m.role == 'system' -%}{%- set c.system = c.system ~ ('\\n\\n' if c.nsys else '') ~ text -%}"
    "{%- set c.nsys = c.nsys + 1 -%}{%- endif -%}"
    "{%- if c.role == m.role -%}{%- set c.content = c.content ~ '\\n\\n' ~ text -%}"
    "{%- else -%}{%- if c.role -%}{%- set c.msgs = c.msgs + [{'role': c.role, 'content': c.content}] -%}{%- endif -%}"
    "{%- set c.role = m.role -%}{%- set c.content = text -%}{%- endif -%}{%- endfor -%}"
    "{%- if c.role -%}{%- set c.msgs = c.msgs + [{'role': c.role, 'content': c.content}] -%}{%- endif -%}"
)
_LEGACY = (
    "{%- macro turn(system, prompt, response) -%}@FULL@{%- endmacro -%}"
    "{%- macro last(system, prompt) -%}@CUT@{%- endmacro -%}"
    "{%- set t = namespace(system=c.system, prompt='', response='') -%}"
    "{%- for m in c.msgs -%}"
    "{%- if m.role == 'system' -%}{%- if t.prompt or t.response -%}{{ turn(t.system, t.prompt, t.response) }}"
    "{%- set t.system = '' -%}{%- set t.prompt = '' -%}{%- set t.response = '' -%}{%- endif -%}"
    "{%- set t.system = m.content -%}"
    "{%- elif m.role == 'user' -%}{%- if t.response -%}{{ turn(t.system, t.prompt, t.response) }}"
    "{%- set t.system = '' -%}{%- set t.prompt = '' -%}{%- set t.response = '' -%}{%- endif -%}"
    "{%- set t.prompt = m.content -%}"
    "{%- elif m.role == 'assistant' -%}{%- set t.response = m.content -%}{%- endif -%}"
    "{%- endfor -%}{{ last(t.system, t.prompt) }}"
)


def _literal(text: str) -> str:
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def _emit(nodes: list[object]) -> str:
    return _emit_cut(nodes, cut=False)[0]


def _emit_cut(nodes: list[object], cut: bool = True) -> tuple[str, bool]:
    """Jinja for ``nodes``; with ``cut``, nothing after the first ``{{ .Response }}`` (and True)."""
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            out.append(_literal(node))
        elif isinstance(node, _Out):
            if node.response and cut:
                return "".join(out), True
            out.append("{{ " + node.expr + " }}")
        elif isinstance(node, _Range):
            inner, stopped = _emit_cut(node.body, cut)
            out.append("{%- for m in c.msgs -%}" + inner + "{%- endfor -%}")
            if stopped:
                return "".join(out), True
        elif isinstance(node, _If):
            text, stopped = _emit_if(node, cut)
            out.append(text)
            if stopped:
                return "".join(out), True
    return "".join(out), False


def _emit_if(node: _If, cut: bool) -> tuple[str, bool]:
    parts: list[str] = []
    stopped = False
    for k, (cond, body) in enumerate(node.branches):
        inner, stopped = _emit_cut(body, cut)
        parts.append(("{%- if " if k == 0 else "{%- elif ") + cond + " -%}" + inner)
        if stopped:
            break
    if not stopped and node.otherwise is not None:
        inner, stopped = _emit_cut(node.otherwise, cut)
        parts.append("{%- else -%}" + inner)
    return "".join(parts) + "{%- endif -%}", stopped


def _uses_messages(nodes: list[object]) -> bool:
    for node in nodes:
        if isinstance(node, _Range) or (isinstance(node, _Out) and "c.msgs" in node.expr):
            return True
        if isinstance(node, _If):
            bodies = [b for _, b in node.branches] + ([node.otherwise] if node.otherwise is not None else [])
            if any("c.msgs" in cond for cond, _ in node.branches) or any(_uses_messages(b) for b in bodies):
                return True
    return False


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items = self._lex(source)
        self.pos = 0
        self.in_range = False
        self.variables: dict[str, str] = {}  # Go variable -> Jinja expression

    @staticmethod
    def _lex(source: str) -> list[tuple[str, str, int]]:
        """("text", text, line) and ("action", inner text, line), with ``{{-``/``-}}`` trimming applied."""
        items: list[tuple[str, str, int]] = []
        pos, trim_next = 0, False
        for match in _ACTION.finditer(source):
            text = source[pos : match.start()]
            if trim_next:
                text = text.lstrip(" \t\r\n")
            if match.group(1):
                text = text.rstrip(" \t\r\n")
            line = source.count("\n", 0, match.start()) + 1
            if text:
                items.append(("text", text, line))
            inner = match.group(2).strip()
            if not (inner.startswith("/*") and inner.endswith("*/")):
                items.append(("action", inner, line))
            pos, trim_next = match.end(), bool(match.group(3))
        rest = source[pos:]
        if "{{" in rest:
            at = source.count("\n", 0, pos) + 1
            raise Unsupported(f"template line {at}: a {{{{ is never closed by }}}}; give a Jinja template instead")
        items.append(("text", rest.lstrip(" \t\r\n") if trim_next else rest, 0))
        return [i for i in items if i[1] or i[0] == "action"]

    def parse(self) -> list[object]:
        body, end = self._block()
        if end is not None:
            raise self._error(f"{{{{ {end[0]} }}}} with no {{{{ if }}}} or {{{{ range }}}} open", end[1])
        return body

    def _error(self, message: str, line: int) -> Unsupported:
        return Unsupported(f"template line {line}: {message}; give a Jinja template instead, or keep the model's own")

    def _block(self) -> tuple[list[object], tuple[str, int] | None]:
        """Nodes up to an ``else``/``end`` (returned with its line) or the end of the template."""
        nodes: list[object] = []
        while self.pos < len(self.items):
            kind, text, line = self.items[self.pos]
            self.pos += 1
            if kind == "text":
                nodes.append(text)
                continue
            word = text.split(None, 1)[0] if text else ""
            if word in ("end", "else"):
                return nodes, (text, line)
            if word == "if":
                nodes.append(self._if(text[2:], line))
            elif word == "range":
                nodes.append(self._range(text[5:], line))
            else:
                node = self._output_or_assign(text, line)
                if node is not None:
                    nodes.append(node)
        return nodes, None

    def _if(self, condition: str, line: int) -> _If:
        node = _If()
        cond = self._condition(condition, line)
        while True:
            body, end = self._block()
            if end is None:
                raise self._error("{{ if }} is never closed by {{ end }}", line)
            node.branches.append((cond, body))
            text, at = end
            if text == "end":
                return node
            rest = text[4:].strip()
            if rest.startswith("if "):
                cond = self._condition(rest[3:], at)
            elif not rest:
                otherwise, end = self._block()
                if end is None or end[0] != "end":
                    raise self._error("{{ else }} must be followed by {{ end }}", at)
                node.otherwise = otherwise
                return node
            else:
                raise self._error(f"{{{{ {text[:40]} }}}} is outside the subset", at)

    def _range(self, spec: str, line: int) -> _Range:
        if self.in_range:
            raise self._error("a {{ range }} inside a {{ range }}", line)
        match = re.fullmatch(r"\s*(?:(\$\w+)\s*,\s*(\$\w+)\s*:=\s*)?\$?\.Messages\s*", spec)
        if not match:
            raise self._error(f"{{{{ range{spec[:40]} }}}}: only {{{{ range .Messages }}}} is translated", line)
        saved = dict(self.variables)
        if match.group(1):
            self.variables[match.group(1)] = "loop.index0"
            self.variables[match.group(2)] = "m"
        self.in_range = True
        body, end = self._block()
        self.in_range = False
        self.variables = saved
        if end is None or end[0] != "end":
            raise self._error("{{ range }} is never closed by {{ end }}", line)
        return _Range(body)

    def _output_or_assign(self, text: str, line: int) -> _Out | None:
        assign = re.fullmatch(r"(\$\w+)\s*:=\s*eq\s*\(\s*len\s*\(\s*slice\s+\$\.Messages\s+(\$\w+)\s*\)\s*\)\s*1", text)
        if assign and self.in_range and self.variables.get(assign.group(2)) == "loop.index0":
            self.variables[assign.group(1)] = "loop.last"
            return None
        tokens = self._tokens(text, line)
        if tokens and tokens[0][0] == "ident":
            raise self._error(f"function {tokens[0][1]!r} is outside the subset", line)
        if len(tokens) != 1 or tokens[0][0] not in ("field", "var"):
            raise self._error(f"{{{{ {text[:60]} }}}} is outside the subset", line)
        expr = self._operand(tokens[0], line)
        return _Out(expr, response=expr == "response")

    def _tokens(self, text: str, line: int) -> list[tuple[str, str]]:
        tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = _TOKEN.match(text, pos)
            if not match or match.end() == pos:
                raise self._error(f"{{{{ {text[:60]} }}}} is outside the subset", line)
            groups = match.groups()
            kind = next(str(_KINDS[k]) for k, g in enumerate(groups) if g is not None and _KINDS[k] is not None)
            value = (groups[7] or "") + groups[8] if kind == "field" else match.group(0).strip()
            tokens.append((kind, value))
            pos = match.end()
        return tokens

    def _condition(self, text: str, line: int) -> str:
        tokens = self._tokens(text, line)
        expr, rest = self._expr(tokens, line)
        if rest:
            raise self._error(f"{{{{ if {text[:60]} }}}} is outside the subset", line)
        return expr

    def _expr(self, tokens: list[tuple[str, str]], line: int) -> tuple[str, list[tuple[str, str]]]:
        """One Go command (a function with its arguments, or one argument) -> Jinja; the tokens left."""
        if not tokens:
            raise self._error("an empty condition", line)
        kind, fn = tokens[0]
        if kind != "ident":
            return self._argument(tokens, line)
        if fn not in _FUNCTIONS:
            raise self._error(f"function {fn!r} is outside the subset (not, eq, ne, and, or)", line)
        args, rest = [], tokens[1:]
        while rest and rest[0][0] != ")":
            arg, rest = self._argument(rest, line)
            args.append(arg)
        if len(args) < (1 if fn == "not" else 2) or (fn == "not" and len(args) != 1):
            raise self._error(f"{fn} with {len(args)} argument(s)", line)
        if fn == "not":
            return f"(not {args[0]})", rest
        if fn in ("eq", "ne"):
            tests = [f"{args[0]} {'==' if fn == 'eq' else '!='} {other}" for other in args[1:]]
            return "(" + (" or " if fn == "eq" else " and ").join(tests) + ")", rest
        return "(" + f" {fn} ".join(args) + ")", rest

    def _argument(self, tokens: list[tuple[str, str]], line: int) -> tuple[str, list[tuple[str, str]]]:
        kind, value = tokens[0]
        if kind == "(":
            inner, rest = self._expr(tokens[1:], line)
            if not rest or rest[0][0] != ")":
                raise self._error("unbalanced parentheses", line)
            return inner, rest[1:]
        if kind in (")", ":=", ",", "ident"):
            raise self._error(f"{value!r} where a value was expected", line)
        return self._operand(tokens[0], line), tokens[1:]

    def _operand(self, token: tuple[str, str], line: int) -> str:
        kind, value = token
        if kind == "string":
            return json.dumps(json.loads(value), ensure_ascii=False)
        if kind == "raw":
            return json.dumps(value[1:-1], ensure_ascii=False)
        if kind == "number":
            return value
        if kind == "var":
            if value not in self.variables:
                raise self._error(f"variable {value} is outside the subset", line)
            return self.variables[value]
        holder, _, name = value.partition(".")
        if "." in name:
            raise self._error(f"field {value} is outside the subset", line)
        if holder not in ("", "$") and self.variables.get(holder) != "m":
            raise self._error(f"field {value} is outside the subset", line)
        top = holder == "$"
        if (self.in_range and not top) or holder not in ("", "$"):
            if name not in _MESSAGE_FIELDS:
                raise self._error(f"inside {{{{ range .Messages }}}} only .Role and .Content, not .{name}", line)
            return _MESSAGE_FIELDS[name]
        if name not in _TOP_FIELDS:
            raise self._error(f"field .{name} is outside the subset (.System, .Prompt, .Response, .Messages)", line)
        return _TOP_FIELDS[name]
