"""A runner worker without a model, misbehaving on purpose: ``python fake_worker.py MODE_FILE ARGS``.

MODE_FILE holds the mode (read at start, so a test can change it between loads) and receives
the worker's pid on a second line. Modes: ``ready`` (says ready, exits when stdin closes),
``hang-load`` (never says ready), ``hang-close`` (says ready, then ignores both the closing of
stdin and SIGTERM), ``hang-mute`` (says ready, then closes its stdout and hangs), ``fail-load``
(answers a ``failed`` line as a model that cannot load), ``deaf`` (says ready, then never reads
its stdin), ``silent`` (says ready, reads every request and answers none).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def main() -> None:
    mode_file = Path(sys.argv[1])
    args = json.loads(sys.argv[2])
    mode = mode_file.read_text().split()[0]
    with mode_file.open("a") as fp:
        fp.write(f"\n{os.getpid()}\n")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "hang-load":
        while True:
            time.sleep(60)
    if mode == "fail-load":
        print(json.dumps({"op": "failed", "kind": "InvalidModelFileError", "message": "bad tensor"}), flush=True)
        sys.exit(1)
    ready = {"op": "ready", "name": args["name"], "slots": args["slots"], "ctx_per_slot": args["ctx_per_slot"]}
    print(json.dumps({**ready, "pid": os.getpid()}), flush=True)
    if mode == "hang-mute":
        os.close(sys.stdout.fileno())
        while True:
            time.sleep(60)
    while mode == "deaf":
        time.sleep(60)
    sys.stdin.read()  # until the runner closes our stdin (silent: every request read, none answered)
    while mode == "hang-close":
        time.sleep(60)


if __name__ == "__main__":
    main()
