"""Retrieval metrics on hand-worked rankings."""

import pytest

from revsearch.metrics import (average_precision_at_k, hit_at_k, precision_at_1, recall_at_k, score_query,
                               summarise)


def test_a_perfect_ranking_scores_one_everywhere():
    s = score_query("q", "a", ["a", "a", "b", "c"], relevant=2)
    assert (s.p_at_1, s.ap_at_20, s.r_at_20, s.hit_at_5) == (1.0, 1.0, 1.0, 1.0)


def test_average_precision_counts_precision_at_each_relevant_rank():
    # relevant at ranks 2 and 4 of 2 relevant: (1/2 + 2/4) / 2
    assert average_precision_at_k(["x", "a", "y", "a"], "a", relevant=2) == pytest.approx(0.5)
    # only one of three relevant found, at rank 1: 1 / min(20, 3)
    assert average_precision_at_k(["a", "x"], "a", relevant=3) == pytest.approx(1 / 3)


def test_average_precision_divides_by_k_when_more_are_relevant_than_k():
    assert average_precision_at_k(["a"] * 20, "a", relevant=50, k=20) == pytest.approx(1.0)


def test_precision_recall_and_hit_at_k():
    ranked = ["x", "y", "z", "w", "a", "a"]
    assert precision_at_1(ranked, "a") == 0.0
    assert hit_at_k(ranked, "a", 5) == 1.0 and hit_at_k(ranked, "a", 4) == 0.0
    assert recall_at_k(ranked, "a", relevant=4) == pytest.approx(0.5)
    assert precision_at_1([], "a") == 0.0


def test_summary_means_over_queries():
    scores = [score_query("q1", "a", ["a"], 1), score_query("q2", "b", ["x"], 1)]
    summary = summarise(scores)
    assert summary["queries"] == 2 and summary["p_at_1"] == 0.5 and summary["map_at_20"] == 0.5
