"""The CLI end to end, in process: exit codes, stdout/stderr split, store untouched on errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeslm.sources.builtin import BUILTINS

from .conftest import CliResult, snapshot
from .ggufbuild import write, write_tiny_model

Cli = Callable[..., CliResult]


@pytest.fixture
def builtin_cli(builtin_home: Path, home: Path, cli: Cli) -> Cli:
    """A CLI whose home is a private copy of the session's store of both builtin models."""
    shutil.copytree(builtin_home, home)
    return cli


@pytest.mark.real_model
def test_pull_list_show_the_builtin_models(home: Path, cli: Cli) -> None:
    result = cli("pull", "smollm2-135m-instruct", "gemma3-270m")
    assert result.code == 0, result.err
    assert "pulled: smollm2-135m-instruct:latest" in result.err and result.out == ""
    again = cli("pull")  # the default model
    assert again.code == 0 and "up to date: smollm2-135m-instruct:latest" in again.err
    listing = json.loads(cli("list", "--json").out)
    by_name = {m["name"]: m for m in listing}
    smol, gemma = by_name["smollm2-135m-instruct:latest"], by_name["gemma3-270m:latest"]
    assert (smol["n_params"], smol["size_class"], smol["architecture"]) == (134_515_008, "micro", "llama")
    assert (gemma["n_params"], gemma["size_class"], gemma["architecture"]) == (268_098_176, "micro", "gemma3")
    assert smol["digest"] == f"sha256-{BUILTINS['smollm2-135m-instruct'].sha256}"


@pytest.mark.real_model
def test_show_reports_the_true_type_mix(builtin_cli: Cli) -> None:
    smol = json.loads(builtin_cli("show", "--json").out)  # the default model
    assert smol["name"] == "smollm2-135m-instruct:latest"
    mix = {s["ggml_type"]: s["n_params"] for s in smol["type_mix"]}
    assert mix == {"Q4_1": 106_168_320, "Q8_0": 28_311_552, "F32": 35_136}
    assert smol["file_type"] == "Q4_1" and smol["has_chat_template"] and smol["vocab_size"] == 49_152
    assert smol["memory"]["kv_cache_bytes"] == 90 * 2**20  # llama.cpp prints "KV self size = 90.00 MiB" at 4096
    gemma = json.loads(builtin_cli("show", "gemma3-270m", "--json", "--ctx", "8192").out)
    gmix = {s["ggml_type"]: s["n_params"] for s in gemma["type_mix"]}
    # The packaged "Q4_K_M" is mostly Q8_0 and Q5_0: K-quants need rows divisible by 256 (640 is not).
    assert gemma["file_type"] == "Q4_K_M" and max(gmix, key=gmix.__getitem__) == "Q8_0"
    assert not gemma["has_chat_template"] and gemma["sliding_window"] == 512
    text = builtin_cli("show", "gemma3-270m").out
    assert "micro, 100M-1.4B" in text and "Q5_0" in text and "chat template      no" in text


@pytest.mark.real_model
def test_list_filters(builtin_cli: Cli) -> None:
    names = lambda *a: [m["name"] for m in json.loads(builtin_cli("list", "--json", *a).out)]  # noqa: E731
    assert names("--family", "gemma3") == ["gemma3-270m:latest"]
    assert names("--family", "smollm2") == ["smollm2-135m-instruct:latest"]
    assert names("--max-size", "100MB") == ["smollm2-135m-instruct:latest"]
    assert names("--class", "small") == []
    assert len(names("--class", "micro")) == 2
    assert "gemma3-270m:latest" in builtin_cli("list").out


def test_import_cp_rm_verify(cli: Cli, tiny_model: Path) -> None:
    assert cli("import", str(tiny_model), "--name", "mine:v1").code == 0
    assert cli("cp", "mine:v1", "mine:latest").code == 0
    removed = cli("rm", "mine:v1", "-y")
    assert removed.code == 0 and "freeing 0 B" in removed.err  # the blob is still named by mine:latest
    assert [m["name"] for m in json.loads(cli("list", "--json").out)] == ["mine:latest"]
    verify = cli("verify")
    assert verify.code == 0 and "clean" in verify.out


