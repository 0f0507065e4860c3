"""Modelfiles as Ollama parses them, their parameters, Go templates translated to Jinja, and
``create``/``show --modelfile`` on a tiny model; every bad input refused with its line, the store unchanged."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeslm.chat import render_chat
from edgeslm.errors import ModelfileError
from edgeslm.modelfile import parse
from edgeslm.modelfile.gotemplate import is_go_template, translate
from edgeslm.modelfile.params import check, from_commands
from edgeslm.modelfile.parser import Command, Instruction, quote
from edgeslm.store import Store

from .conftest import CliResult, snapshot

Cli = Callable[..., CliResult]
CHATML_GO = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
LEGACY_GO = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n"
    "{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)
QWEN_GO = """{{- if .Messages }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}{{ .Prompt }}{{ end }}"""
CHATML_JINJA = (  # SmolLM2's own template, less its default system prompt
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
     {"role": "user", "content": "q2"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
]


def test_parses_what_ollama_parses() -> None:
    text = (
        "# a comment\n"
        "FROM smollm2-135m-instruct:q8_0\n"
        "adapter ./support-bot-lora/            # a PEFT folder\n"
        "PARAMETER temperature 0.3\n"
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER stop <|endoftext|>\n"
        '  SYSTEM """You answer questions\n\nabout the "Zephyr-9".\n"""  \n'
        'MESSAGE user "How do I reset it?"\n'
        "MESSAGE assistant Hold the back button # for ten seconds.\n"
        'LICENSE "MIT\nline two"\n'
    )
    mf = parse(text)
    got = [(c.instruction, c.key, c.value, c.line) for c in mf.commands]
    assert got == [
        (Instruction.FROM, "", "smollm2-135m-instruct:q8_0", 2),
        (Instruction.ADAPTER, "", "./support-bot-lora/", 3),
        (Instruction.PARAMETER, "temperature", "0.3", 4),
        (Instruction.PARAMETER, "stop", "<|im_end|>", 5),
        (Instruction.PARAMETER, "stop", "<|endoftext|>", 6),
        (Instruction.SYSTEM, "", 'You answer questions\n\nabout the "Zephyr-9".\n', 7),
        (Instruction.MESSAGE, "user", "How do I reset it?", 11),
        (Instruction.MESSAGE, "assistant", "Hold the back button # for ten seconds.", 12),  # Ollama keeps it
        (Instruction.LICENSE, "", "MIT\nline two", 13),
    ]
    assert from_commands(mf.all(Instruction.PARAMETER)) == {"temperature": 0.3, "stop": ["<|im_end|>", "<|endoftext|>"]}
    again = parse(mf.render()).commands
    assert [(c.instruction, c.key, c.value) for c in again] == [(c.instruction, c.key, c.value) for c in mf.commands]


def test_render_round_trips_random_values() -> None:
    rng = random.Random(7)
    alphabet = ['"', " ", "\n", "\t", "#", "a", "b", "{", "}", "é", "\\", "'"]
    for _ in range(2000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        try:
            line = Command(Instruction.SYSTEM, value, 1).render()
        except ModelfileError:
            assert '"""' in value
            continue
        back = parse("FROM x\n" + line + "\n").last(Instruction.SYSTEM)
        assert back is not None and back.value == value, (value, line)
    assert quote("plain") == "plain" and quote("a\nb") == '"a\nb"' and quote('say "x"\n') == '"""say "x"\n"""'


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("FROM x\nFORM y\n", "(line 2): unknown instruction 'FORM'"),
        ("PARAMETER temperature 1\n", "no FROM line"),
        ("FROM\n", "(line 1): FROM needs a value"),
        ("FROM   \n", "(line 1): the instruction has no value"),
        ("FROM x\nPARAMETER temperature\n", "(line 2): PARAMETER needs a name and a value"),
        ('FROM x\n\nSYSTEM """never\nclosed\n', '(line 3): the """ opened here is never closed'),
        ('FROM x\nSYSTEM "open\n', '(line 2): the " opened here is never closed'),
        ("FROM x\nMESSAGE tool hi\n", "(line 2): message role 'tool' must be one of system, user, assistant"),
        ("FROM x\nSYSTEM " + "a" * (10 << 20) + "\n", "(line 2): SYSTEM is 10,485,760 characters long; at most"),
        ("FROM x\n12 y\n", "(line 2): unknown instruction '12'"),
    ],
)
def test_bad_modelfiles_name_their_line(text: str, problem: str) -> None:
    with pytest.raises(ModelfileError) as err:
        parse(text)
    assert problem in str(err.value)


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"temprature": 0.3}, "unknown parameter 'temprature'"),
        ({"temperature": 101}, "temperature=101.0 is out of range"),
        ({"top_p": 0}, "top_p=0.0 is out of range"),
        ({"num_ctx": 8}, "num_ctx=8 is out of range"),
        ({"num_predict": 0}, "num_predict=0 is out of range"),
        ({"top_k": 1.5}, "must be an integer"),
        ({"temperature": "hot"}, "must be a number"),
        ({"stop": ["x"] * 17}, "at most 16 strings"),
        ({"seed": float("nan")}, "must be a number"),
    ],
)
def test_parameters_are_range_checked(params: dict[str, object], problem: str) -> None:
    with pytest.raises(Exception) as err:
        check(params)
    assert problem in str(err.value)


