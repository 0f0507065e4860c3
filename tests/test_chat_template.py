"""Chat templates are hostile code: the sandbox and its caps."""

from __future__ import annotations

import time

import pytest

from edgeslm.chat import render_chat
from edgeslm.errors import ChatTemplateError

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
USER = [{"role": "user", "content": "hi"}]


def test_renders_a_real_template() -> None:
    text = render_chat(SMOLLM2, USER)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert render_chat("{{ bos_token }}{{ messages[0].content | tojson }}", USER, bos_token="<s>") == '<s>"hi"'


HOSTILE = {
    "subclasses": ("{{ ().__class__.__base__.__subclasses__() }}", "unsafe"),
    "globals": ("{{ cycler.__init__.__globals__ }}", "unsafe"),
    "mutation": ("{{ messages.append(1) }}", "unsafe"),
    "string bomb": ("{{ 'a' * 10**9 }}", "repeats a value"),
    "literal bomb": ("{{ 'a' * 1000000000 }}", "repeats a value"),
    "filter bomb": ("{{ 'a' | center(1000000000) }}", "passes 1,000,000,000"),
    "method bomb": ("{{ 'a'.ljust(1000000000) }}", "passes 1,000,000,000"),
    "power tower": ("{{ 9 ** 9 ** 9 }}", "too large"),
    "output flood": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'abcdefghij' }}{% endfor %}{% endfor %}",
        "output passed|ran past",
    ),
    "silent loop": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% set x = i %}{% endfor %}{% endfor %}",
        "ran past",
    ),
    "syntax error": ("{% for %}", "does not compile"),
    "raise_exception": ("{{ raise_exception('no system role') }}", "raised: no system role"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_templates_are_stopped(case: str) -> None:
    template, words = HOSTILE[case]
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match=words):
        render_chat(template, USER, time_cap=0.5)
    assert time.monotonic() - start < 10  # stopped, not run to completion (which takes minutes)


def test_the_deadline_tracer_is_removed_afterwards() -> None:
    import sys

    before = sys.gettrace()
    with pytest.raises(ChatTemplateError):
        render_chat("{{ raise_exception('x') }}", USER)
    assert sys.gettrace() is before
