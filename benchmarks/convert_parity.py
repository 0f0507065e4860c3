"""edgeslm convert against llama.cpp's own convert_hf_to_gguf.py, same checkpoints, same run.

llama.cpp's converter comes from the llama-cpp-python release installed here (its sdist bundles
llama.cpp; only the converters and their gguf-py are kept, in ~/.cache/native-llama/VERSION/converter).
Checkpoints: the builtin SmolLM2 exported by ``edgeslm export``, and tiny random models of each
architecture built with transformers around that exported tokenizer (llama.cpp's converter knows
its pre-tokenizer), and the pinned all-MiniLM-L6-v2 checkpoint (BERT; from its mirror, each file
checked as ``pull`` checks it). Both write F16; the script compares every tensor (name, type, bytes) and the
metadata, and prints wall time and peak RSS of each converter, each in a fresh process.

    .venv/bin/python benchmarks/convert_parity.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCHS = ("llama", "qwen2", "qwen3", "gemma3", "phi3")
SCRIPTS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")  # the model converter, and its LoRA one
SKIP_KEYS = {"general.name", "general.basename", "general.size_label", "general.quantization_version",
             "general.type", "general.finetune", "general.organization", "general.license", "general.languages",
             "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}


CARD_KEYS = ("general.dataset", "general.tags", "general.base_model")  # llama.cpp reads them from README.md


def converter() -> Path:
    import llama_cpp

    home = Path.home() / ".cache" / "native-llama" / llama_cpp.__version__ / "converter"
    if all((home / f).is_file() for f in SCRIPTS):
        return home
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", tmp,
                        f"llama-cpp-python=={llama_cpp.__version__}"], check=True, timeout=3600)
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        (src,) = Path(tmp).glob("llama_cpp_python-*/vendor/llama.cpp")
        home.mkdir(parents=True, exist_ok=True)
        for script in SCRIPTS:
            shutil.copy(src / script, home)
        for folder in ("conversion", "gguf-py"):
            shutil.copytree(src / folder, home / folder, dirs_exist_ok=True)
    return home


class Failed(Exception):
    pass


def measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of ``cmd`` in a fresh process; Failed with its last line if it fails."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise Failed(log.read().decode(errors="replace").strip().splitlines()[-1][:150])
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def compare(ours: Path, native: Path) -> tuple[int, int, list[str]]:
    """(tensors equal, tensors, metadata differences)."""
    import gguf

    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(native)
    ta = {t.name: (t.tensor_type, np.asarray(t.data).tobytes()) for t in a.tensors}
    tb = {t.name: (t.tensor_type, np.asarray(t.data).tobytes()) for t in b.tensors}
    equal = sum(1 for n in ta.keys() & tb.keys() if ta[n] == tb[n])
    unequal = sorted(n for n in ta.keys() & tb.keys() if ta[n] != tb[n])
    diffs = [f"tensors differ: {', '.join(unequal[:4])}"] if unequal else []
    diffs += [
        f"tensor only in {side}: {n}"
        for side, x, y in (("ours", ta, tb), ("native", tb, ta))
        for n in x.keys() - y.keys()
    ]

    def meta(r: Any) -> dict[str, Any]:
        out = {}
        for k, f in r.fields.items():
            if k in SKIP_KEYS or k.startswith(CARD_KEYS):
                continue
            try:
                v = f.contents()
            except Exception:  # noqa: BLE001 - a field gguf-py cannot render is compared by its raw bytes
                v = [bytes(p) for p in f.parts]
            out[k] = v if not isinstance(v, float) else round(v, 6)
        return out

    ma, mb = meta(a), meta(b)
    for k in sorted(ma.keys() | mb.keys()):
        if ma.get(k) != mb.get(k):
            show = lambda v: str(v)[:60]  # noqa: E731
            diffs.append(f"{k}: ours {show(ma.get(k))} / native {show(mb.get(k))}")
    return equal, len(tb), diffs


def in_child(fn: Any, *args: Path) -> Any:
    """``fn(*args)`` in a child process: the parent stays small, so the converters it starts do not
    inherit its peak RSS (Linux carries the old memory's high-water mark across exec)."""
    code = "import json, sys, pathlib; import benchmarks.convert_parity as m; "
    code += f"print(json.dumps(m.{fn.__name__}(*map(pathlib.Path, sys.argv[1:]))))"
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True, capture_output=True, text=True,
                         cwd=ROOT, timeout=3600).stdout
    return json.loads(out)


def minilm(root: Path) -> Path:
    from edgeslm.sources.checkpoint_folder import checkout

    return checkout("all-minilm-l6-v2:latest", root / "minilm")


def main() -> None:
    conv = converter()
    env = {**os.environ, "PYTHONPATH": str(conv / "gguf-py")}
    with tempfile.TemporaryDirectory(prefix="convert-parity-") as tmp:
        root = Path(tmp)
        home = root / "home"
        run = [sys.executable, "-m", "edgeslm", "--home", str(home)]
        subprocess.run([*run, "pull", "smollm2-135m-instruct"], check=True, capture_output=True, timeout=3600)
        subprocess.run([*run, "export", "smollm2-135m-instruct", "--format", "hf", str(root / "smollm2")],
                       check=True, capture_output=True, timeout=3600)
        cases = {"smollm2 (exported)": root / "smollm2"}
        for arch in ARCHS:
            folder = root / f"tiny-{arch}"
            folder.mkdir()
            for name in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(root / "smollm2" / name, folder)
            # In a child: a parent holding torch would lend its peak RSS to every process it starts.
            code = "import sys, pathlib; from tests.hfbuild import write_model; "
            code += "write_model(pathlib.Path(sys.argv[1]), sys.argv[2], 49152)"
            subprocess.run(
                [sys.executable, "-c", code, str(folder), arch], check=True, capture_output=True, cwd=ROOT, timeout=3600
            )
            cases[f"tiny {arch}"] = folder
        cases["all-MiniLM-L6-v2"] = minilm(root)
        head = f"{'checkpoint':20} {'tensors equal':>14} {'ours s':>7} {'native s':>9} {'ours MiB':>9}"
        print(head + f" {'native MiB':>11}  metadata differences")
        for label, folder in cases.items():
            ours_file, native_file = root / "ours.gguf", root / "native.gguf"
            t_ours, m_ours = measured([*run, "convert", str(folder), "--outtype", "f16", "--name", "x"])
            shown = subprocess.run(
                [*run, "show", "x", "--json"], check=True, capture_output=True, text=True, timeout=3600
            ).stdout
            shutil.copy(json.loads(shown)["path"], ours_file)
            try:
                t_nat, m_nat = measured([sys.executable, str(conv / "convert_hf_to_gguf.py"), str(folder),
                                         "--outtype", "f16", "--outfile", str(native_file)], env)
            except Failed as exc:
                print(f"{label:20} {'-':>14} {t_ours:7.1f} {'-':>9} {m_ours:9.0f} {'-':>11}  native refused: {exc}")
                continue
            equal, total, diffs = in_child(compare, ours_file, native_file)
            print(f"{label:20} {equal:>6}/{total:<7} {t_ours:7.1f} {t_nat:9.1f} {m_ours:9.0f} {m_nat:11.0f}  "
                  f"{'; '.join(diffs) or 'none'}")


if __name__ == "__main__":
    main()
