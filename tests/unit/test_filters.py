"""Filters (filters.py): the AIP-160 subset they parse, the errors they give (with positions), the
limits, precedence, the Milvus expressions they become (escaping, the NOT-free forms, multi-row
ids) and the Python evaluator's semantics. tests/integration/test_filters_on_milvus.py checks that
Milvus answers the expressions the way the evaluator does."""

from __future__ import annotations

import pytest

from revsearch_server.errors import InvalidArgument
from revsearch_server.filters import (MAX_FILTER_BYTES, MAX_FILTER_DEPTH, And, AnyValue, Comparison, FieldRef,
                                      Filter, FilterError, FilterFields, Not, Or, parse_filter)


def item(metadata: dict | None = None, id: str = "it1", uri: str = "s3://b/1.jpg",
         created_at_ms: int = 1_800_000_000_000) -> FilterFields:
    return FilterFields(id=id, uri=uri, created_at_ms=created_at_ms, metadata=metadata or {})


def matches(text: str, **fields) -> bool:
    return parse_filter(text).matches(item(**fields))


def cmp(key: str, op: str, value) -> Comparison:
    return Comparison(FieldRef("metadata", (key,)), op, value)


def error(text: str) -> str:
    with pytest.raises(FilterError) as e:
        parse_filter(text)
    return str(e.value)


# -- parsing ----------------------------------------------------------------------------------------
def test_no_filter_is_none():
    assert parse_filter(None) is None
    assert parse_filter("") is None
    assert parse_filter(" \t\n ") is None


def test_a_filter_keeps_its_text_and_parses_into_typed_nodes():
    f = parse_filter('metadata.color = "red" AND -metadata.tags:"x" AND create_time >= "1970-01-01T00:00:01.5Z"')
    assert f.text.startswith("metadata.color")
    assert f.tree == And((cmp("color", "=", "red"), Not(cmp("tags", ":", "x")),
                          Comparison(FieldRef("create_time"), ">=", 1500)))


def test_fields_are_id_uri_create_time_and_nested_metadata_keys():
    assert parse_filter('id = "a"').tree.field == FieldRef("id")
    assert parse_filter('uri = "a"').tree.field == FieldRef("uri")
    assert parse_filter('metadata.owner.team = "ml"').tree.field == FieldRef("metadata", ("owner", "team"))
    assert parse_filter('metadata."content-type".x_1.2024 = 1').tree.field.path == ("content-type", "x_1", "2024")
    assert parse_filter("metadata.'a b' = 1").tree.field.path == ("a b",)


def test_or_binds_tighter_than_and():
    a, b, c = cmp("a", "=", 1), cmp("b", "=", 2), cmp("c", "=", 3)
    assert parse_filter("metadata.a = 1 AND metadata.b = 2 OR metadata.c = 3").tree == And((a, Or((b, c))))
    assert parse_filter("metadata.a = 1 OR metadata.b = 2 AND metadata.c = 3").tree == And((Or((a, b)), c))
    assert parse_filter("(metadata.a = 1 AND metadata.b = 2) OR metadata.c = 3").tree == Or((And((a, b)), c))


def test_juxtaposition_is_an_implicit_and():
    a, b, c = cmp("a", "=", 1), cmp("b", "=", 2), cmp("c", "=", 3)
    assert parse_filter("metadata.a = 1 metadata.b = 2").tree == And((a, b))
    assert parse_filter("metadata.a = 1 metadata.b = 2 OR metadata.c = 3").tree == And((a, Or((b, c))))
    assert parse_filter("metadata.a=1 (metadata.b=2)").tree == And((a, b))


def test_not_and_minus_negate_a_term():
    a = cmp("a", "=", 1)
    assert parse_filter("NOT metadata.a = 1").tree == Not(a)
    assert parse_filter("-metadata.a = 1").tree == Not(a)
    assert parse_filter("NOT(metadata.a = 1)").tree == Not(a)
    assert parse_filter("NOT NOT metadata.a = 1").tree == Not(Not(a))
    assert parse_filter("NOT metadata.a = 1 OR metadata.a = 1").tree == Or((Not(a), a))


