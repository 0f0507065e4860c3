"""Time and memory of judging a GGUF file: edgeslm's bounded header walk against gguf-py.

Goal (issue 2): any file, of any size, judged in under a second and under 64 MiB of extra
memory. Each measurement runs in a fresh subprocess so one cannot inflate another's peak
RSS; gguf-py gets a time limit because on hostile files it does not stop by itself.

    .venv/bin/python benchmarks/header_walk.py [--gguf-py-timeout 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gguf.constants import GGUFValueType as V  # noqa: E402

from edgeslm.formats.gguf_header import MAX_ARRAY_STRINGS, MAX_TENSOR_COUNT  # noqa: E402
from edgeslm.sources.builtin import BUILTINS  # noqa: E402
from tests.ggufbuild import ARCH, gguf_bytes, gstr, kv_array, tensor_info, u32, u64  # noqa: E402

PROBE = r"""
import json, sys, time
which, path = sys.argv[1], sys.argv[2]
if which == "edgeslm":
    from edgeslm.formats.gguf_header import read_gguf_header as read
else:
    from gguf import GGUFReader as read
def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
# After the imports, reset the peak (VmHWM) so that only the judging counts (Linux).
with open("/proc/self/clear_refs", "w") as fp:
    fp.write("5")
base = status_kib("VmRSS")
start = time.perf_counter()
try:
    read(path)
    verdict = "accepted"
except Exception as exc:
    verdict = "refused: " + type(exc).__name__
seconds = time.perf_counter() - start
extra = (status_kib("VmHWM") - base) / 1024
print(json.dumps({"seconds": seconds, "extra_mib": extra, "verdict": verdict}))
"""


def measure(which: str, path: Path, timeout: float) -> dict[str, object]:
    try:
        out = subprocess.run(
            [sys.executable, "-c", PROBE, which, str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=Path(__file__).resolve().parents[1],
        )
    except subprocess.TimeoutExpired:
        return {"seconds": float("inf"), "extra_mib": float("nan"), "verdict": f"killed after {timeout:.0f} s"}
    if out.returncode != 0:
        return {"seconds": float("nan"), "extra_mib": float("nan"), "verdict": f"crashed ({out.stderr[-80:]!r})"}
    return dict(json.loads(out.stdout))


def sparse(path: Path, head: bytes, data_bytes: int) -> Path:
    with open(path, "wb") as fp:
        fp.write(head + b"\0" * (-len(head) % 32))
        fp.truncate(fp.tell() + data_bytes)
    return path


def cases(tmp: Path) -> dict[str, Path]:
    bomb = tmp / "bomb.gguf"
    bomb.write_bytes(b"GGUF" + u32(3) + u64(0) + u64(1) + kv_array("a", V.UINT32, 4_000_000))
    n = MAX_ARRAY_STRINGS
    tokens = kv_array("tokenizer.ggml.tokens", V.STRING, n, b"".join(gstr(f"t{i}") for i in range(n)))
    many = [tensor_info(f"t{i}", [32], offset=128 * i) for i in range(MAX_TENSOR_COUNT)]
    vocab = gguf_bytes([ARCH, tokens], [tensor_info("w", [1_000_000_000])])
    tensors = gguf_bytes([ARCH], many)
    both = gguf_bytes([ARCH, tokens], many)
    found = {
        "49-byte array bomb": bomb,
        f"{n:,} strings + 4 GB sparse tensor": sparse(tmp / "vocab.gguf", vocab, 4_000_000_000),
        f"{MAX_TENSOR_COUNT:,} tensors": sparse(tmp / "tensors.gguf", tensors, 128 * MAX_TENSOR_COUNT),
        "both caps at once": sparse(tmp / "both.gguf", both, 128 * MAX_TENSOR_COUNT),
    }
    for builtin in BUILTINS.values():
        parts = builtin.part_paths()
        if len(parts) == 1:
            found[f"builtin {builtin.name}"] = parts[0]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf-py-timeout", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for label, path in cases(Path(tmp)).items():
            ours = measure("edgeslm", path, 30)
            theirs = measure("gguf-py", path, args.gguf_py_timeout)
            rows.append((label, ours, theirs))
    print(f"{'file':42} {'edgeslm s':>10} {'MiB':>7}  {'gguf-py s':>10} {'MiB':>7}  verdicts (edgeslm / gguf-py)")
    worst_s = worst_mib = 0.0
    for label, ours, theirs in rows:
        print(
            f"{label:42} {ours['seconds']:10.3f} {ours['extra_mib']:7.1f}  {theirs['seconds']:10.3f} "
            f"{theirs['extra_mib']:7.1f}  {ours['verdict']} / {theirs['verdict']}"
        )
        worst_s = max(worst_s, float(ours["seconds"]))  # type: ignore[arg-type]
        worst_mib = max(worst_mib, float(ours["extra_mib"]))  # type: ignore[arg-type]
    goal = "MET" if worst_s < 1.0 and worst_mib < 64 else "NOT MET"
    print(f"\nworst case: {worst_s:.3f} s, {worst_mib:.1f} MiB extra; goal (< 1 s, < 64 MiB): {goal}")


if __name__ == "__main__":
    main()
