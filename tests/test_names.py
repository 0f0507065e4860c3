from __future__ import annotations

import pytest

from edgeslm.errors import InvalidNameError
from edgeslm.store.names import ModelName, parse_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mine", ModelName("mine", "latest")),
        ("Mine:V1", ModelName("mine", "v1")),
        ("smollm2-135m-instruct:q4_k_m", ModelName("smollm2-135m-instruct", "q4_k_m")),
        ("team/mine:v1.2", ModelName("mine", "v1.2", namespace="team")),
        (
            "hf.co/unsloth/smollm2-135m-instruct-gguf:q8_0",
            ModelName("smollm2-135m-instruct-gguf", "q8_0", namespace="unsloth", host="hf.co"),
        ),
        ("qwen3-0.6b", ModelName("qwen3-0.6b")),
    ],
)
def test_valid_names(text: str, expected: ModelName) -> None:
    assert parse_name(text) == expected
    assert parse_name(str(expected)) == expected  # round trip


BAD = {
    "dotdot": "../etc/passwd",
    "dotdot tag": "mine:..",
    "dotdot inside": "a..b",
    "absolute": "/abs/model",
    "backslash": "..\\model",
    "nul": "mine\x00:v1",
    "newline": "mine\n",
    "control": "mi\x1bne",
    "300 chars": "m" * 300,
    "81-char part": "m" * 81,
    "unicode division slash": "a\u2215b",
    "fullwidth slash": "a\uff0fb",
    "unicode letters": "modèle",
    "empty": "",
    "empty tag": "mine:",
    "two colons": "a:b:c",
    "leading dot": ".hidden",
    "leading dash": "-x",
    "four parts": "a/b/c/d",
    "empty part": "a//b",
    "space": "my model",
}


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_names(case: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        parse_name(BAD[case])
    assert "invalid model name" in str(info.value)
    assert "names look like" in str(info.value)  # the rule, i.e. the next step


def test_manifest_path_parts_cannot_collide() -> None:
    assert parse_name("a/b").path_parts() != parse_name("b").path_parts()
    assert parse_name("x.y/a/b").path_parts() == ("x.y", "a", "b", "latest")
    assert parse_name("b").path_parts() == ("_", "_", "b", "latest")


def test_variants_of_a_tag_keep_the_tag() -> None:
    from edgeslm.store import parse_name

    latest, small, large = (parse_name(n) for n in ("m", "m:0.5b", "m:1.5b"))
    assert str(latest.variant("q4_0")) == "m:q4_0"
    assert str(small.variant("q4_0")) == "m:0.5b-q4_0"
    assert str(small.variant("onnx-int4")) == "m:0.5b-onnx-int4"
    assert small.owns(small.variant("q4_0")) and small.owns(small)
    assert not small.owns(large.variant("q4_0")) and not small.owns(parse_name("m:0.5bx"))
    assert latest.owns(large.variant("q8_0")) and not latest.owns(parse_name("other:q8_0"))
    sibling = parse_name("m:q8_0")
    assert str(sibling.variant("q4_0")) == "m:q4_0" and str(small.variant("q8_0").variant("q4_0")) == "m:0.5b-q4_0"
    assert str(parse_name("m:q4_k_m-imat").variant("onnx-int4")) == "m:onnx-int4"
    assert str(parse_name("m:best").variant("mlx-4bit")) == "m:best-mlx-4bit"
    assert str(parse_name("m:0.5b-onnx-int4").variant("f16")) == "m:0.5b-f16"
