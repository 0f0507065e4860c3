"""Retrieval: does an embedding model find the passage that answers a question?

A kept set (``edgeslm/data/retrieval_cases.json``): every paragraph of at least 300 characters of
the bundled WikiText-2 sample is a passage; 73 questions, each written by hand from one passage,
list the passages that answer them. Every passage and question is embedded through the runner
(many texts per decode, as ``/v1/embeddings`` embeds them), passages are ranked by cosine
similarity to the question, and a question is answered when a relevant passage is in the top 5
(recall@5, the task's score); the rank of the first relevant one gives the mean reciprocal rank.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from ..errors import InputFileError

PROTOCOL = "edgeslm-retrieval/1, wikitext-2 sample paragraphs, cosine, recall@5 and MRR"
TOP_K = 5
MAX_SET_BYTES = 4 << 20


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    relevant: frozenset[int]


@dataclass(frozen=True)
class RetrievalSet:
    passages: tuple[str, ...]
    queries: tuple[Query, ...]


def set_path() -> Path:
    return Path(str(files("edgeslm").joinpath("data/retrieval_cases.json")))


def load_set(path: Path | None = None) -> RetrievalSet:
    """The passages and queries, checked: a set that is not this shape is refused by name."""
    path = path or set_path()
    try:
        if path.stat().st_size > MAX_SET_BYTES:
            raise InputFileError(f"{path}: over {MAX_SET_BYTES >> 20} MiB; not a retrieval set")
        doc = json.loads(path.read_text(encoding="utf-8"))
        passages = tuple(str(p) for p in doc["passages"])
        queries = tuple(Query(str(q["id"]), str(q["query"]), frozenset(int(i) for i in q["relevant"]))
                        for q in doc["queries"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputFileError(f"{path}: not a retrieval set ({type(exc).__name__}: {exc})") from None
    bad = [q.id for q in queries if not q.relevant or not all(0 <= i < len(passages) for i in q.relevant)]
    if not passages or not queries or bad or len({q.id for q in queries}) != len(queries):
        raise InputFileError(f"{path}: no passages or queries, ids repeated, or queries naming no passage ({bad[:3]})")
    return RetrievalSet(passages, queries)


def rank_of(query: Sequence[float], passages: Sequence[Sequence[float]], relevant: frozenset[int]) -> int:
    """The 1-based rank of the first relevant passage by cosine similarity (vectors are normalised)."""
    import numpy as np

    scores = np.asarray(passages, dtype=np.float64) @ np.asarray(query, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    return 1 + next(i for i, p in enumerate(order.tolist()) if p in relevant)


def mrr(outcomes: Sequence[str]) -> float:
    """The mean reciprocal rank of answers whose outcome reads 'rank N'."""
    ranks = [int(o.split()[1]) for o in outcomes if o.startswith("rank ")]
    return sum(1 / r for r in ranks) / len(ranks) if ranks else 0.0
