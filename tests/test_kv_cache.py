"""KV cache types (#36): one spelling everywhere, llama.cpp loads them, eval measures what they add,
the memory estimate counts them, other runtimes refuse them by name."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeslm.engines.base import LoadParams, open_engine
from edgeslm.errors import InvalidParameterError, ModelfileError
from edgeslm.formats.kv_cache import KVCache, KVType, kv_cache_for
from edgeslm.formats.model_info import estimate_memory

from .conftest import CliResult

Cli = Callable[..., CliResult]


def test_one_spelling_for_both_halves_or_each() -> None:
    assert KVCache.parse("q8_0") == KVCache(KVType.Q8_0, KVType.Q8_0)
    assert KVCache.parse(" K=Q4_0 ") == KVCache(KVType.Q4_0, KVType.F16)
    assert str(KVCache.parse("v=q8_0,k=q4_0")) == "k=q4_0,v=q8_0" and str(KVCache.parse("f16")) == "f16"
    assert KVCache.parse("q4_0").flash_attention is True and KVCache.parse("f32").flash_attention is False
    assert KVCache().flash_attention is None and KVCache.parse("q8_0").bytes_per_cell(2, 64, 64) == 2 * 128 * 34 / 32
    for bad, says in (("q3", "unknown; valid: f32, f16"), ("k=q8_0,k=f16", "k=TYPE,v=TYPE"),
                      ("x=q8_0", "k=TYPE,v=TYPE"), ("", "unknown")):
        with pytest.raises(InvalidParameterError, match=says):
            KVCache.parse(bad)
    with pytest.raises(InvalidParameterError, match="80 wide.*blocks of 32"):
        KVCache.parse("q4_0").check_head(80, 80, "m")
    with pytest.raises(InvalidParameterError, match="flash_attn=False.*on with a q8_0 KV cache"):
        LoadParams(kv=KVCache.parse("q8_0"), flash_attn=False)  # a quantized V needs it
    assert LoadParams(kv=KVCache.parse("q8_0"), flash_attn=True).flash_attn and LoadParams(flash_attn=False)


def test_the_default_comes_from_the_model_then_the_environment_on_llamacpp_only() -> None:
    assert kv_cache_for("llama.cpp", "q8_0", "q4_0") == KVCache.parse("q8_0")
    assert kv_cache_for("llama.cpp", None, "q4_0") == KVCache.parse("q4_0")
    assert kv_cache_for("onnxruntime", None, "q4_0") == KVCache()  # the environment names llama.cpp's cache
    with pytest.raises(InvalidParameterError, match="EDGESLM_KV_CACHE_TYPE in the environment: .*'q9'"):
        kv_cache_for("llama.cpp", None, "q9")


def test_other_runtimes_refuse_a_kv_type_by_name(tmp_path: Path) -> None:
    for runtime in ("onnxruntime", "mlx"):
        with pytest.raises(InvalidParameterError, match=f"llama.cpp setting; {runtime} keeps its cache"):
            open_engine(runtime, tmp_path, LoadParams(kv=KVCache.parse("q8_0")))


def test_the_memory_estimate_counts_the_cache_type(builtin_home: Path) -> None:
    from edgeslm.config import resolve_settings
    from edgeslm.generation import resolve_model

    info = resolve_model("smollm2-135m-instruct", resolve_settings(home=builtin_home, offline=True)).info
    f16, q8, q4 = (estimate_memory(info, 8192, KVCache.parse(t)).kv_cache_bytes for t in ("f16", "q8_0", "q4_0"))
    assert q8 == pytest.approx(f16 * 34 / 64, rel=1e-6) and q4 == pytest.approx(f16 * 18 / 64, rel=1e-6)
    assert estimate_memory(info, 8192).kv_cache_bytes == f16  # None: the runtime's own (F16 on llama.cpp)


@pytest.mark.real_model
def test_a_quantized_cache_loads_generates_and_eval_measures_what_it_adds(
    builtin_home: Path, home: Path, cli: Cli
) -> None:
    shutil.copytree(builtin_home, home)
    run = cli("run", "smollm2-135m-instruct", "Name a colour.", "--kv-type", "q8_0", "--max-tokens", "8",
              "--temperature", "0")
    assert run.code == 0 and run.out.strip()
    out = cli("eval", "smollm2-135m-instruct", "--kv-type", "q4_0", "--chunks", "2", "--no-speed", "--json")
    assert out.code == 0, out.err
    result = json.loads(out.out)[0]
    # the reference is the model itself with an F16 cache: the KLD is the cache type's alone
    assert result["reference_digest"] == result["model_digest"] and result["settings"]["kv"] == "q4_0"
    assert result["kld_mean"] > 0
    plain = cli("eval", "smollm2-135m-instruct", "--reference", "smollm2-135m-instruct", "--chunks", "2",
                "--no-speed", "--json")
    first = json.loads(plain.out)[0]
    assert first["key"] != result["key"] and first["settings"]["kv"] == "f16" and first["kld_mean"] is None
    bad = cli("bench", "smollm2-135m-instruct", "--kv-type", "q3")
    assert bad.code != 0 and "KV cache type 'q3' is unknown" in bad.err


def test_a_modelfile_stores_kv_type_in_one_spelling(builtin_home: Path, home: Path, cli: Cli,
                                                   tmp_path: Path) -> None:
    shutil.copytree(builtin_home, home)
    (tmp_path / "Modelfile").write_text("FROM smollm2-135m-instruct\nPARAMETER kv_type K=Q8_0\n")
    assert cli("create", "small-kv", "-f", str(tmp_path / "Modelfile")).code == 0
    shown = json.loads(cli("show", "small-kv", "--json").out)
    assert shown["defaults"]["parameters"]["kv_type"] == "k=q8_0,v=f16"
    (tmp_path / "Bad").write_text("FROM smollm2-135m-instruct\n\nPARAMETER kv_type q3_k\n")
    bad = cli("create", "bad-kv", "-f", str(tmp_path / "Bad"))
    assert bad.code != 0 and "line 3" in bad.err and "'q3_k' is unknown" in bad.err
    with pytest.raises(ModelfileError):
        from edgeslm.modelfile.params import from_commands
        from edgeslm.modelfile.parser import parse

        from_commands([c for c in parse("FROM x\nPARAMETER kv_type k=q8_0,k=f16\n").commands if c.key == "kv_type"])
