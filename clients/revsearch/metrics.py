"""Retrieval metrics for `revsearch eval` (pure functions).

A query's result is the ranked list of hit labels (identities) with the query itself removed,
and `relevant` is how many other items share the query's label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def precision_at_1(labels: list[str], query_label: str) -> float:
    return float(bool(labels) and labels[0] == query_label)


def average_precision_at_k(labels: list[str], query_label: str, relevant: int, k: int = 20) -> float:
    """AP over the top k, divided by min(k, relevant) so a perfect top k scores 1.0."""
    if relevant <= 0:
        return 0.0
    hits, total = 0, 0.0
    for rank, label in enumerate(labels[:k], start=1):
        if label == query_label:
            hits += 1
            total += hits / rank
    return total / min(k, relevant)


def recall_at_k(labels: list[str], query_label: str, relevant: int, k: int = 20) -> float:
    if relevant <= 0:
        return 0.0
    return sum(label == query_label for label in labels[:k]) / relevant


def hit_at_k(labels: list[str], query_label: str, k: int = 5) -> float:
    return float(query_label in labels[:k])


@dataclass
class QueryScore:
    query: str
    label: str
    p_at_1: float
    ap_at_20: float
    r_at_20: float
    hit_at_5: float


def score_query(query: str, label: str, ranked_labels: list[str], relevant: int) -> QueryScore:
    return QueryScore(query, label, precision_at_1(ranked_labels, label),
                      average_precision_at_k(ranked_labels, label, relevant, 20),
                      recall_at_k(ranked_labels, label, relevant, 20), hit_at_k(ranked_labels, label, 5))


def summarise(scores: list[QueryScore]) -> dict[str, float]:
    if not scores:
        return {"queries": 0, "p_at_1": 0.0, "map_at_20": 0.0, "r_at_20": 0.0, "hit_at_5": 0.0}
    return {"queries": len(scores),
            "p_at_1": float(np.mean([s.p_at_1 for s in scores])),
            "map_at_20": float(np.mean([s.ap_at_20 for s in scores])),
            "r_at_20": float(np.mean([s.r_at_20 for s in scores])),
            "hit_at_5": float(np.mean([s.hit_at_5 for s in scores]))}
