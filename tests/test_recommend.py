"""recommend: device detection and description, the seed's guidance, and measured local picks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeslm import device as device_module
from edgeslm.device import describe, detect
from edgeslm.errors import InvalidParameterError
from edgeslm.recommend import recommend
from edgeslm.store import Store, parse_name

from .conftest import CliResult

Cli = Callable[..., CliResult]
GB = 10**9


def test_this_machine_is_detected() -> None:
    d = detect()
    assert d.detected and d.ram > 0 and d.cores >= 1 and d.arch in ("x86_64", "arm64", d.arch)
    rec = recommend(d)
    assert rec.budget <= d.ram and {a.topic for a in rec.advice} == {"size class", "quantization", "runtime", "threads"}


def test_simd_and_gpu_detection_read_proc_and_sys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = {
        "/proc/cpuinfo": "processor : 0\nflags : fpu sse avx avx2 fma f16c avx512f avx512_vnni\n",
        "/sys/fs/cgroup/memory.max": "2147483648\n",
    }
    monkeypatch.setattr(device_module, "_read", lambda path: files.get(path, ""))
    assert device_module._simd("x86_64", "linux") == ("AVX", "AVX2", "FMA", "F16C", "AVX-512", "AVX-512 VNNI")
    files["/proc/cpuinfo"] = "Features : fp asimd evtstrm aes asimddp sve i8mm\n"
    assert device_module._simd("arm64", "linux") == ("NEON", "DOTPROD", "I8MM", "SVE")
    ram, notes = device_module._ram()
    assert ram == 2 * 2**30 and "container memory limit" in notes[0]


def test_a_described_phone_gets_micro_models() -> None:
    phone = describe(kind=None, ram=4 * GB, cores=4, simd=None)
    assert (phone.kind, phone.arch, phone.os) == ("phone", "arm64", "android") and "NEON" in phone.simd
    rec = recommend(phone, use_case="chat")
    advice = {a.topic: a for a in rec.advice}
    assert advice["size class"].choice == "micro, 100M-1.4B" and "phones" in advice["size class"].why
    assert advice["quantization"].choice == "Q5_1" and advice["runtime"].choice == "llama.cpp on the CPU"
    assert advice["threads"].choice == "4"
    assert rec.budget == int(0.4 * 4 * GB)
    assert rec.catalogue and all(p.memory <= rec.budget for p in rec.catalogue)
    assert not any("gemma3-270m" in p.name for p in rec.catalogue)  # a base model cannot chat
    assert recommend(phone, use_case="code").advice[1].choice == "Q8_0"
    assert recommend(phone, use_case="extract").advice[1].choice == "Q4_0"


def test_runtime_by_platform() -> None:
    mac = describe(kind="laptop", ram=16 * GB, cores=8, simd=None, os_name="darwin", arch="arm64")
    assert recommend(mac).advice[2].choice.startswith("MLX")
    npu = describe(kind="laptop", ram=16 * GB, cores=8, simd=None, npu=True)
    assert recommend(npu).advice[2].choice.startswith("ONNX Runtime")
    old = describe(kind="desktop", ram=32 * GB, cores=4, simd=("AVX",))
    assert "without AVX2" in recommend(old).advice[2].why
    nvidia = recommend(describe(kind="desktop", ram=32 * GB, cores=8, simd=None, gpus=("NVIDIA RTX 4060",)))
    assert nvidia.advice[2].choice == "llama.cpp on the CPU"  # no advice edgeslm has no setting for
    assert "NVIDIA RTX 4060 found" in nvidia.advice[2].why and "not supported yet" in nvidia.advice[2].why
    laptop = recommend(describe(kind="laptop", ram=16 * GB, cores=8, simd=None))
    assert laptop.advice[0].choice.startswith("small")
    assert any("B parameters (small)" in p.why for p in laptop.catalogue)


def test_bad_descriptions() -> None:
    with pytest.raises(InvalidParameterError, match="^device 'toaster' is not known"):
        describe(kind="toaster", ram=GB, cores=1, simd=None)
    with pytest.raises(InvalidParameterError, match="^use_case 'poetry' is not known"):
        recommend(describe(kind="phone", ram=GB, cores=4, simd=None), use_case="poetry")


def test_local_picks_follow_measurements(cli: Cli, store: Store, tmp_path: Path) -> None:
    from .ggufbuild import write_runnable_model
    from .test_sensitivity import make_text

    write_runnable_model(tmp_path / "r.gguf")
    assert cli("import", str(tmp_path / "r.gguf"), "--name", "r:f16").code == 0
    assert cli("quantize", "r:f16", "--type", "q8_0,q4_0").code == 0
    (tmp_path / "t.txt").write_text(make_text(2000).text)
    unmeasured = recommend(describe(kind="phone", ram=4 * GB, cores=4, simd=None), use_case="completion", store=store)
    assert "none of r's variants that fit is measured yet" in unmeasured.local[0].why
    result = cli("eval", "r", "--all-variants", "--text", str(tmp_path / "t.txt"), "--ctx", "64", "--chunks", "3")
    assert result.code == 0, result.err
    phone = describe(kind="phone", ram=4 * GB, cores=4, simd=None)
    ranked = recommend(phone, use_case="completion", quality="near-original", store=store).local
    assert len(ranked) == 3 and ranked[1].why.startswith("#2 for r: ")  # f16, q8_0, q4_0 all measured and fit
    near = ranked[0]
    small = recommend(phone, use_case="completion", quality="max-compression", store=store).local[0]
    assert near.measured is not None and small.measured is not None
    assert near.measured["kld_mean"] <= small.measured["kld_mean"]
    assert "on this machine (expect different speed on the device)" in near.why
    chat = recommend(phone, use_case="chat", store=store)
    assert [p.name for p in chat.local] == ["(r)"] and "no chat template" in chat.local[0].why


def test_cli(cli: Cli) -> None:
    result = cli("recommend", "--ram", "4GB", "--cores", "4", "--use-case", "chat")
    assert result.code == 0 and "a described phone" in result.out and "micro, 100M-1.4B" in result.out
    assert "smollm2-135m-instruct (Q5_1)" in result.out and "built in, works offline" in result.out
    data = json.loads(cli("recommend", "--json").out)
    assert data["device"]["detected"] is True and data["advice"]
    assert cli("recommend", "--device", "phone").code == 2
    assert "unknown unit" in cli("recommend", "--ram", "4XB").err


def test_code_ranks_by_humaneval_when_every_variant_is_measured(cli: Cli, store: Store, tmp_path: Path) -> None:
    from edgeslm.evaluate.task_results import TaskResult, save_task_result

    from .ggufbuild import write_runnable_model
    from .test_sensitivity import make_text

    template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    write_runnable_model(tmp_path / "c.gguf", chat_template=template)
    assert cli("import", str(tmp_path / "c.gguf"), "--name", "c:f16").code == 0
    assert cli("quantize", "c:f16", "--type", "q8_0,q4_0").code == 0
    (tmp_path / "t.txt").write_text(make_text(2000).text)
    text = str(tmp_path / "t.txt")
    assert cli("eval", "c", "--all-variants", "--text", text, "--ctx", "64", "--chunks", "3").code == 0
    phone = describe(kind="phone", ram=4 * GB, cores=4, simd=None)
    by_kld = [p.name for p in recommend(phone, use_case="code", store=store).local]
    passed = {"c:f16": 50, "c:q8_0": 80, "c:q4_0": 60}  # the smallest KLD is not the best coder here

    def keep(name: str, problems: int) -> None:
        m = store.get(parse_name(name))
        save_task_result(store, TaskResult(f"{abs(hash(name)):032x}"[:32], "2026-01-01", "humaneval", "p", name,
                                           m.digest, problems, passed[name], 1.0, 4, (), ()))

    keep("c:f16", 164)
    keep("c:q8_0", 164)
    partly = [p.name for p in recommend(phone, use_case="code", store=store).local]
    assert partly == by_kld  # one variant unmeasured: the KLD ranking stands
    keep("c:q4_0", 164)
    picks = recommend(phone, use_case="code", store=store).local
    assert [p.name for p in picks] == ["c:q8_0", "c:q4_0", "c:f16"]
    assert "the most HumanEval problems passed" in picks[0].why and "pass@1 48.8% of 164" in picks[0].why
    assert picks[0].measured is not None and picks[0].measured["pass_at_1"] == 80 / 164
    rec = recommend(phone, use_case="code", store=store)  # the front end to plan --ram: its choice, as a command
    assert rec.plan is not None and rec.plan.chosen.name == "c:q8_0"
    # these models were trained for 512 tokens: the default context asked is planned at their own length
    assert rec.plan_note.startswith("edgeslm serve --pin c:q8_0 --ctx 512 --parallel 1") and rec.ctx > 512
    from edgeslm.plan.memory import plan_memory
    from edgeslm.recommend import device_constants

    q8 = store.get(parse_name("c:q8_0"))
    planned = plan_memory(store.model_path(q8), "c:q8_0", ctx_per_slot=512, constants=device_constants(phone))
    assert picks[0].memory == planned.total == rec.plan.chosen.memory  # the same plan, the phone's repack types
    none = recommend(describe(kind="phone", ram=10**6, cores=4, simd=None), use_case="code", store=store)
    assert none.plan is None and none.plan_note.startswith("nothing fits in")