def test_rm_asks_and_does_nothing_without_a_terminal(cli: Cli, tiny_model: Path, home: Path) -> None:
    cli("import", str(tiny_model), "--name", "mine")
    before = snapshot(home)
    result = cli("rm", "mine")
    assert result.code == 1 and "pass -y" in result.err and "will remove mine:latest" in result.err
    assert snapshot(home) == before


def test_show_a_file_outside_the_store(cli: Cli, tiny_model: Path) -> None:
    report = json.loads(cli("show", str(tiny_model), "--json").out)
    assert report["name"] is None and report["architecture"] == "llama"


def test_catalog_filters(cli: Cli) -> None:
    every = json.loads(cli("catalog", "--json").out)
    assert {"qwen3-8b", "gemma3-270m", "bitnet-b1.58-2b-4t", "phi4-mini-instruct"} <= {e["name"] for e in every}
    micro = json.loads(cli("catalog", "--json", "--class", "micro").out)
    assert micro and all(e["size_class"] == "micro" for e in micro)
    small_fit = json.loads(cli("catalog", "--json", "--fits", "1GB").out)
    assert small_fit and all(e["estimated_bytes"] <= 1e9 for e in small_fit)
    assert "qwen3-8b" not in {e["name"] for e in small_fit}
    assert all(e["n_params"] <= 1e9 for e in json.loads(cli("catalog", "--json", "--max-params", "1B").out))
    assert {e["licence"] for e in json.loads(cli("catalog", "--json", "--license", "MIT").out)} == {"mit"}
    assert cli("catalog", "--fits", "lots").code == 2


