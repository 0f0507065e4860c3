"""A TEMPLATE: Ollama's Go form translated once, or Jinja; either way tried in the sandbox before
it is stored, so a template that cannot render (or tries to leave the sandbox) is refused at
``create``, not at the first chat."""

from __future__ import annotations

from ..chat import render_chat
from ..errors import ChatTemplateError, ModelfileError
from .gotemplate import MAX_TEMPLATE_CHARS, is_go_template, translate

_TRIAL = (
    [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"},
     {"role": "user", "content": "u2"}],
    [{"role": "user", "content": "u"}],
)


def compile_template(source: str, where: str) -> str:
    """The Jinja chat template to store for ``source``; ModelfileError (prefixed ``where``) if it
    is outside the Go subset, does not compile, or fails or is refused in the sandbox."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise ModelfileError(f"{where}: the template is {len(source):,} characters; at most {MAX_TEMPLATE_CHARS:,}")
    try:
        jinja = translate(source) if is_go_template(source) else source
        for messages in _TRIAL:
            render_chat(jinja, messages)
    except ModelfileError as exc:
        raise ModelfileError(f"{where}: {exc}") from None
    except ChatTemplateError as exc:
        raise ModelfileError(f"{where}: {exc}") from None
    return jinja