def test_literals_strings_numbers_and_booleans():
    def value(literal: str):
        return parse_filter(f"metadata.k = {literal}").tree.value

    assert value('"a\\"b\\\\c\\n\\t\\u00e9"') == 'a"b\\c\n\té'
    assert value("'it\\'s \"fine\"'") == "it's \"fine\""
    assert value('"\\ud83d\\ude00"') == "😀"  # a UTF-16 pair is one character
    assert value('"a*b"') == "a*b"  # no wildcards
    assert value("-12") == -12 and isinstance(value("-12"), int)
    assert value("2.5") == 2.5 and value("-1e-3") == -0.001 and value("1E3") == 1000.0
    assert isinstance(value("1E3"), float)
    assert value("true") is True and value("false") is False
    assert isinstance(parse_filter("metadata.k:*").tree.value, AnyValue)


def test_create_time_takes_rfc_3339_timestamps_as_milliseconds():
    def ms(ts: str) -> int:
        return parse_filter(f'create_time > "{ts}"').tree.value

    assert ms("1970-01-01T00:00:00Z") == 0
    assert ms("2026-12-01T00:00:00Z") == 1_796_083_200_000
    assert ms("2026-12-01T01:00:00.250+01:00") == 1_796_083_200_250
    assert ms("1969-12-31t23:59:59.999z") == -1
    assert ms("2026-12-01T00:00:00.123000Z") == 1_796_083_200_123  # zeros past the milliseconds are fine


@pytest.mark.parametrize("text, message", [
    ('create_time > "2026-12-01"', "is not an RFC 3339 timestamp"),
    ('create_time > "2026-02-30T00:00:00Z"', "is not a valid timestamp"),
    ('create_time > "2026-12-01T00:00:00.0001Z"', "at most 3 fraction digits"),
    ("create_time > 1796083200000", "compares with an RFC 3339 timestamp string"),
    ("id = 5", 'id compares with a "string", found a number'),
    ("uri = true", 'uri compares with a "string", found true/false'),
    ('id:"a"', '":" (has) applies to metadata fields'),
    ("metadata.k < true", "true and false compare only with = and !="),
    ("metadata.k = 99999999999999999999", "outside the 64-bit range"),
    ("metadata.k = 1e999", "out of range for a 64-bit float"),
    ('metadata."" = 1', "cannot be empty or contain"),
    ('metadata."a/b" = 1', 'cannot be empty or contain "/"'),
    ('metadata.k = "\\q"', 'unknown escape "\\q"'),
    ('metadata.k = "\\ud83d"', "lone high surrogate"),
    ('metadata.k = "\\u12"', "four hex digits"),
    ("metadata.k = *", 'expected a value (a "string", a number, true or false) after "="'),
])
def test_wrong_literals_for_a_field_are_errors_that_say_what_to_write(text, message):
    assert message in error(text)


# -- errors and limits ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ('metadata.k = "x', 'at position 14: unclosed string: no closing " for the " here'),
    ("metadata.k = 'x", "at position 14: unclosed string: no closing ' for the ' here"),
    ("metadata.k = )", 'at position 14: expected a value (a "string", a number, true or false) after "=", found ")"'),
    ("metadata.k =", 'at position 13: expected a value (a "string", a number, true or false) after "=", found the '
                     "end of the filter"),
    ("metadata.k = red", 'at position 14: expected a value (a "string", a number, true or false) after "=", found '
                         '"red" (put strings in quotes)'),
    ("metadata.k", 'at position 11: expected a comparison (=, !=, <, <=, >, >= or :) after "metadata.k", found the '
                   "end of the filter"),
    ("metadata.k == 1", 'at position 13: "==" is not an operator here'),
    ("foo = 1", 'at position 1: unknown field "foo": filter on id, uri, create_time or metadata.<key>'),
    ('id = "a" and uri = "b"', 'at position 10: unknown field "and": filter on id, uri, create_time or metadata.<key> '
                               "(AND, OR and NOT are written in upper case)"),
    ("metadata = 1", 'at position 1: "metadata" needs a key: write metadata.<key>'),
    ('id.x = "a"', 'at position 1: unknown field "id."'),
    ("metadata.k = 1 )", 'at position 16: found ")" with no "(" open before it'),
    ("(metadata.k = 1", 'at position 16: the "(" at position 1 is never closed'),
    ('metadata.k = "x"y', 'at position 17: expected whitespace, AND, OR or ")" after the value, found "y"'),
    ("metadata.k = 1 AND", "at position 19: expected a field (id, uri, create_time or metadata.<key>), found the end"),
    ("metadata.k = 1 OR OR metadata.k = 2", 'at position 19: expected a field (id, uri, create_time or '
                                            'metadata.<key>), found "OR"'),
    ("()", 'at position 2: expected a comparison inside "( )"'),
    ('metadata.k = 1 "x"', 'at position 16: expected a field (id, uri, create_time or metadata.<key>), found "\\"x\\""'),
])
def test_errors_name_the_position_and_what_was_expected(text, message):
    assert error(text).startswith("filter: " + message)