def test_parameter_lines_name_their_line() -> None:
    with pytest.raises(ModelfileError, match=r"\(line 3\): parameter top_k must be an integer"):
        from_commands(parse("FROM x\nPARAMETER top_k 4\nPARAMETER top_k four\n").all(Instruction.PARAMETER))
    with pytest.raises(ModelfileError, match=r"\(line 2\): repeat_penalty=0.0 is out of range"):
        from_commands(parse("FROM x\nPARAMETER repeat_penalty 0\n").all(Instruction.PARAMETER))
    assert from_commands(parse("FROM x\nPARAMETER num_gpu 99\nPARAMETER seed 3\n").all(Instruction.PARAMETER)) == {
        "seed": 3
    }  # Ollama's options that do nothing here are accepted and dropped, as Ollama drops deprecated ones


@pytest.mark.parametrize("go", [CHATML_GO, LEGACY_GO, QWEN_GO])
def test_go_templates_render_as_chatml(go: str) -> None:
    """Three templates from Ollama's library (ChatML with range, the older System/Prompt/Response
    form, Qwen's with $last): each renders every chat exactly as SmolLM2's Jinja ChatML does."""
    assert is_go_template(go) and not is_go_template(CHATML_JINJA)
    jinja = translate(go)
    for chat in CHATS:
        assert render_chat(jinja, chat) == render_chat(CHATML_JINJA, chat), chat


def test_go_template_semantics_follow_ollama() -> None:
    # consecutive turns of one role are joined by a blank line; every system message makes .System
    chat = [{"role": "system", "content": "A"}, {"role": "system", "content": "B"}, {"role": "user", "content": "u1"},
            {"role": "user", "content": "u2"}]
    out = render_chat(translate("{{ .System }}|{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}"), chat)
    assert out == "A\n\nB|system=A\n\nB;user=u1\n\nu2;"
    # the older form: one rendering per exchange, the last cut at .Response
    legacy = translate("<{{ .System }}/{{ .Prompt }}/{{ .Response }}>\n")
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert render_chat(legacy, chat) == "</a/b>\n</c/"
    trimmed = translate("x  {{- .Prompt -}}  \n y")
    assert render_chat(trimmed, [{"role": "user", "content": "p"}]) == "xpy"


@pytest.mark.parametrize(
    ("go", "problem"),
    [
        ("{{ json .Tools }}", "function 'json' is outside the subset"),
        ("{{ .Tools }}", "field .Tools is outside the subset"),
        ("{{ range .Messages }}{{ range .Messages }}{{ end }}{{ end }}", "a {{ range }} inside a {{ range }}"),
        ("{{ if .System }}open", "{{ if }} is never closed"),
        ("{{ with .System }}{{ . }}{{ end }}", "outside the subset"),
        ("{{ range .Messages }}{{ .Images }}{{ end }}", "only .Role and .Content"),
        ("{{ .Prompt ", "never closed"),
    ],
)
def test_go_templates_outside_the_subset_are_refused(go: str, problem: str) -> None:
    with pytest.raises(ModelfileError) as err:
        translate(go)
    assert problem in str(err.value) and "Jinja" in str(err.value)


# -- create and show on a tiny model -------------------------------------------------------------------


