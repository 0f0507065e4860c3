"""The local content-addressed model store."""

from .names import DEFAULT_TAG, ModelName, parse_name
from .registry import Manifest, Problem, RemovePlan, Store, SweepReport, VerifyReport

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
