"""The interactive chat of ``edgeslm run``: history, /clear, /bye, multi-line input, Ctrl-C.

Like Ollama: a line is a message; text between a pair of triple quotes spans lines; Ctrl-C
stops a reply (not the program); Ctrl-D or /bye ends the chat.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import ContextOverflowError
from ..generation import Model
from .output import status

HELP = """Commands:
  /clear   forget the conversation (keeps the system message)
  /bye     leave (Ctrl-D too)
  /?       this help
Use \"\"\" to begin and end a multi-line message. Ctrl-C stops a reply."""
FENCE = '"""'


def _read_line(prompt: str) -> str:
    if sys.stdin.isatty():
        return input(prompt)
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def read_message() -> str:
    """One message: a line, or everything between a pair of triple quotes."""
    first = _read_line(">>> ")
    if not first.lstrip().startswith(FENCE):
        return first
    lines = [first.lstrip()[len(FENCE) :]]
    while FENCE not in lines[-1]:
        lines.append(_read_line("... "))
    lines[-1] = lines[-1][: lines[-1].index(FENCE)]
    return "\n".join(lines).strip("\n")


def chat_loop(model: Model, reply: Callable[[Any], str], *, system: str | None = None,
              examples: Sequence[Mapping[str, str]] = ()) -> int:
    """Read messages until /bye or end of input; ``reply`` streams one answer and returns it.
    ``examples``: a created model's example messages, kept (as the system message is) by /clear."""
    base: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    base += [dict(m) for m in examples]
    history = list(base)
    status("Send a message (/? for help)")
    while True:
        try:
            text = read_message()
        except EOFError:
            return 0
        except KeyboardInterrupt:
            status("\nUse Ctrl-D or /bye to exit.")
            continue
        command = text.strip()
        if command in ("/bye", "/exit"):
            return 0
        if command in ("/?", "/help"):
            status(HELP)
            continue
        if command == "/clear":
            history = list(base)
            status("Cleared the conversation.")
            continue
        if not command:
            continue
        if not model.has_chat_template:
            reply(text)  # plain completion: every line stands alone
            continue
        history.append({"role": "user", "content": text})
        answer = _reply_fitting(model, reply, history, len(base))
        if answer is not None:
            history.append({"role": "assistant", "content": answer})


def _reply_fitting(model: Model, reply: Callable[[Any], str], history: list[dict[str, str]], keep: int) -> str | None:
    """Reply to the history, forgetting the oldest turns while it does not fit the context."""
    while True:
        try:
            return reply(history)
        except ContextOverflowError as exc:
            if len(history) - keep <= 1:
                history.pop()
                status(f"Error: {exc}")
                return None
            del history[keep : keep + 2]
            status("(the oldest turn was forgotten to fit the context)")
