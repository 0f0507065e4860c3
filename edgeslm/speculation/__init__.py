"""Speculative decoding: drafts (``ngram``: prompt lookup, as llama.cpp's ``ngram-simple``) and
the policy that decides, from the verify cost measured on this machine and the acceptance seen so
far, whether a draft is worth verifying (``policy``). The engines verify (``engines.llamacpp_spec``)."""

from .ngram import LookupConfig, LookupDrafter, ngram_simple_draft
from .policy import Policy, SpecStats, expected_gain

__all__ = ["LookupConfig", "LookupDrafter", "Policy", "SpecStats", "expected_gain", "ngram_simple_draft"]
