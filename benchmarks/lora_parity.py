"""A fine-tuned LoRA through edgeslm and through llama.cpp's own tools, same adapter, same run.

1. ``edgeslm finetune`` trains a LoRA on SmolLM2 (the generated Zephyr-9 support data, 1 epoch) and
   stores it, converted, as a model of its own; the PEFT folder it converted is kept.
2. llama.cpp's ``convert_lora_to_gguf.py`` (from the llama-cpp-python release installed here, in
   F32) converts the same PEFT folder against the same exported base: every tensor is compared.
3. ``llama-perplexity`` with ``--lora`` (llama.cpp's own build, ``shared/tools/build-native-llama.sh``)
   scores the product page and WikiText-2 with the base and with the adapter, beside ``edgeslm
   eval`` of the tuned model against its base: perplexities side by side, and KL divergence of the
   tuned model from the base by both.

    .venv/bin/python benchmarks/lora_parity.py [--chunks 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from convert_parity import compare, converter, in_child, measured  # noqa: E402
from edgeslm_cli import native_bin  # noqa: E402
from eval_fidelity import native_run, parse_native  # noqa: E402

WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native-bin", type=Path)
    parser.add_argument("--chunks", type=int, default=4)
    args = parser.parse_args()
    bin_dir = native_bin(args.native_bin)
    conv = converter()
    env = {**os.environ, "PYTHONPATH": str(conv / "gguf-py")}
    with tempfile.TemporaryDirectory(prefix="lora-parity-") as tmp:
        root = Path(tmp)
        home = root / "home"
        run = [sys.executable, "-m", "edgeslm", "--home", str(home)]
        subprocess.run([*run, "pull", "smollm2-135m-instruct"], check=True, capture_output=True, timeout=3600)
        subprocess.run([sys.executable, str(ROOT / "examples" / "zephyr_data.py"), str(root / "data")], check=True,
                       capture_output=True, timeout=3600)
        start = time.perf_counter()
        subprocess.run([*run, "finetune", "smollm2-135m-instruct", "--data", str(root / "data" / "support.jsonl"),
                        "--name", "tuned", "--epochs", "1"], check=True, capture_output=True, timeout=3600)
        print(f"fine-tuned SmolLM2 for 1 epoch in {time.perf_counter() - start:.0f} s")
        work = home / "finetune" / "tuned-latest"
        shown = json.loads(subprocess.run([*run, "show", "tuned", "--json"], check=True, capture_output=True,
                                          text=True, timeout=3600).stdout)
        base_file = Path(shown["path"])
        ours_file = home / "models" / "blobs" / shown["adapters"][0]["digest"]
        native_file = root / "native-lora.gguf"
        t_ours, m_ours = measured([*run, "create", "again", "-f", str(_modelfile(root, work / "tuned"))])
        native_cmd = [sys.executable, str(conv / "convert_lora_to_gguf.py"), "--base", str(_base_folder(home)),
                      "--outtype", "f32", "--outfile", str(native_file), str(work / "tuned")]
        t_nat, m_nat = measured(native_cmd, env)
        equal, total, diffs = in_child(compare, ours_file, native_file)
        print(f"\nadapter conversion: {equal}/{total} tensors equal bit for bit; metadata differences: "
              f"{'; '.join(diffs) or 'none'}")
        print(f"  edgeslm create (convert + store) {t_ours:.1f} s, {m_ours:.0f} MiB peak; "
              f"convert_lora_to_gguf.py {t_nat:.1f} s, {m_nat:.0f} MiB peak")
        page = root / "data" / "held-out.txt"
        for label, text, ctx in (("product page", page, 128), ("WikiText-2", WIKITEXT, 512)):
            _scores(run, bin_dir, label, text, ctx, args.chunks, base_file, native_file, root)


def _base_folder(home: Path) -> Path:
    (folder,) = [p for p in (home / "finetune" / "bases").iterdir() if (p / "config.json").is_file()]
    return folder


def _modelfile(root: Path, adapter: Path) -> Path:
    path = root / "Modelfile"
    path.write_text(f"FROM smollm2-135m-instruct\nADAPTER {adapter}\n")
    return path


def _scores(run: list[str], bin_dir: Path, label: str, text: Path, ctx: int, chunks: int, base: Path, lora: Path,
            root: Path) -> None:
    common = ["-f", str(text), "-c", str(ctx), "--chunks", str(chunks), "-b", str(ctx)]
    kld_base = root / "base.kld"
    native_run([str(bin_dir / "llama-perplexity"), "-m", str(base), "--kl-divergence-base", str(kld_base), *common])
    out, _ = native_run([str(bin_dir / "llama-perplexity"), "-m", str(base), "--lora", str(lora),
                         "--kl-divergence-base", str(kld_base), "--kl-divergence", *common])
    native = parse_native(out)
    ours = json.loads(subprocess.run([*run, "eval", "tuned", "--text", str(text), "--ctx", str(ctx), "--chunks",
                                      str(chunks), "--no-speed", "--json", "--force"], check=True, capture_output=True,
                                     text=True, timeout=3600).stdout)[0]
    print(f"\n{label}: {chunks} chunks x {ctx} tokens, the tuned model against its base (Q4_1)")
    print(f"  {'statistic':22} {'llama-perplexity':>17} {'edgeslm eval':>13}")
    for name, key, ours_key in (("PPL base", "ppl_base", "ppl_base"), ("PPL with the adapter", "ppl", "ppl"),
                                ("mean KLD from the base", "kld_mean", "kld_mean"),
                                ("same top-1", "same_top", "same_top")):
        print(f"  {name:22} {native.get(key, float('nan')):17.4f} {ours[ours_key]:13.4f}")


if __name__ == "__main__":
    main()