def test_a_filter_error_is_an_invalid_argument():
    assert issubclass(FilterError, InvalidArgument)


def test_a_filter_over_4_kb_is_refused():
    at_limit = 'metadata.k = "' + "x" * (MAX_FILTER_BYTES - 15) + '"'
    assert len(at_limit.encode()) == MAX_FILTER_BYTES and parse_filter(at_limit)
    over = 'metadata.k = "' + "é" * 2100 + '"'  # under 4096 characters, over 4096 bytes
    assert error(over) == f"filter: is {len(over.encode())} bytes as UTF-8; the limit is {MAX_FILTER_BYTES}"
    assert "bytes as UTF-8" in error("(" * 5000)


def test_nesting_deeper_than_16_is_refused():
    def nested(depth: int) -> str:
        return "(" * depth + "metadata.k = 1" + ")" * depth

    assert parse_filter(nested(MAX_FILTER_DEPTH))
    assert error(nested(MAX_FILTER_DEPTH + 1)) == "filter: at position 17: nested deeper than 16 levels of " \
                                                  "parentheses and NOT"
    assert "nested deeper than 16" in error("NOT " * 17 + "metadata.k = 1")
    assert "nested deeper than 16" in error("NOT (" * 8 + "-(metadata.k = 1" + ")" * 9)


def test_thousands_of_open_parentheses_are_a_clean_error_not_a_recursion_error():
    assert "at position 17: nested deeper than 16" in error("(" * 3000)
    assert "at position 17: nested deeper than 16" in error("-" * 4000)


def test_a_long_flat_filter_does_not_recurse():
    text = " OR ".join(f"metadata.k={i}" for i in range(250))[:MAX_FILTER_BYTES].rsplit(" OR ", 1)[0]  # 4 KB of OR
    f = parse_filter(text)
    n = len(f.tree.operands)
    assert n > 200 and f.matches(item({"k": n - 1})) and f.to_milvus().count(" or ") == n - 1


# -- digest -----------------------------------------------------------------------------------------
def test_the_digest_is_equal_for_filters_equal_up_to_whitespace():
    a = parse_filter('metadata.a = "x" AND (metadata.b > 1 OR -id = "z")')
    b = parse_filter('  metadata.a="x"   AND(metadata.b>1\tOR\n-id="z")  ')
    assert a.digest == b.digest and len(a.digest) == 16
    assert a.digest != parse_filter('metadata.a = "x" AND (metadata.b > 2 OR -id = "z")').digest
    assert a.digest != parse_filter('metadata.a = " x" AND (metadata.b > 1 OR -id = "z")').digest
    assert parse_filter("metadata.a = 1").digest != parse_filter('metadata.a = "1"').digest
    assert parse_filter('metadata.a = "x"').digest == parse_filter("metadata.a = 'x'").digest


def test_filters_equal_as_text_are_equal_values():
    assert Filter('metadata.a = "x"') == parse_filter('metadata.a = "x"')
    assert hash(Filter('metadata.a = "x"')) == hash(parse_filter('metadata.a = "x"'))


