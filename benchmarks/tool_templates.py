"""Tool prompts side by side: edgeslm's rendering of each published template with tools against
native llama-server's (``POST /apply-template``, same llama.cpp version, same run).

For each family in ``tests/data/chat_templates`` a tiny GGUF carries the template; llama-server
(``--jinja``) renders a conversation with two tools, edgeslm renders the same through its
sandbox and the family's preparation. The BOS token is left out of the comparison (llama-server
drops it from the text: its tokenizer adds it; edgeslm's does not add a second one). Prints one
row per template: identical or the first differing lines.

    .venv/bin/python benchmarks/tool_templates.py [--native-bin DIR]
"""

from __future__ import annotations

import argparse
import difflib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeslm_cli import native_bin  # noqa: E402

from edgeslm.chat import render_chat  # noqa: E402
from edgeslm.tools import parse_tools  # noqa: E402
from edgeslm.tools.native import ToolFormat, detect, prepare  # noqa: E402
from tests.ggufbuild import write_runnable_model  # noqa: E402
from tests.test_tool_families import CASES, TIME, WEATHER, _template  # noqa: E402

PORT = 8097
ASK = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the weather in Paris?"}]


def native_prompt(server: Path, model: Path) -> str:
    proc = subprocess.Popen([str(server), "-m", str(model), "--port", str(PORT), "--jinja", "-c", "4096"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        body = json.dumps({"messages": ASK, "tools": [WEATHER, TIME]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{PORT}/apply-template", body,
                                         {"Content-Type": "application/json"})
        return str(json.loads(urllib.request.urlopen(request, timeout=30).read())["prompt"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def our_prompt(name: str) -> tuple[ToolFormat, str]:
    template, tools = _template(name), parse_tools([WEATHER, TIME])
    fmt = detect(template)
    listed = None if fmt is ToolFormat.PHI4 else [t.as_openai() for t in tools]
    return fmt, render_chat(template, prepare(fmt, ASK, tools, offer=True), tools=listed, eos_token="</s>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native-bin", type=Path)
    args = parser.parse_args()
    bin_dir = native_bin(args.native_bin)
    print(f"{'template':46s} {'format':13s} {'chars':>6s} {'native':>6s}  result")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, case) in enumerate(CASES.items()):
            model = write_runnable_model(Path(tmp) / f"{i}.gguf", chat_template=_template(name), specials=case.specials)
            theirs = native_prompt(bin_dir / "llama-server", model)
            fmt, ours = our_prompt(name)
            same = "identical" if ours == theirs else "differs"
            print(f"{name:46s} {fmt.value:13s} {len(ours):6d} {len(theirs):6d}  {same}")
            if ours != theirs:
                diff = difflib.unified_diff(theirs.splitlines(), ours.splitlines(), "llama-server", "edgeslm", n=0)
                for line in list(diff)[2:8]:
                    print(f"    {line[:150]}")


if __name__ == "__main__":
    main()
