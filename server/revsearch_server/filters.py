"""Filters on stored items in Google's AIP-160 filter grammar (a subset): parsed once into a typed
tree, translated to a Milvus boolean expression, and evaluated in Python with the same meaning.

An item has four filterable fields: `id` (string), `uri` (string), `create_time` (stored as
`created_at_ms`, INT64 milliseconds since the epoch) and `metadata` (a JSON object, Milvus JSON
column `metadata`, any nesting; values str / number / bool / list / dict / null).

Grammar
-------
    filter      = expression
    expression  = sequence { "AND" sequence }
    sequence    = factor { factor }                  juxtaposition is an implicit AND
    factor      = term { "OR" term }                 OR binds tighter than AND (as AIP-160 says)
    term        = [ "NOT" | "-" ] simple
    simple      = comparison | "(" expression ")"
    comparison  = field op value | field ":" value | field ":" "*"
    op          = "=" | "!=" | "<" | "<=" | ">" | ">="
    field       = "id" | "uri" | "create_time" | "metadata" "." key { "." key }
    key         = [A-Za-z0-9_]+ | a quoted string    metadata.owner.team, metadata."content-type"
    value       = a string in "double" or 'single' quotes (escapes \\" \\' \\\\ \\n \\r \\t \\uXXXX)
                | a number (-12, 2.5, 1e-3) | true | false

AND, OR and NOT are keywords in upper case only. So `a = 1 b = 2` is `a = 1 AND b = 2`, and
`a = 1 AND b = 2 OR c = 3` is `a = 1 AND (b = 2 OR c = 3)`. Examples:

    metadata.color = "red" AND create_time > "2026-12-01T00:00:00Z"
    metadata.tags:"beach" -metadata.private = true
    NOT (metadata.owner.team = "ml" OR uri < "s3://b") metadata."content-type":*

A `*` inside a string is the character itself (no wildcards). `create_time` takes an RFC 3339
timestamp string (an offset or Z; at most millisecond precision, like the stored value); `id` and
`uri` take strings; `:` applies to metadata only. A filter is at most MAX_FILTER_BYTES of UTF-8
and nests parentheses and NOT at most MAX_FILTER_DEPTH deep: the parser counts that depth as it
goes, so a hostile `((((...` fails cleanly long before Python's recursion limit.

Semantics (two-valued; the Python evaluator and the Milvus translation agree, and
tests/integration/test_filters_on_milvus.py holds both to it on Milvus Lite and a Milvus server)
-----------------------------------------------------------------------------------------------
* A comparison is false when the item lacks the key, when the value is null, or when the stored
  value's type is not the literal's (string, number and bool are three types: true is not 1).
  So `metadata.k != "x"` does not match an item without k, but `NOT metadata.k = "x"` does.
* Numbers compare as numbers, the way Milvus does: exactly when both are integers, as doubles
  when either is a float (int 2 equals float 2.0). `:` compares numbers as doubles (Milvus's
  json_contains with a float literal). Strings compare by code point (= UTF-8 byte order).
  Booleans take only = and !=.
* `k : v` is true when k is a list with an element equal to v (same type rules); on anything
  else it is false. `k:*` is true when the key is present, whatever its value (null included).
* A key segment names a dict key; on a list a decimal segment (0, 1, ... without leading zeros)
  is an index, because Milvus resolves JSON paths as JSON pointers. Keys that are empty or
  contain "/" are refused: Milvus cannot address them.
* `id` is the item's id; in collections with several rows per item see multi_row below.

Milvus translation, and why
---------------------------
* `metadata.a.b` becomes `metadata["a"]["b"]`; `create_time` becomes `created_at_ms` with the
  integer milliseconds; `AND` / `OR` become `and` / `or` with parentheses around every group, so
  precedence never depends on Milvus's.
* NOT is pushed down to the comparisons (De Morgan) instead of becoming `not (...)`, because
  Milvus Lite 2.5 has no `not` at all (any query with it fails, milvus-io/milvus#45884) and no
  `exists`; Milvus 2.3 and later servers have both. Each comparison and its negation are written
  with operators both accept, where the semantics above allow it:
      k = v       ->  k == v              NOT:  k != v   (Milvus's != is true on missing keys,
                                                             nulls and other types: the negation)
      k != v      ->  (k < v or k > v)    Milvus's != would also match items without k; the two
                                          ordering comparisons only match values of v's type
      k != true   ->  k == false          (and NOT: k != false)
      k < v       ->  k < v               (ordering on JSON is false for other types and missing)
      k : v       ->  json_contains(k, v) (numbers as float literals: json_contains(k, 2) misses
                                           [2.0], json_contains(k, 2.0) finds [2] and [2.0])
  Negating an ordering, a `!=` on strings or numbers, or a `:` has no form without `not`, and
  `k:*` has none without `exists`: those become `not (...)` and `(exists k)` (in parentheses:
  Milvus 2.3 parses `exists a and b` as `exists (a and b)`). A Milvus server answers them
  exactly; Milvus Lite rejects the query, which is loud rather than wrong. to_milvus(lite=True)
  raises FilterError for them instead, naming the comparison.
* String literals: Milvus's parser unquotes like Go's strconv.Unquote on a server, but Milvus
  Lite only understands \\\\, \\" and \\' (it reads "\\n" as "n" and "\\x41" as "x41"). Both take
  every other character raw, control characters and non-BMP ones such as emoji included, except
  a raw line feed or carriage return, which neither parses. So a literal is written in double
  quotes with \\\\ and \\" escaped and everything else raw (json.dumps's \\ud83d\\ude00 surrogate
  pairs would not survive Go's Unquote); a line break is written \\n / \\r, which only a server
  reads right: a comparison with one is emitted so that Lite rejects it (as `not (...)` of its
  negation, or behind `(exists k) and`), never so that it matches "anb" on Lite.
* `id` with multi_row=True: the stored rows are keyed `<item id>~<k>` and item ids never contain
  "~" (0x7E, above every character an id may use), so the rows of item X are exactly the keys in
  ["X~", "X\\x7f"): `id = "X"` becomes `(id >= "X~" and id < "X<DEL>")` and its negation
  `(id < "X~" or id >= "X<DEL>")`, DEL written raw (Lite would read "\\x7f" as "x7f"). Ordering
  comparisons on id have no such translation there: FilterError.
* Keys are written like values; both Milvus versions read \\n and \\r right inside a key's [""].
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Union

from .errors import InvalidArgument
from .rows import rows_range

MAX_FILTER_BYTES = 4096  # UTF-8 bytes
MAX_FILTER_DEPTH = 16  # nesting of parentheses / NOT

FIELDS_HINT = "id, uri, create_time or metadata.<key>"
VALUE_HINT = 'a value (a "string", a number, true or false)'
INT64 = (-(2 ** 63), 2 ** 63 - 1)


class FilterError(InvalidArgument):
    """A filter that does not parse, is over a limit, or cannot be run where it was asked to."""


@dataclass(frozen=True)
class FilterFields:
    """What the Python evaluator sees of an item."""
    id: str  # the ITEM id (never a row key)
    uri: str
    created_at_ms: int
    metadata: dict


# -- the tree ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldRef:
    name: str  # "id", "uri", "create_time" or "metadata"
    path: tuple[str, ...] = ()  # the keys below metadata

    def __str__(self) -> str:
        keys = (k if re.fullmatch(r"[A-Za-z0-9_]+", k) else json.dumps(k, ensure_ascii=False) for k in self.path)
        return ".".join((self.name, *keys))


@dataclass(frozen=True)
class AnyValue:
    """The `*` of `field:*`: the key is present."""


Value = Union[str, int, float, bool, AnyValue]  # create_time's value is its milliseconds (an int)


@dataclass(frozen=True)
class Comparison:
    field: FieldRef
    op: str  # "=", "!=", "<", "<=", ">", ">=" or ":"
    value: Value
    position: int = field(default=0, compare=False)  # 1-based, where the field starts


@dataclass(frozen=True)
class Not:
    operand: "Node"


@dataclass(frozen=True)
class And:
    operands: tuple["Node", ...]


@dataclass(frozen=True)
class Or:
    operands: tuple["Node", ...]


Node = Union[Comparison, Not, And, Or]


# -- parsing ----------------------------------------------------------------------------------------
_WS = " \t\n\r\f\v"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY = re.compile(r"[A-Za-z0-9_]+")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_OPS = ("<=", ">=", "!=", "=", "<", ">", ":")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class _Parser:
    """Recursive descent over the characters, one method per grammar rule. Only "(" and NOT
    recurse, and `depth` stops them at MAX_FILTER_DEPTH: the Python stack stays shallow."""

    def __init__(self, text: str):
        self.s = text
        self.i = 0
        self.depth = 0

    # -- helpers -----------------------------------------------------------------------------------
    def error(self, message: str, at: int | None = None) -> FilterError:
        return FilterError(f"filter: at position {(self.i if at is None else at) + 1}: {message}")

    def found(self, at: int | None = None) -> str:
        """What is at `at`, for 'expected X, found Y'."""
        at = self.i if at is None else at
        if at >= len(self.s):
            return "the end of the filter"
        if self.s[at] in "()=<>!:":
            return json.dumps(self.s[at])
        word = re.match(r"[^\s()]{1,20}", self.s[at:])
        return json.dumps(word.group() if word else self.s[at], ensure_ascii=False)

    def skip_ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in _WS:
            self.i += 1

    def keyword(self, word: str) -> bool:
        """Whether the keyword is next (not the start of a longer name); consumes it if so."""
        self.skip_ws()
        end = self.i + len(word)
        follows = self.s[end] if end < len(self.s) else " "
        if self.s.startswith(word, self.i) and not (follows.isalnum() or follows == "_"):
            self.i = end
            return True
        return False

    def deeper(self, at: int) -> None:
        self.depth += 1
        if self.depth > MAX_FILTER_DEPTH:
            raise self.error(f"nested deeper than {MAX_FILTER_DEPTH} levels of parentheses and NOT", at)

    # -- rules -------------------------------------------------------------------------------------
    def parse(self) -> Node:
        node = self.expression()
        self.skip_ws()
        if self.i < len(self.s):
            if self.s[self.i] == ")":
                raise self.error('found ")" with no "(" open before it')
            raise self.error(f'expected AND, OR or another comparison, found {self.found()}')
        return node

    def expression(self) -> Node:
        parts = [self.sequence()]
        while self.keyword("AND"):
            parts.append(self.sequence())
        return _join(And, parts)

    def sequence(self) -> Node:
        parts = [self.factor()]
        while True:
            self.skip_ws()
            save = self.i
            if self.i >= len(self.s) or self.s[self.i] == ")" or self.keyword("AND") or self.keyword("OR"):
                self.i = save
                return _join(And, parts)
            parts.append(self.factor())

    def factor(self) -> Node:
        parts = [self.term()]
        while self.keyword("OR"):
            parts.append(self.term())
        return _join(Or, parts)

    def term(self) -> Node:
        self.skip_ws()
        start = self.i
        negated = self.keyword("NOT")
        if not negated and self.s.startswith("-", self.i):  # AIP-160's "-" prefix: NOT
            self.i += 1
            negated = True
        if not negated:
            return self.term_body()
        self.deeper(start)
        operand = self.term()  # NOT NOT a: each counts towards the depth
        self.depth -= 1
        return Not(operand)

    def term_body(self) -> Node:
        self.skip_ws()
        if self.i < len(self.s) and self.s[self.i] == "(":
            self.deeper(self.i)
            opened = self.i
            self.i += 1
            self.skip_ws()
            if self.i < len(self.s) and self.s[self.i] == ")":
                raise self.error('expected a comparison inside "( )", found ")"')
            node = self.expression()
            self.skip_ws()
            if self.i >= len(self.s) or self.s[self.i] != ")":
                if self.i >= len(self.s):
                    raise self.error(f'the "(" at position {opened + 1} is never closed: expected ")", '
                                     'found the end of the filter')
                raise self.error(f'expected ")" or AND/OR, found {self.found()}')
            self.i += 1
            self.depth -= 1
            return node
        return self.comparison()

    def comparison(self) -> Comparison:
        start = self.i
        ref = self.field_ref()
        self.skip_ws()
        op_at = self.i
        op = next((o for o in _OPS if self.s.startswith(o, self.i)), None)
        if op is None:
            raise self.error(f'expected a comparison (=, !=, <, <=, >, >= or :) after "{ref}", found {self.found()}')
        self.i += len(op)
        self.skip_ws()
        value_at = self.i
        if op == "=" and self.s.startswith("=", self.i):
            raise self.error('"==" is not an operator here: write a single "="')
        value = self.value(op)
        self.end_of_value()
        return Comparison(ref, op, self.check(ref, op, value, op_at, value_at), start + 1)

    def field_ref(self) -> FieldRef:
        start = self.i
        m = _IDENT.match(self.s, self.i)
        if not m:
            raise self.error(f"expected a field ({FIELDS_HINT}), found {self.found()}")
        name = m.group()
        if name in ("AND", "OR"):
            raise self.error(f"expected a field ({FIELDS_HINT}), found {self.found()}")
        self.i = m.end()
        dotted = self.i < len(self.s) and self.s[self.i] == "."
        if name in ("id", "uri", "create_time") and not dotted:
            return FieldRef(name)
        if name != "metadata":
            hint = " (AND, OR and NOT are written in upper case)" if name.upper() in ("AND", "OR", "NOT") else ""
            raise self.error(f'unknown field "{name}{"." if dotted else ""}": filter on {FIELDS_HINT}{hint}', start)
        if not dotted:
            raise self.error(f'"metadata" needs a key: write metadata.<key>, e.g. metadata.color '
                             f"(fields: {FIELDS_HINT})", start)
        path = []
        while self.i < len(self.s) and self.s[self.i] == ".":
            self.i += 1
            key_at = self.i
            if self.i < len(self.s) and self.s[self.i] in "\"'":
                key = self.string()
            else:
                m = _KEY.match(self.s, self.i)
                if not m:
                    raise self.error(f'expected a key after "." (letters, digits and _, or a "quoted" key), found '
                                     f"{self.found()}")
                key = m.group()
                self.i = m.end()
            if key == "" or "/" in key:
                raise self.error('a metadata key cannot be empty or contain "/": Milvus cannot address it', key_at)
            path.append(key)
        return FieldRef("metadata", tuple(path))

    def value(self, op: str) -> Value:
        c = self.s[self.i] if self.i < len(self.s) else ""
        if c in ("\"", "'"):
            return self.string()
        if op == ":" and c == "*":
            self.i += 1
            return AnyValue()
        m = _NUMBER.match(self.s, self.i)
        if m:
            self.i = m.end()
            return self.number(m)
        m = _IDENT.match(self.s, self.i)
        if m and m.group() in ("true", "false"):
            self.i = m.end()
            return m.group() == "true"
        expected = VALUE_HINT + (" or *" if op == ":" else "")
        hint = " (put strings in quotes)" if m and m.group() not in ("AND", "OR", "NOT") else ""
        raise self.error(f'expected {expected} after "{op}", found {self.found()}{hint}')

    def number(self, m: re.Match) -> int | float:
        text = m.group()
        if m.group(1) is None and m.group(2) is None:
            n = int(text)
            if not INT64[0] <= n <= INT64[1]:
                raise self.error(f"integer {text} is outside the 64-bit range: write it as a float (e.g. 1e19)",
                                 m.start())
            return n
        x = float(text)
        if not math.isfinite(x):
            raise self.error(f"number {text} is out of range for a 64-bit float", m.start())
        return x

    def string(self) -> str:
        """A quoted string at self.i, escapes resolved; self.i moves past its closing quote."""
        quote, start = self.s[self.i], self.i
        out = []
        i = self.i + 1
        while True:
            if i >= len(self.s):
                raise self.error(f"unclosed string: no closing {quote} for the {quote} here", start)
            c = self.s[i]
            if c == quote:
                break
            if c == "\\":
                i, c = self.escape(i)
            elif 0xD800 <= ord(c) <= 0xDFFF:
                raise self.error("a lone UTF-16 surrogate is not a character", i)
            out.append(c)
            i += 1
        self.i = i + 1
        return "".join(out)

    def escape(self, i: int) -> tuple[int, str]:
        """The escape at s[i] == "\\": (index of its last character, the character it stands for)."""
        nxt = self.s[i + 1] if i + 1 < len(self.s) else ""
        if nxt in _ESCAPES:
            return i + 1, _ESCAPES[nxt]
        if nxt == "u":
            code = self.hex4(i)
            if 0xDC00 <= code <= 0xDFFF:
                raise self.error("a lone low surrogate \\u%04x: write the character itself, or a \\uD8xx\\uDCxx "
                                 "pair" % code, i)
            if 0xD800 <= code <= 0xDBFF:  # a UTF-16 pair stands for one character
                low = self.hex4(i + 6) if self.s.startswith("\\u", i + 6) else -1
                if not 0xDC00 <= low <= 0xDFFF:
                    raise self.error("a lone high surrogate \\u%04x: write the character itself, or a \\uD8xx\\uDCxx "
                                     "pair" % code, i)
                return i + 11, chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))
            return i + 5, chr(code)
        raise self.error(f'unknown escape "\\{nxt}" in a string: use \\" \\\' \\\\ \\n \\r \\t or \\uXXXX', i)

    def hex4(self, i: int) -> int:
        digits = self.s[i + 2:i + 6]
        if not re.fullmatch(r"[0-9A-Fa-f]{4}", digits):
            raise self.error("\\u needs four hex digits, e.g. \\u00e9", i)
        return int(digits, 16)

    def end_of_value(self) -> None:
        """AIP-160 separates terms by whitespace: a value runs into nothing but space or ")"."""
        if self.i < len(self.s) and self.s[self.i] not in _WS and self.s[self.i] != ")":
            raise self.error(f'expected whitespace, AND, OR or ")" after the value, found {self.found()}')

    def check(self, ref: FieldRef, op: str, value: Value, op_at: int, value_at: int) -> Value:
        """The value's type against the field and operator; create_time's value as milliseconds."""
        if op == ":" and ref.name != "metadata":
            raise self.error(f'":" (has) applies to metadata fields; compare {ref.name} with = or !=', op_at)
        if isinstance(value, bool) and op not in ("=", "!=", ":"):
            raise self.error(f'true and false compare only with = and != (or :), not "{op}"', op_at)
        if ref.name in ("id", "uri") and not isinstance(value, str):
            raise self.error(f'{ref.name} compares with a "string", found {_kind(value)}', value_at)
        if ref.name == "create_time":
            if not isinstance(value, str):
                raise self.error(f'create_time compares with an RFC 3339 timestamp string such as '
                                 f'"2026-12-01T00:00:00Z", found {_kind(value)}', value_at)
            return self.timestamp_ms(value, value_at)
        return value

    def timestamp_ms(self, text: str, at: int) -> int:
        m = _RFC3339.fullmatch(text)
        example = 'an RFC 3339 timestamp such as "2026-12-01T00:00:00Z" or "2026-12-01T09:30:00.250+02:00"'
        if not m:
            raise self.error(f"create_time: {json.dumps(text, ensure_ascii=False)} is not {example}", at)
        year, month, day, hour, minute, second, fraction, offset = m.groups()
        fraction = fraction or ""
        if fraction[3:].strip("0"):
            raise self.error("create_time is stored in milliseconds: give at most 3 fraction digits", at)
        try:
            tz = timezone.utc if offset in "Zz" else timezone(
                (1 if offset[0] == "+" else -1) * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
            when = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz)
        except ValueError as e:  # February 30th, second 60, offset +24:00, ...
            raise self.error(f"create_time: {json.dumps(text)} is not a valid timestamp ({e})", at) from None
        return (when - _EPOCH) // timedelta(milliseconds=1) + int((fraction + "000")[:3])


def _join(kind, parts: list[Node]) -> Node:
    """One node for parts joined by AND or OR, flattening nested joins of the same kind."""
    if len(parts) == 1:
        return parts[0]
    flat: list[Node] = []
    for p in parts:
        flat.extend(p.operands if isinstance(p, kind) else (p,))
    return kind(tuple(flat))


def _kind(value: Value) -> str:
    if isinstance(value, bool):
        return "true/false"
    return "a number" if isinstance(value, (int, float)) else "*"


def _parse(text: str) -> Node:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_FILTER_BYTES:
        raise FilterError(f"filter: is {size} bytes as UTF-8; the limit is {MAX_FILTER_BYTES}")
    if not text.strip(_WS):
        raise FilterError("filter: is empty")
    return _Parser(text).parse()


# -- the filter -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filter:
    text: str  # the filter as given
    tree: Node | None = field(default=None, repr=False, compare=False)  # parsed from text when not given

    def __post_init__(self):
        if self.tree is None:
            object.__setattr__(self, "tree", _parse(self.text))

    def to_milvus(self, multi_row: bool = False, *, lite: bool = False, columns: dict[str, str] | None = None) -> str:
        """The Milvus boolean expression. multi_row: rows are keyed "<item id>~<k>". lite: for
        Milvus Lite, which lacks `not` and `exists`: FilterError for a filter that needs them
        (the expression is the same either way; Lite would reject it)."""
        return _Translation(multi_row, lite, columns or {}).node(self.tree, True)

    def matches(self, item: FilterFields) -> bool:
        return _evaluate(self.tree, item)

    @property
    def digest(self) -> str:
        """Short sha256 of the parsed tree: equal for filters that differ only in whitespace (or
        quote style, or AND versus juxtaposition)."""
        canonical = json.dumps(_canonical(self.tree), ensure_ascii=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def parse_filter(text: str | None) -> Filter | None:
    """None for None, "" or whitespace only; raises FilterError otherwise when it does not parse or is
    over the limits."""
    if text is None or not text.strip(_WS):
        return None
    return Filter(text)


def _canonical(node: Node):
    if isinstance(node, Comparison):
        v = node.value
        value = (["*"] if isinstance(v, AnyValue) else ["b", v] if isinstance(v, bool)
                 else ["i", v] if isinstance(v, int) else ["f", repr(v)] if isinstance(v, float) else ["s", v])
        return ["cmp", node.field.name, list(node.field.path), node.op, value]
    if isinstance(node, Not):
        return ["not", _canonical(node.operand)]
    return ["and" if isinstance(node, And) else "or", [_canonical(c) for c in node.operands]]


# -- Python evaluation ------------------------------------------------------------------------------
_MISSING = object()


def _evaluate(node: Node, item: FilterFields) -> bool:
    if isinstance(node, Not):
        return not _evaluate(node.operand, item)
    if isinstance(node, And):
        return all(_evaluate(c, item) for c in node.operands)
    if isinstance(node, Or):
        return any(_evaluate(c, item) for c in node.operands)
    if node.field.name == "metadata":
        return _json_compare(_resolve(item.metadata, node.field.path), node.op, node.value)
    stored = {"id": item.id, "uri": item.uri, "create_time": item.created_at_ms}[node.field.name]
    return _compare(stored, node.op, node.value)


def _resolve(metadata, path: tuple[str, ...]):
    """The value at path, as Milvus finds it (a JSON pointer: a decimal segment indexes a list)."""
    value = metadata if isinstance(metadata, dict) else {}
    for key in path:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and re.fullmatch(r"0|[1-9][0-9]*", key) and int(key) < len(value):
            value = value[int(key)]
        else:
            return _MISSING
    return value


def _type(x) -> str | None:
    if isinstance(x, bool):  # before int: a bool is not a number
        return "bool"
    if isinstance(x, (int, float)):
        return "number"
    return "string" if isinstance(x, str) else None


def _as_numbers(a, b, as_float: bool = False):
    """Milvus compares two integers exactly and anything with a float as doubles."""
    if as_float or isinstance(a, float) or isinstance(b, float):
        return _float(a), _float(b)
    return a, b


def _float(x) -> float:
    try:
        return float(x)
    except OverflowError:  # an integer beyond the doubles
        return math.copysign(math.inf, x)


def _compare(stored, op: str, value, as_float: bool = False) -> bool:
    """stored OP value for two values of the same type (the caller checked)."""
    if _type(stored) == "number":
        stored, value = _as_numbers(stored, value, as_float)
    if op == "=" or op == ":":
        return stored == value
    if op == "!=":
        return stored != value
    return {"<": stored < value, "<=": stored <= value, ">": stored > value, ">=": stored >= value}[op]


def _json_compare(stored, op: str, value) -> bool:
    if isinstance(value, AnyValue):
        return stored is not _MISSING
    if op == ":":
        return isinstance(stored, list) and any(
            _type(e) == _type(value) and _compare(e, ":", value, as_float=True) for e in stored)
    return _type(stored) is not None and _type(stored) == _type(value) and _compare(stored, op, value)


# -- Milvus translation -----------------------------------------------------------------------------
_MILVUS_OP = {"=": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_NEGATED_OP = {"=": "!=", "!=": "=", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}
_LINE_BREAKS = re.compile("[\n\r]")
# Filter columns (a collection's declared filter keys, index/milvus.py): a top-level metadata key's value
# is also stored in a VARCHAR column of its own, COLUMN_MARK + the value when it is a string, "" otherwise
# (missing, null, another type), so comparisons with a string skip Milvus's per-row JSON evaluation (78 ns
# a row on a 2.3 server: benchmarks/results/json_filter_cost.md) and negate without `not` (Milvus Lite).
COLUMN_MARK = "\x01"


def column_value(metadata: dict, key: str) -> str:
    """What a filter column holds for an item's metadata."""
    value = metadata.get(key) if isinstance(metadata, dict) else None
    return COLUMN_MARK + value if isinstance(value, str) else ""