# -- Milvus expressions -----------------------------------------------------------------------------
@pytest.mark.parametrize("text, expression", [
    ('metadata.a.b = "x"', 'metadata["a"]["b"] == "x"'),
    ('metadata."content-type" = "x"', 'metadata["content-type"] == "x"'),
    ('metadata."we\\"ird]" = 1', 'metadata["we\\"ird]"] == 1'),
    ('metadata.k != "x"', '(metadata["k"] < "x" or metadata["k"] > "x")'),
    ("metadata.k != 2", '(metadata["k"] < 2 or metadata["k"] > 2)'),
    ("metadata.k != true", 'metadata["k"] == false'),
    ("NOT metadata.k != true", 'metadata["k"] != false'),
    ('NOT metadata.k = "x"', 'metadata["k"] != "x"'),
    ("metadata.k >= -2.5", 'metadata["k"] >= -2.5'),
    ("metadata.k : 2", 'json_contains(metadata["k"], 2.0)'),
    ('metadata.k : "x"', 'json_contains(metadata["k"], "x")'),
    ("metadata.k : false", 'json_contains(metadata["k"], false)'),
    ("metadata.k:*", '(exists metadata["k"])'),
    ("-metadata.k:*", 'not (exists metadata["k"])'),
    ("NOT metadata.k > 1", 'not (metadata["k"] > 1)'),
    ('NOT metadata.k : "x"', 'not (json_contains(metadata["k"], "x"))'),
    ('create_time > "1970-01-01T00:00:01Z"', "created_at_ms > 1000"),
    ('NOT create_time > "1970-01-01T00:00:01Z"', "created_at_ms <= 1000"),
    ('uri != "u"', 'uri != "u"'),
    ('NOT uri < "u"', 'uri >= "u"'),
    ('id = "X"', 'id == "X"'),
    ('metadata.a = 1 AND metadata.b = 2 OR metadata.c = 3',
     '(metadata["a"] == 1 and (metadata["b"] == 2 or metadata["c"] == 3))'),
    ('NOT (metadata.a = 1 OR (metadata.b = 2 -metadata.c = 3))',
     '(metadata["a"] != 1 and (metadata["b"] != 2 or metadata["c"] == 3))'),
])
def test_milvus_expressions(text, expression):
    assert parse_filter(text).to_milvus() == expression


def test_not_is_pushed_down_to_comparisons_so_milvus_lite_can_run_it():
    f = parse_filter('NOT (metadata.a = "x" AND (uri = "u" OR NOT create_time < "1970-01-01T00:00:00Z"))')
    assert f.to_milvus(lite=True) == '(metadata["a"] != "x" or (uri != "u" and created_at_ms < 0))'
    assert "not" not in f.to_milvus()


def test_string_literals_escape_backslash_and_quote_and_keep_every_other_character_raw():
    f = parse_filter('metadata.k = "a\\\\b\\"c\\td\\u0001😀\\u2028\\u007f"')
    assert f.to_milvus() == 'metadata["k"] == "a\\\\b\\"c\td\x01😀\u2028\x7f"'
    assert "\\u" not in f.to_milvus() and "\\U" not in f.to_milvus()


@pytest.mark.parametrize("hostile", ['" or id != "', '\\"', "]", ") or (1==1", "&& || json_contains( like %",
                                     '\\" or \\"', '"]["x', "'"])
def test_hostile_strings_stay_one_literal(hostile):
    quoted = '"' + hostile.replace("\\", "\\\\").replace('"', '\\"') + '"'
    f = parse_filter(f"metadata.k = {quoted}")
    assert f.tree.value == hostile
    body = f.to_milvus()[len('metadata["k"] == "'):-1]
    # Inside the literal every quote is escaped by an odd run of backslashes: none closes it.
    i = 0
    while i < len(body):
        if body[i] == "\\":
            i += 2
            continue
        assert body[i] != '"'
        i += 1


def test_a_line_break_is_written_so_that_only_a_milvus_server_runs_it():
    f = parse_filter('metadata.k = "a\\nb" OR uri != "x\\ry"')
    assert f.to_milvus() == '(not (metadata["k"] != "a\\nb") or not (uri == "x\\ry"))'
    assert parse_filter('metadata.k > "a\\nb"').to_milvus() == '((exists metadata["k"]) and metadata["k"] > "a\\nb")'
    with pytest.raises(FilterError, match=r"at position 1: metadata.k = \.\.\.: Milvus Lite cannot match a string with "
                                          r"a line break"):
        f.to_milvus(lite=True)