def _modelfile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mf" / "Modelfile"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_create_from_a_gguf_file_then_show_recreates_it(cli: Cli, store: Store, tiny_model: Path,
                                                        tmp_path: Path) -> None:
    mf = _modelfile(tmp_path, (
        f"FROM {tiny_model}\nPARAMETER temperature 0.3\nPARAMETER stop <|im_end|>\nSYSTEM You are brief.\n"
        f'TEMPLATE """{CHATML_GO}"""\nMESSAGE user hi\nMESSAGE assistant "hello there"\nLICENSE MIT\n'
    ))
    assert cli("create", "brief", "-f", str(mf)).code == 0
    made = store.get(__import__("edgeslm.store", fromlist=["parse_name"]).parse_name("brief"))
    d = made.defaults
    assert d["system"] == "You are brief." and d["parameters"] == {"temperature": 0.3, "stop": ["<|im_end|>"]}
    assert d["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    assert d["template_source"] == CHATML_GO and d["license"] == ["MIT"]
    assert render_chat(d["template"], CHATS[1]) == render_chat(CHATML_JINJA, CHATS[1])
    shown = cli("show", "brief", "--modelfile")
    assert shown.code == 0 and "FROM " in shown.out
    again = _modelfile(tmp_path, shown.out)
    assert cli("create", "brief2", "-f", str(again)).code == 0
    copy = store.get(__import__("edgeslm.store", fromlist=["parse_name"]).parse_name("brief2"))
    assert (copy.digest, copy.defaults) == (made.digest, made.defaults)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("FROM nothing-here\n", "model nothing-here:latest is not in the store"),
        ("FROM ./missing.gguf\n", "(line 1): ./missing.gguf does not exist"),
        ("FROM {tiny}\nPARAMETER temperature 300\n", "(line 2): temperature=300.0 is out of range"),
        ("FROM {tiny}\n\nTEMPLATE {{{{ json .Tools }}}}\n", "(line 3): template line 1: function 'json'"),
        ('FROM {tiny}\nTEMPLATE "{{{{ ().__class__.__base__.__subclasses__() }}}}"\n', "(line 2): chat template"),
        ("FROM {tiny}\nADAPTER ./nope/\n", "(line 2): ./nope/ does not exist"),
        ("FROM {tiny}\nADAPTER {tiny}\n", "(line 2): tiny.gguf is a GGUF file but not a LoRA adapter"),
        ("FROM {tiny}\nDRAFT lookup\n", "(line 2): DRAFT is Ollama's and not supported"),
    ],
)
def test_bad_creates_change_nothing(cli: Cli, store: Store, tiny_model: Path, tmp_path: Path, text: str,
                                    problem: str) -> None:
    mf = _modelfile(tmp_path, text.format(tiny=tiny_model))
    before = snapshot(store.root)
    result = cli("create", "bad", "-f", str(mf))
    assert result.code != 0 and problem in result.err, result.err
    assert snapshot(store.root) == before


def test_create_quantizes_a_stored_base(cli: Cli, store: Store, tiny_model: Path, tmp_path: Path) -> None:
    from edgeslm.store import parse_name

    assert cli("import", str(tiny_model), "--name", "tiny").code == 0
    mf = _modelfile(tmp_path, "FROM tiny\nSYSTEM Be brief.\n")
    assert cli("create", "tiny-small", "-f", str(mf), "--quantize", "q8_0").code == 0
    made = store.get(parse_name("tiny-small"))
    assert made.info.file_type == "Q8_0" and made.defaults["system"] == "Be brief."
    assert made.digest != store.get(parse_name("tiny")).digest
    refused = cli("create", "nope", "-f", str(_modelfile(tmp_path, f"FROM {tiny_model}\n")), "--quantize", "q8_0")
    assert refused.code != 0 and "create --quantize works FROM a stored model" in refused.err


def test_a_failed_quantizing_create_leaves_nothing(cli: Cli, store: Store, tiny_model: Path, tmp_path: Path) -> None:
    assert cli("import", str(tiny_model), "--name", "tiny").code == 0
    assert cli("create", "keep", "-f", str(_modelfile(tmp_path, "FROM tiny\nSYSTEM old\n"))).code == 0
    before = snapshot(store.root)
    bad = cli("create", "keep", "-f", str(_modelfile(tmp_path, "FROM tiny\nADAPTER nowhere-model\n")), "-q", "q8_0")
    assert bad.code != 0 and "ADAPTER nowhere-model is neither" in bad.err, bad.err
    assert snapshot(store.root) == before  # the quantized interim model is gone, "keep" is as it was


def test_run_applies_the_stored_parameters(cli: Cli, home: Path, tmp_path: Path) -> None:
    from edgeslm.config import resolve_settings
    from edgeslm.generation import load

    from .ggufbuild import write_runnable_model

    runnable = write_runnable_model(tmp_path / "r.gguf")
    mf = _modelfile(tmp_path, f"FROM {runnable}\nPARAMETER num_ctx 512\nPARAMETER num_predict 3\nPARAMETER seed 7\n")
    assert cli("create", "short", "-f", str(mf)).code == 0
    model = load("short", settings=resolve_settings(home=home, offline=True))
    try:
        assert model.engine.n_ctx == 512 and model.defaults["parameters"]["num_predict"] == 3
    finally:
        model.close()
    first = cli("run", "short", "hello", "--temperature", "1")
    again = cli("run", "short", "hello", "--temperature", "1")
    assert first.code == 0 and first.out == again.out  # the stored seed: the same sampled text
    assert len(first.out.strip()) <= 3 * 8  # three tokens at most (num_predict)
