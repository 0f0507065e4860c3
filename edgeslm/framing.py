"""The one wire format between edgeslm and its child processes: JSON lines, one message each.

Every message is a JSON object with an ``op``. A long-lived worker (``runner.worker``) says
``ready`` or ``failed`` once, then answers requests by ``id``; a one-shot child (bench's
measurement, the server's quantize task) writes one ``result`` or ``failed`` line and exits.
An error always travels as ``{"op": "failed"|"error", "kind": <class name>, "message"}`` and
becomes the same ``EdgeslmError`` class on the other side (``error_from``).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from .errors import EdgeslmError, EngineError, RunnerTimeoutError, error_named

Message = dict[str, Any]


def encode(message: Message) -> bytes:
    return (json.dumps(message) + "\n").encode()


def decode(line: bytes | str) -> Message | None:
    """One line as a message; None for anything else (the half line of a child killed mid-write)."""
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


def send(message: Message) -> None:
    """One message on this process's stdout, flushed at once (the other side is waiting for it)."""
    sys.stdout.buffer.write(encode(message))
    sys.stdout.buffer.flush()


def error_message(exc: EdgeslmError, op: str = "error", **extra: Any) -> Message:
    return {"op": op, **extra, "kind": type(exc).__name__, "message": str(exc)}


def error_from(msg: Message) -> EdgeslmError:
    """The other side's error as the same class here (an unknown kind becomes EngineError)."""
    return error_named(str(msg.get("kind")), str(msg.get("message")))


class LineReader:
    """Whole lines from a file descriptor, without blocking once ``ready`` said so."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf, self.closed = fd, b"", False

    def ready(self, timeout: float | None) -> bool:
        return b"\n" in self.buf or bool(select.select([self.fd], [], [], timeout)[0])

    def read(self) -> list[bytes]:
        if b"\n" not in self.buf:
            data = os.read(self.fd, 1 << 16)
            self.closed = not data
            self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return lines


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr while a chatty library works (the model builder prints
    progress from Python and from native code), so stdout carries only this child's messages."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def child_main(work: Callable[[], Message], *, quiet: bool = False) -> None:
    """The body of a one-shot child: its result as one ``result`` line, or its error as ``failed``;
    with ``quiet``, whatever the work prints goes to stderr."""
    try:
        with stdout_to_stderr() if quiet else nullcontext():
            result = work()
    except EdgeslmError as exc:
        send(error_message(exc, "failed"))
        sys.exit(1)
    send({"op": "result", **result})


def run_child(
    argv: Sequence[str],
    *,
    timeout: float,
    what: str,
    pass_fds: Sequence[int] = (),
    env: dict[str, str] | None = None,
) -> Message:
    """Run a one-shot child to its end (at most ``timeout`` seconds) and return its ``result``.

    Its own error is raised as the same class; a child that dies or prints no result raises
    ``EngineError`` with the last line of its stderr; past the deadline (or on Ctrl-C) it is
    killed. ``pass_fds`` stay open in the child (a temp folder's lock lives as long as it does).
    """
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            timeout=timeout,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            env=None if env is None else {**os.environ, **env},
        )
    except subprocess.TimeoutExpired:
        raise RunnerTimeoutError(f"{what} ran past its deadline of {timeout:g} s and was stopped") from None
    messages = [m for m in map(decode, done.stdout.splitlines()) if m is not None]
    last = messages[-1] if messages else {}
    if last.get("op") == "result":
        return {k: v for k, v in last.items() if k != "op"}
    if last.get("op") == "failed":
        raise error_from(last)
    tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
    raise EngineError(f"{what} failed: {tail[0][:300]}")
