"""Filters (filters.py) on real Milvus: Milvus Lite 2.5 and an embedded Milvus 2.3 server answer
Filter.to_milvus() with exactly the items the Python evaluator matches, for ~300 seeded random
filters over ~300 seeded random items (strings including hostile ones, ints, floats, bools, lists,
nested dicts, nulls, missing keys) and for hostile literals, in collections with one row per item
and with several (rows "<id>~<k>"). Milvus Lite has no `not` and no `exists`: a filter that needs
them is refused by to_milvus(lite=True), and Lite itself rejects the plain expression (loud, never
a wrong answer)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from revsearch_server.filters import Filter, FilterError, FilterFields, column_value, parse_filter
from revsearch_server.index.milvus import filter_columns
from revsearch_testkit.chaos import start_embedded_milvus, stop_embedded_milvus

pytestmark = pytest.mark.integration

SEED = 160
N_ITEMS = 300
N_FILTERS = 300
LIMIT = 16384

HOSTILE = ['" or id != "', '\\"', "\\", "]", '"]', ") or (1==1", "&& ||", "json_contains(", 'x like "%"', "%", "_",
           "line\nbreak", "cr\rhere", "tab\there", "it's", '"', "nul\x00", "\u2028", 'exists metadata["s"]', "not (",
           "\\n", "😀", "\\U0001F600", "\\ud83d\\ude00", "a\x7fb", "\x01"]
HOSTILE_KEYS = ["content-type", 'we"ird', "a]b", "back\\slash", "a.b", "😀", "line\nkey", "~0", "sp ace", "or"]
STRINGS = ["", "a", "b", "alpha", "Alpha", "beta", "é", "zz", "a b", "x*", "2", "true", *HOSTILE]
INTS = [-3, -1, 0, 1, 2, 3, 7, 2 ** 53 + 1]
FLOATS = [-1.5, -0.0, 0.5, 2.0, 2.5, 3.0, 1e-3, 9007199254740992.0]
PATHS = [("s",), ("s",), ("n",), ("n",), ("f",), ("b",), ("m",), ("m",), ("l",), ("l",), ("l", "0"), ("d", "x"),
         ("d", "y", "z"), ("d",), ("content-type",), ("missing",), ("0",)] + [(k,) for k in HOSTILE_KEYS]
CORNERS = ["metadata.l : 2", "metadata.l : 3", "metadata.l : 2.0", "metadata.l : 1", "metadata.l : true", "metadata.l : 0",
           "metadata.n = 2", "metadata.n = 2.0", "metadata.n != 2", "metadata.n = 9007199254740993",
           "metadata.n > 9007199254740992", "metadata.n = 1", "metadata.n != true", "metadata.b = 1", "metadata.b != true",
           'metadata.m != "a"', "NOT metadata.m:*", "metadata.m.x:*", "metadata.m.x.y:*", "metadata.l.0:*",
           "metadata.l.1 = true", 'metadata.s >= ""', "metadata.f < 0 OR metadata.f >= 0", "-metadata.f = 0"]
OPS = ["=", "=", "!=", "!=", "<", "<=", ">", ">=", ":", ":", ":*"]


# -- data -------------------------------------------------------------------------------------------
def scalar(rng: random.Random):
    kind = rng.random()
    if kind < 0.4:
        return rng.choice(STRINGS)
    if kind < 0.6:
        return rng.choice(INTS)
    if kind < 0.8:
        return rng.choice(FLOATS)
    return rng.random() < 0.5


def any_value(rng: random.Random):
    kind = rng.random()
    if kind < 0.1:
        return None
    if kind < 0.2:
        return [scalar(rng) for _ in range(rng.randint(0, 3))]
    if kind < 0.3:
        return {"x": scalar(rng)}
    return scalar(rng)


def make_items(rng: random.Random) -> list[FilterFields]:
    items = []
    for i in range(N_ITEMS):
        # Prefixes of each other ("a1", "a12", "a123"): the multi-row id range must keep them apart.
        item_id = rng.choice(["a", "A", "it", "x.y", "k:", "z-", "_"]) + str(i)
        meta = {}

        def maybe() -> bool:
            return rng.random() < 0.7

        if maybe():
            meta["s"] = rng.choice(STRINGS)
        if maybe():
            meta["n"] = rng.choice(INTS + [2.0, 3.0])
        if maybe():
            meta["f"] = rng.choice(FLOATS)
        if maybe():
            meta["b"] = rng.random() < 0.5
        if maybe():
            meta["m"] = any_value(rng)
        if maybe():
            meta["l"] = [any_value(rng) for _ in range(rng.randint(0, 4))]
        if maybe():
            meta["d"] = {k: v for k, v in (("x", scalar(rng)), ("y", {"z": any_value(rng)})) if rng.random() < 0.8}
        if rng.random() < 0.3:
            meta["content-type"] = rng.choice(["image/jpeg", "image/png", ""])
        if rng.random() < 0.2:
            meta["0"] = scalar(rng)
        for key in HOSTILE_KEYS[1:]:
            if rng.random() < 0.08:
                meta[key] = rng.choice([1, "v", True])
        for key in list(meta):
            if rng.random() < 0.05:
                meta[key] = None
        uri = rng.choice([f"s3://bucket/{i}.jpg", f"https://example.com/ä/{i}", f"file:///{i}"])
        items.append(FilterFields(item_id, uri, 1_790_000_000_000 + rng.randrange(0, 50) * 86_400_000, meta))
    # Numbers and bools at the corners: an int filter on a float element, doubles past 2**53, a bool.
    for i, (k, v) in enumerate([("l", [2.0, True]), ("l", [1, 3.0]), ("n", 2 ** 53), ("n", 2.0), ("l", [[2], {"x": 2}]),
                                ("m", {"x": {"y": None}}), ("l", []), ("b", 1), ("n", True), ("l", [None, 0])]):
        items[200 + i].metadata[k] = v
    # Every hostile string stored somewhere: as a value, an element, a uri.
    for i, h in enumerate(HOSTILE):
        items[i].metadata["s"] = h
        items[i + 40].metadata["l"] = ["other", h]
        items[i + 80] = FilterFields(items[i + 80].id, h, items[i + 80].created_at_ms, items[i + 80].metadata)
    return items


def quote(s: str, rng: random.Random) -> str:
    """s as a filter string literal, in either quote style."""
    q = rng.choice(['"', "'"])
    out = []
    for c in s:
        if c in ("\\", q):
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif ord(c) < 0x20 and rng.random() < 0.5:
            out.append("\\u%04x" % ord(c))
        else:
            out.append(c)
    return q + "".join(out) + q


def literal(value, rng: random.Random) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return quote(value, rng)


def key(k: str, rng: random.Random) -> str:
    return k if k.replace("_", "a").isalnum() and k.isascii() else quote(k, rng)


def timestamp(ms: int, rng: random.Random) -> str:
    offset = timedelta(minutes=rng.choice([0, 60, -330]))
    when = datetime.fromtimestamp(ms // 1000, timezone(offset))
    text = when.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms % 1000:03d}" if ms % 1000 else "")
    return text + ("Z" if not offset else when.strftime("%z")[:3] + ":" + when.strftime("%z")[3:])


def comparison(rng: random.Random, items: list[FilterFields]) -> str:
    kind = rng.random()
    some = rng.choice(items)
    if kind < 0.08:
        value = rng.choice([some.id, some.id[:-1], some.id + "~0", some.id + "0", "zzz", ""])
        return f"id {rng.choice(['=', '=', '!=', '<', '>='])} {quote(value, rng)}"
    if kind < 0.14:
        value = rng.choice([some.uri, "s3://bucket/5", "https://", "line\nbreak"])
        return f"uri {rng.choice(['=', '!=', '<', '<=', '>'])} {quote(value, rng)}"
    if kind < 0.22:
        ms = some.created_at_ms + rng.choice([0, 0, -1, 1, 86_400_000])
        return f'create_time {rng.choice(["=", "!=", "<", "<=", ">", ">="])} "{timestamp(ms, rng)}"'
    keys = rng.choice(PATHS)
    path = ".".join(["metadata", *(key(k, rng) for k in keys)])
    op = rng.choice(OPS)
    if op == ":*":
        return f"{path}:*"
    value = stored_scalar(rng, items, keys) if rng.random() < 0.6 else None
    value = scalar(rng) if value is None else value
    if isinstance(value, bool) and op not in ("=", "!=", ":"):
        op = "="
    return f"{path} {op} {literal(value, rng)}"


def stored_scalar(rng: random.Random, items: list[FilterFields], keys: tuple[str, ...]):
    """A scalar some item stores at keys (or in the list there), so that comparisons hit; None if none."""
    for _ in range(20):
        value = rng.choice(items).metadata
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        if isinstance(value, list) and value:
            value = rng.choice(value)
        if isinstance(value, (str, int, float)):
            return value
    return None


def tree(rng: random.Random, items: list[FilterFields], depth: int) -> str:
    if depth == 0 or rng.random() < 0.3:
        return comparison(rng, items)
    kind = rng.choice(["AND", "OR", " ", "NOT", "-"])
    if kind in ("NOT", "-"):
        inner = tree(rng, items, depth - 1)
        return f"NOT ({inner})" if kind == "NOT" else f"-({inner})"
    parts = [f"({tree(rng, items, depth - 1)})" for _ in range(rng.randint(2, 3))]
    return (f" {kind} " if kind != " " else " ").join(parts)


def make_filters(rng: random.Random, items: list[FilterFields]) -> list[Filter]:
    texts = [tree(rng, items, rng.randint(0, 4)) for _ in range(N_FILTERS)]
    texts += CORNERS
    texts.append("(" * 15 + "NOT metadata.n = 1" + ")" * 15)  # as deep as allowed
    return [parse_filter(t) for t in texts]


# -- Milvus -----------------------------------------------------------------------------------------
@dataclass
class Loaded:
    name: str  # "milvus-lite 2.5" or "milvus 2.3 server"
    client: MilvusClient
    lite: bool


def create(client: MilvusClient, name: str, rows: list[dict], columns: list[str] = ()) -> None:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=80)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=4)
    schema.add_field("uri", DataType.VARCHAR, max_length=2048)
    schema.add_field("created_at_ms", DataType.INT64)
    schema.add_field("metadata", DataType.JSON)
    for column in columns:
        schema.add_field(column, DataType.VARCHAR, max_length=16385)
    index = client.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="IP")
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
    client.insert(name, rows)
    # Every row visible (a Strong read); the queries after it read Eventually: the data no longer
    # changes, and a Strong read costs a server ~200 ms of waiting each.
    counted = client.query(name, filter='id != ""', output_fields=["count(*)"], consistency_level="Strong")
    assert counted[0]["count(*)"] == len(rows)


def load(client: MilvusClient, items: list[FilterFields]) -> None:
    def row(key: str, it: FilterFields) -> dict:
        return dict(id=key, vector=[1.0, 0.0, 0.0, 0.0], uri=it.uri, created_at_ms=it.created_at_ms, metadata=it.metadata)

    create(client, "single", [row(it.id, it) for it in items])
    create(client, "multi", [row(f"{it.id}~{k}", it) for n, it in enumerate(items) for k in range(1 + n % 3)])
    create(client, "columns", [row(it.id, it) | {c: column_value(it.metadata, k) for k, c in COLUMNS.items()}
                               for it in items], columns=list(COLUMNS.values()))


# Filter columns (CreateCollection's filter_keys) of the "columns" collection: string, mixed and other keys.
COLUMNS = filter_columns(("s", "m", "n", "b", "missing"))


@pytest.fixture(scope="module")
def items() -> list[FilterFields]:
    return make_items(random.Random(SEED))


@pytest.fixture(scope="module")
def filters(items) -> list[Filter]:
    return make_filters(random.Random(SEED + 1), items)


@pytest.fixture(scope="module")
def lite_milvus(tmp_path_factory, items):
    client = MilvusClient(str(tmp_path_factory.mktemp("filters-lite") / "filters.db"))
    load(client, items)
    yield Loaded("milvus-lite 2.5", client, lite=True)
    client.close()


@pytest.fixture(scope="module")
def server_milvus(tmp_path_factory, items):
    try:
        proc, uri = start_embedded_milvus(tmp_path_factory.mktemp("filters-milvus-server"), timeout_s=120)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    client = MilvusClient(uri)
    try:
        load(client, items)
        yield Loaded("milvus 2.3 server", client, lite=False)
    finally:
        client.close()
        stop_embedded_milvus(proc)


@pytest.fixture(params=["lite", "server"])
def milvus(request) -> Loaded:
    return request.getfixturevalue(f"{request.param}_milvus")


def query(m: Loaded, collection: str, expression: str) -> set[str]:
    rows = m.client.query(collection, filter=expression, output_fields=["id"], limit=LIMIT,
                          consistency_level="Eventually")
    return {r["id"].split("~")[0] for r in rows}


def evaluator(f: Filter, items: list[FilterFields]) -> set[str]:
    return {it.id for it in items if f.matches(it)}


def check(m: Loaded, f: Filter, items: list[FilterFields], multi_row: bool) -> str:
    """'same' when Milvus answers f as the evaluator does, 'refused' when the filter cannot run here
    (and Milvus Lite refuses the expression too); fails otherwise."""
    collection = "multi" if multi_row else "single"
    try:
        expression = f.to_milvus(multi_row)
    except FilterError as e:
        assert multi_row and "ordering comparisons on id are only supported" in str(e), f"{f.text!r}: {e}"
        return "refused"
    if m.lite:
        try:
            assert f.to_milvus(multi_row, lite=True) == expression
        except FilterError:
            with pytest.raises(MilvusException):  # Lite rejects the expression: loud, never a wrong answer
                query(m, collection, expression)
            return "refused"
    got = query(m, collection, expression)
    want = evaluator(f, items)
    assert got == want, (f"{m.name}, {collection}: {f.text!r} -> {expression!r}: Milvus only {sorted(got - want)[:5]}, "
                         f"evaluator only {sorted(want - got)[:5]}")
    return "same"


# -- tests ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("multi_row", [False, True], ids=["one row per item", "several rows per item"])
def test_milvus_answers_every_generated_filter_as_the_python_evaluator_does(milvus, items, filters, multi_row):
    outcomes = [check(milvus, f, items, multi_row) for f in filters]
    same = outcomes.count("same")
    # The evaluator's answers are not trivial: most filters match some items and miss others.
    varied = sum(0 < len(evaluator(f, items)) < len(items) for f in filters)
    assert varied > len(filters) * 0.45
    if milvus.lite:  # filters without NOT over ranges, `:` or `:*` and without line breaks
        assert same > len(filters) * 0.4, f"only {same} of {len(filters)} filters ran on Milvus Lite"
    else:
        assert same == len(filters) - outcomes.count("refused")
        assert same > len(filters) * (0.85 if multi_row else 0.99)


def hostile_filters(items: list[FilterFields]) -> list[tuple[Filter, set[str]]]:
    """(filter, the ids it must match) for hostile strings as values, list elements, uris, ids and keys."""
    rng = random.Random(SEED + 2)
    cases = []
    for h in HOSTILE:
        q = quote(h, rng)
        cases += [
            (f"metadata.s = {q}", {it.id for it in items if it.metadata.get("s") == h}),
            (f"NOT metadata.s = {q}", {it.id for it in items if it.metadata.get("s") != h}),
            (f"metadata.l : {q}", {it.id for it in items
                                   if isinstance(it.metadata.get("l"), list) and h in it.metadata["l"]}),
            (f"uri = {q}", {it.id for it in items if it.uri == h}),
            (f"id = {q} OR id != {q}", {it.id for it in items}),
            (f"metadata.s >= {q} metadata.s <= {q}", {it.id for it in items if it.metadata.get("s") == h}),
        ]
    for k in HOSTILE_KEYS:
        cases.append((f"metadata.{quote(k, rng)} = 1",
                      {it.id for it in items if it.metadata.get(k) == 1 and not isinstance(it.metadata[k], bool)}))
    return [(parse_filter(text), want) for text, want in cases]


@pytest.mark.parametrize("multi_row", [False, True], ids=["one row per item", "several rows per item"])
def test_hostile_literals_match_only_the_text_they_are(milvus, items, multi_row):
    cases = hostile_filters(items)
    ran = 0
    for f, want in cases:
        assert evaluator(f, items) == want, f.text
        if f.text.startswith("metadata.s =") or f.text.startswith("uri ="):
            assert want, f"{f.text!r} should match the item that stores it"
        ran += check(milvus, f, items, multi_row) == "same"
    refused = len(cases) - ran
    # Only line breaks are out of Milvus Lite's reach here (its parser reads \n as n).
    assert refused == (sum("\n" in h or "\r" in h for h in HOSTILE) * 6 if milvus.lite else 0)


def test_filter_columns_answer_every_generated_filter_as_the_json_does_and_let_lite_negate(milvus, items, filters):
    """A collection's filter keys (string values in columns of their own) change how Milvus evaluates a
    filter, never what it matches; on Milvus Lite they make NOT of a string comparison possible."""
    ran = refused = 0
    for f in filters:
        try:
            expression = f.to_milvus(False, lite=milvus.lite, columns=COLUMNS)
        except FilterError:
            refused += 1
            continue
        got, want = query(milvus, "columns", expression), evaluator(f, items)
        assert got == want, (f"{milvus.name}: {f.text!r} -> {expression!r}: Milvus only {sorted(got - want)[:5]}, "
                             f"evaluator only {sorted(want - got)[:5]}")
        ran += 1
    without = sum(1 for f in filters if _runs_on(f, milvus.lite))
    assert ran >= without and (not milvus.lite or ran > without), (ran, without)


def _runs_on(f: Filter, lite: bool) -> bool:
    try:
        f.to_milvus(False, lite=lite)
        return True
    except FilterError:
        return False
