"""The local content-addressed model store (``verify.verify_store`` walks every blob: imported apart,
as it reads GGUF headers, which a light command like ``list`` never needs)."""

from .names import DEFAULT_TAG, ModelName, parse_name
from .records import Manifest, Problem, RemovePlan, SweepReport, VerifyReport
from .registry import Store

__all__ = [
    "DEFAULT_TAG",
    "Manifest",
    "ModelName",
    "Problem",
    "RemovePlan",
    "Store",
    "SweepReport",
    "VerifyReport",
    "parse_name",
]