def milvus_string(s: str) -> str:
    """A string literal for Milvus's expression parser, read the same by Milvus Lite 2.5 and by
    servers (Go's strconv.Unquote): see the module docstring. Line breaks become \\n and \\r,
    which only a server reads right (the translation keeps them from Lite)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


def _literal(value, as_float: bool = False) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(float(value)) if as_float or isinstance(value, float) else str(value)
    return milvus_string(value)


@dataclass(frozen=True)
class _Forms:
    """A comparison in Milvus: its positive and negated forms written without `not` / `exists`
    (None where there is none), and how to write them with those where needed."""
    positive: str | None
    negated: str | None
    column: str  # the JSON path (or column) for an `exists` guard
    line_break: bool  # a string literal with \n or \r: Lite reads those wrong


class _Translation:
    def __init__(self, multi_row: bool, lite: bool, columns: dict[str, str]):
        self.multi_row = multi_row
        self.lite = lite
        self.columns = columns  # metadata key -> its filter column

    def node(self, node: Node, positive: bool) -> str:
        """node (or its negation) in negation normal form: NOT only ever reaches comparisons."""
        while isinstance(node, Not):
            node, positive = node.operand, not positive
        if isinstance(node, Comparison):
            return self.comparison(node, positive)
        conjunction = isinstance(node, And) == positive  # De Morgan
        return "(" + (" and " if conjunction else " or ").join(self.node(c, positive) for c in node.operands) + ")"

    def comparison(self, c: Comparison, positive: bool) -> str:
        f = self.forms(c)
        want, other = (f.positive, f.negated) if positive else (f.negated, f.positive)
        if want is not None and not f.line_break:
            return want
        if self.lite:
            raise FilterError(f"filter: at position {c.position}: {self.lite_problem(c, f)}")
        # Exact on a Milvus server, and rejected by Milvus Lite (which has neither `not` nor `exists`).
        if other is not None:
            return f"not ({other})"
        if want is not None:  # implies the key is present, so the guard changes nothing on a server
            return f"((exists {f.column}) and {want})"
        return f"(exists {f.column})" if positive else f"not (exists {f.column})"

    @staticmethod
    def column_forms(column: str, op: str, value: str) -> _Forms:
        """A string comparison on a filter column: "" (no string there) never matches a comparison and
        always matches its negation, as on the JSON path."""
        lit, some = milvus_string(COLUMN_MARK + value), f'{column} != ""'
        forms = {"=": (f"{column} == {lit}", f"{column} != {lit}"),
                 "!=": (f"({some} and {column} != {lit})", f'({column} == "" or {column} == {lit})'),
                 "<": (f"({some} and {column} < {lit})", f'({column} == "" or {column} >= {lit})'),
                 "<=": (f"({some} and {column} <= {lit})", f'({column} == "" or {column} > {lit})'),
                 ">": (f"{column} > {lit}", f"{column} <= {lit}"),
                 ">=": (f"{column} >= {lit}", f"{column} < {lit}")}
        return _Forms(*forms[op], column, False)

    @staticmethod
    def lite_problem(c: Comparison, f: _Forms) -> str:
        if f.line_break:
            return (f"{c.field} {c.op} ...: Milvus Lite cannot match a string with a line break (it reads \\n as n); "
                    "use a Milvus server or an exact_knn collection")
        if isinstance(c.value, AnyValue):
            return (f'{c.field}:* needs Milvus\'s "exists", which Milvus Lite does not have; use a Milvus server or an '
                    "exact_knn collection")
        return (f'NOT of {c.field} {c.op} ... needs Milvus\'s "not", which Milvus Lite does not have: rewrite it '
                "without NOT (e.g. NOT a > 1 as a <= 1 where a is always a number), or use a Milvus server or an "
                "exact_knn collection")

    def forms(self, c: Comparison) -> _Forms:
        op, value = c.op, c.value
        line_break = isinstance(value, str) and bool(_LINE_BREAKS.search(value))
        if (c.field.name == "metadata" and len(c.field.path) == 1 and c.field.path[0] in self.columns
                and isinstance(value, str) and op != ":" and not line_break):
            return self.column_forms(self.columns[c.field.path[0]], op, value)
        if c.field.name == "metadata":
            j = "metadata" + "".join(f"[{milvus_string(k)}]" for k in c.field.path)
            if isinstance(value, AnyValue):
                return _Forms(None, None, j, False)
            lit = _literal(value)
            if op == "=":
                return _Forms(f"{j} == {lit}", f"{j} != {lit}", j, line_break)
            if op == "!=" and isinstance(value, bool):
                return _Forms(f"{j} == {_literal(not value)}", f"{j} != {_literal(not value)}", j, False)
            if op == "!=":  # != on JSON also matches missing keys and other types: two orderings do not
                return _Forms(f"({j} < {lit} or {j} > {lit})", None, j, line_break)
            if op == ":":
                return _Forms(f"json_contains({j}, {_literal(value, as_float=True)})", None, j, line_break)
            return _Forms(f"{j} {op} {lit}", None, j, line_break)
        column = {"id": "id", "uri": "uri", "create_time": "created_at_ms"}[c.field.name]
        if column == "id" and self.multi_row:
            if op not in ("=", "!="):
                raise FilterError(f"filter: at position {c.position}: ordering comparisons on id are only supported "
                                  "in collections with one row per item")
            low, high = (milvus_string(k) for k in rows_range(value))
            rows = f"(id >= {low} and id < {high})"
            others = f"(id < {low} or id >= {high})"
            return _Forms(rows, others, column, line_break) if op == "=" else \
                _Forms(others, rows, column, line_break)
        # Scalar columns always have a value: every comparison negates by flipping the operator.
        return _Forms(f"{column} {_MILVUS_OP[op]} {_literal(value)}",
                      f"{column} {_MILVUS_OP[_NEGATED_OP[op]]} {_literal(value)}", column, line_break)