def test_for_milvus_lite_a_filter_that_needs_not_or_exists_is_an_error_naming_the_comparison():
    with pytest.raises(FilterError, match=r'at position 24: NOT of metadata.b > \.\.\. needs Milvus\'s "not"'):
        parse_filter('metadata.a = "x" AND -(metadata.b > 1)').to_milvus(lite=True)
    with pytest.raises(FilterError, match=r'at position 1: metadata."a b":\* needs Milvus\'s "exists"'):
        parse_filter('metadata."a b":*').to_milvus(lite=True)
    assert parse_filter("NOT metadata.k != true").to_milvus(lite=True) == 'metadata["k"] != false'


def test_multi_row_ids_become_the_range_of_the_items_row_keys():
    assert parse_filter('id = "X"').to_milvus(multi_row=True) == '(id >= "X~" and id < "X\x7f")'
    assert parse_filter('id != "X"').to_milvus(multi_row=True) == '(id < "X~" or id >= "X\x7f")'
    assert parse_filter('NOT id = "X"').to_milvus(multi_row=True) == '(id < "X~" or id >= "X\x7f")'
    assert parse_filter('NOT id != "X"').to_milvus(multi_row=True) == '(id >= "X~" and id < "X\x7f")'
    assert parse_filter('id = "X"').to_milvus() == 'id == "X"'
    assert parse_filter('id < "X"').to_milvus() == 'id < "X"'
    with pytest.raises(FilterError, match="at position 19: ordering comparisons on id are only supported in "
                                          "collections with one row per item"):
        parse_filter('metadata.k = 1 OR id >= "X"').to_milvus(multi_row=True)


# -- semantics --------------------------------------------------------------------------------------
def test_a_missing_key_matches_no_comparison_but_matches_its_negation():
    assert not matches('metadata.k = "x"')
    assert not matches('metadata.k != "x"')
    assert not matches('metadata.k < "x"')
    assert matches('NOT metadata.k = "x"')
    assert matches('NOT metadata.k != "x"')
    assert not matches('metadata.k != "x"', metadata={"k": "x"}) and matches('metadata.k != "x"', metadata={"k": "y"})


def test_null_matches_no_comparison_but_is_present():
    assert not matches('metadata.k = "x"', metadata={"k": None})
    assert not matches('metadata.k != "x"', metadata={"k": None})
    assert not matches("metadata.k >= 0", metadata={"k": None})
    assert matches("metadata.k:*", metadata={"k": None})
    assert not matches("metadata.k:*", metadata={"j": 1})


def test_a_value_of_another_type_matches_no_comparison():
    assert not matches('metadata.k = "2"', metadata={"k": 2})
    assert not matches('metadata.k != "2"', metadata={"k": 2})
    assert not matches("metadata.k > 1", metadata={"k": "5"})
    assert not matches('metadata.k = "x"', metadata={"k": ["x"]})
    assert not matches('metadata.k != "x"', metadata={"k": {"a": 1}})
    assert matches('NOT metadata.k = "x"', metadata={"k": ["x"]})


def test_a_bool_is_not_a_number():
    assert not matches("metadata.k = 1", metadata={"k": True})
    assert not matches("metadata.k = true", metadata={"k": 1})
    assert not matches("metadata.k >= 0", metadata={"k": False})
    assert not matches("metadata.k : 1", metadata={"k": [True]})
    assert not matches("metadata.k != 0", metadata={"k": True})
    assert matches("metadata.k != true", metadata={"k": False})
    assert not matches("metadata.k != true", metadata={"k": 0})


def test_numbers_compare_as_numbers():
    assert matches("metadata.k = 2", metadata={"k": 2.0})
    assert matches("metadata.k = 2.0", metadata={"k": 2})
    assert matches("metadata.k > 1.5", metadata={"k": 2})
    assert matches("metadata.k : 2", metadata={"k": [1, 2.0]})
    assert matches("metadata.k : 2.0", metadata={"k": [2]})
    assert matches("metadata.k = 0", metadata={"k": -0.0})
    # As Milvus does: exactly between integers, as doubles as soon as one is a float.
    assert not matches("metadata.k = 9007199254740993", metadata={"k": 9007199254740992})
    assert matches("metadata.k = 9007199254740993", metadata={"k": 9007199254740992.0})


