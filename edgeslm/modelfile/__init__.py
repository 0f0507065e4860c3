"""Custom models: Modelfiles (``parser``), their parameters (``params``), templates
(``gotemplate``, ``template``), ``create`` and ``show --modelfile`` (``render``)."""

from __future__ import annotations

from .create import CreateSpec, create_model, spec_from_modelfile
from .parser import Command, Instruction, Modelfile, decode, parse
from .render import modelfile_of

__all__ = ["Command", "CreateSpec", "Instruction", "Modelfile", "create_model", "decode", "modelfile_of", "parse",
           "spec_from_modelfile"]
