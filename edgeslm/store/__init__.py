"""The local content-addressed model store."""

from .names import DEFAULT_TAG, ModelName, parse_name
from .records import Manifest, Problem, RemovePlan, SweepReport, VerifyReport
from .registry import Store
from .verify import verify_store

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
    "verify_store",
]
