"""Items with several vectors (crop mode "all"): row keys and collapsing row hits into item hits."""

from revsearch_server.index.base import Hit
from revsearch_server.rows import collapse_hits, item_of, row_id, rows_of


def _hit(row: str, score: float) -> Hit:
    return Hit(id=row, uri=f"uri-{item_of(row)}", score=score, sha256="", metadata={}, face_box=[0, 0, 1, 1, score])


def test_row_keys_round_trip_to_their_item_even_when_the_item_id_has_punctuation():
    assert row_id("a.b:c-d_e", 3) == "a.b:c-d_e~3" and item_of("a.b:c-d_e~3") == "a.b:c-d_e"
    assert rows_of("x", 3) == ["x~0", "x~1", "x~2"] and rows_of("x", 0) == ["x~0"]


def test_each_item_appears_once_at_its_best_faces_score_and_rank_order_is_kept():
    hits = [_hit("a~2", 0.9), _hit("b~0", 0.8), _hit("a~0", 0.7), _hit("c~1", 0.6), _hit("b~3", 0.5)]
    collapsed = collapse_hits(hits, top_k=10)
    assert [(h.id, h.score) for h in collapsed] == [("a", 0.9), ("b", 0.8), ("c", 0.6)]
    assert collapsed[0].face_box == [0, 0, 1, 1, 0.9]  # the box of the face that matched
    assert [h.id for h in collapse_hits(hits, top_k=2)] == ["a", "b"]