def test_strings_compare_by_code_point():
    assert matches('metadata.k > "Z"', metadata={"k": "a"})
    assert matches('metadata.k > "\uffff"', metadata={"k": "😀"})  # UTF-16 order would say otherwise
    assert matches('metadata.k < "b"', metadata={"k": "a\U0010ffff"})
    assert matches('metadata.k >= ""', metadata={"k": ""})


def test_nested_keys_and_list_indexes_follow_the_json_path():
    meta = {"owner": {"team": "ml", "tags": ["a", {"x": 1}]}, "0": "zero", "a.b": 5}
    assert matches('metadata.owner.team = "ml"', metadata=meta)
    assert not matches('metadata.owner.team.x = "ml"', metadata=meta)
    assert matches("metadata.owner.tags.1.x = 1", metadata=meta)
    assert matches('metadata.owner.tags.0 = "a"', metadata=meta)
    assert not matches('metadata.owner.tags.00 = "a"', metadata=meta)
    assert matches('metadata.0 = "zero"', metadata=meta)
    assert matches('metadata."a.b" = 5', metadata=meta) and not matches("metadata.a.b = 5", metadata=meta)
    assert not matches('metadata.owner = "ml"', metadata=meta)


def test_has_finds_an_equal_element_of_a_list_and_nothing_else():
    assert matches('metadata.tags:"beach"', metadata={"tags": ["sea", "beach"]})
    assert not matches('metadata.tags:"beach"', metadata={"tags": "beach"})
    assert not matches('metadata.tags:"beach"', metadata={"tags": [["beach"]]})
    assert not matches('metadata.tags:"2"', metadata={"tags": [2]})
    assert matches("metadata.tags:true", metadata={"tags": [0, True]})
    assert matches("metadata.tags:*", metadata={"tags": []})
    assert not matches("metadata.tags:*", metadata={})


def test_id_uri_and_create_time_compare_the_items_own_values():
    assert matches('id = "it1"') and matches('id < "it2"') and not matches('id != "it1"')
    assert matches('uri >= "s3://"') and not matches('uri = "s3://b/2.jpg"')
    assert matches('create_time = "2027-01-15T08:00:00Z"', created_at_ms=1_800_000_000_000)
    assert matches('create_time > "2027-01-15T07:59:59.999Z"', created_at_ms=1_800_000_000_000)


def test_not_and_or_combine_two_valued():
    meta = {"a": 1}
    assert matches("metadata.a = 1 AND NOT metadata.b = 1", metadata=meta)
    assert matches("metadata.b = 1 OR metadata.a = 1", metadata=meta)
    assert not matches("-(metadata.b = 1 OR metadata.a = 1)", metadata=meta)
    assert matches("NOT (metadata.b > 1 AND metadata.a = 1)", metadata=meta)


def test_a_string_comparison_on_a_filter_key_reads_its_column_and_negates_without_not():
    from revsearch_server.filters import COLUMN_MARK, column_value

    f = parse_filter('NOT metadata.tenant < "t5" AND metadata.tenant != "x" AND metadata.n = 1')
    expr = f.to_milvus(lite=True, columns={"tenant": "fk_tenant"})
    assert f'(fk_tenant == "" or fk_tenant >= "{COLUMN_MARK}t5")' in expr
    assert f'(fk_tenant != "" and fk_tenant != "{COLUMN_MARK}x")' in expr
    assert 'metadata["n"] == 1' in expr and "not" not in expr
    # Other types, nested keys and ":" still read the JSON.
    assert "metadata[" in parse_filter("metadata.tenant = 3").to_milvus(columns={"tenant": "fk_tenant"})
    assert column_value({"tenant": "a"}, "tenant") == COLUMN_MARK + "a"
    assert column_value({"tenant": 3}, "tenant") == column_value({}, "tenant") == ""