BAD_NAMES = ["../x", "/abs", "a\x00b", "m" * 300, "a\u2215b", "x:..", "a:b:c"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_every_entry_point_refuses_bad_names(cli: Cli, tiny_model: Path, home: Path, bad: str) -> None:
    cli("import", str(tiny_model), "--name", "good")
    before = snapshot(home)
    for args in (
        ("import", str(tiny_model), "--name", bad),
        ("pull", bad),
        ("show", bad),
        ("cp", "good", bad),
        ("cp", bad, "good2"),
        ("rm", "-y", bad),
        ("list", bad),
    ):
        result = cli(*args)
        assert result.code == 65, (args, result.err)
        assert "invalid model name" in result.err and result.out == ""
    assert snapshot(home) == before


@pytest.mark.parametrize(
    ("make", "code", "words"),
    [
        (lambda d: d, 65, "no genai_config.json"),  # a folder is read as an ONNX Runtime GenAI model
        (lambda d: d / "missing.gguf", 66, "does not exist"),
        (lambda d: write(d / "empty.gguf", b""), 65, "too short"),
        (lambda d: write(d / "random.gguf", os.urandom(4096)), 65, "magic"),
        (lambda d: write(d / "trunc.gguf", write_tiny_model(d / "t.gguf").read_bytes()[:900]), 65, "bytes"),
    ],
)
def test_import_bad_files(
    cli: Cli, home: Path, tmp_path: Path, make: Callable[[Path], Path], code: int, words: str
) -> None:
    cli("import", str(write_tiny_model(tmp_path / "keep.gguf")), "--name", "keep")
    before = snapshot(home)
    result = cli("import", str(make(tmp_path)), "--name", "bad")
    assert result.code == code and words in result.err, result.err
    assert result.err.startswith("Error: ")
    assert snapshot(home) == before


def test_import_of_an_unreadable_file(home: Path, tmp_path: Path) -> None:
    """Run as an unprivileged user (root reads any file), against a store that user may write."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop to an unprivileged user")
    shared = Path(tempfile.mkdtemp(prefix="edgeslm-perm-"))
    try:
        shared.chmod(0o777)
        secret = write_tiny_model(shared / "secret.gguf")
        secret.chmod(0o000)
        cmd = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "edgeslm",
            "--home",
            str(shared / "home"),
            "import",
            str(secret),
            "--name",
            "secret",
        ]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        if "Permission denied" in result.stderr and "python" in result.stderr.lower() and result.returncode != 66:
            pytest.skip(f"the unprivileged user cannot run this interpreter: {result.stderr[-200:]}")
        assert result.returncode == 66, result.stderr
        assert "permission denied" in result.stderr
        assert not list((shared / "home" / "models" / "blobs").iterdir())
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_unknown_model_and_offline_pull(cli: Cli, home: Path) -> None:
    result = cli("pull", "no-such-model")
    assert result.code == 67 and "not builtin" in result.err and "edgeslm catalog" in result.err
    offline = cli("--offline", "pull", "qwen3-0.6b")
    assert offline.code == 69 and "offline" in offline.err
    refused = cli("pull", "qwen3-0.6b")  # HF_ENDPOINT points at a closed loopback port
    assert refused.code == 69 and "offline" in refused.err and "builtin models" in refused.err
    no_gguf = cli("pull", "phi4-mini-instruct")
    assert no_gguf.code == 69 and "convert it to GGUF" in no_gguf.err
    assert cli("list", "--json").out.strip() == "[]"


def test_console_script_and_module_entry_points(tmp_path: Path) -> None:
    env = {**os.environ, "EDGESLM_HOME": str(tmp_path / "h")}
    by_module = subprocess.run([sys.executable, "-m", "edgeslm", "list"], capture_output=True, text=True, env=env)
    assert by_module.returncode == 0 and by_module.stdout.startswith("NAME")
    script = Path(sys.executable).parent / "edgeslm"
    if script.exists():
        by_script = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=env)
        assert by_script.returncode == 0 and "edgeslm" in by_script.stdout


HEAVY = ("numpy", "fastapi", "gguf", "llama_cpp", "huggingface_hub", "matplotlib", "edgeslm.serve.app")


@pytest.mark.parametrize("args", [["--version"], ["list"], ["ps", "--help"], ["remote", "list"]])
def test_light_commands_import_no_heavy_module(args: list[str], tiny_model: Path, home: Path, cli: Cli) -> None:
    assert cli("import", str(tiny_model), "--name", "tiny").code == 0
    code = (
        "import sys\nfrom edgeslm.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "LOADED []", done.stdout + done.stderr


def test_an_unusable_home_is_a_clear_error(tmp_path: Path, tiny_model: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    for args in (["list"], ["run", "hi", "--max-tokens", "2"], ["import", str(tiny_model), "--name", "t"]):
        cmd = [sys.executable, "-m", "edgeslm", "--home", str(blocked / "home"), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 74, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert f"cannot create the store at {blocked / 'home' / 'models'}: Not a directory" in done.stderr


def test_library_errors_name_parameters_and_the_cli_names_flags(cli: Cli) -> None:
    from edgeslm.device import describe
    from edgeslm.errors import InvalidParameterError
    from edgeslm.recommend import recommend

    phone = describe(kind="phone", ram=4 * 2**30, cores=4, simd=None)
    with pytest.raises(InvalidParameterError, match=r"^ctx 5 is out of range") as caught:
        recommend(phone, ctx=5)
    assert "--" not in str(caught.value) and caught.value.params == ("ctx",)
    result = cli("recommend", "--ram", "4GB", "--cores", "4", "--ctx", "5")
    assert result.code == 2 and result.err.strip() == "Error: --ctx 5 is out of range; valid: 16 to 1,048,576"
    result = cli("serve", "--queue", "-1", "--preload", "")
    assert result.code == 2 and "--queue must be 0 or more and --max-loaded 1 or more" in result.err


@pytest.mark.parametrize("verbosity", [[], ["-v"]])
def test_the_store_sweep_never_speaks_into_a_command_s_output(
    verbosity: list[str], tiny_model: Path, home: Path, cli: Cli
) -> None:
    assert cli("import", str(tiny_model), "--name", "tiny").code == 0
    stale = home / "models" / "tmp" / "blob-left-by-a-killed-writer.partial"
    stale.write_bytes(b"half a model")
    cmd = [sys.executable, "-m", "edgeslm", "--home", str(home), *verbosity, "list"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "tiny:latest" in done.stdout
    assert not stale.exists()  # swept,
    assert "stale" not in done.stdout + done.stderr  # silently: 'verify' is the command that reports it


def test_the_command_table_names_every_command_its_module_adds() -> None:
    import argparse

    from edgeslm.cli import COMMANDS, make_parser

    def commands(parser: argparse.ArgumentParser) -> set[str]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return set(subs[0].choices) if subs else set()

    assert commands(make_parser()) == set(COMMANDS)
    for command in COMMANDS:  # each command's own module, alone, adds it
        assert command in commands(make_parser(command))
