"""``edgeslm finetune``: LoRA adapters trained on the CPU (``train``) on the user's JSONL data (``data``)."""

from __future__ import annotations

from .train import FinetuneOptions, FinetuneResult, finetune

__all__ = ["FinetuneOptions", "FinetuneResult", "finetune"]
