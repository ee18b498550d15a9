"""The `filter` condition language: a tokenizer and recursive-descent parser compiled into closures.

No `eval`: a condition is parsed once into nested closures over a `Record`. Grammar:

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | comparison
    comparison := operand (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in") operand)?
    operand    := STRING | NUMBER | "true" | "false" | "null" | list | NAME | "(" expr ")"
    list       := "[" (operand ("," operand)*)? "]"

Names: `op`, `topic`, `table`, `schema`, `partition`, `offset`, `timestamp`, `value` (the whole value,
null for tombstones), `key.<f>`, `value.<f>` (the row: `after`, or `before` for deletes, or the flat
value), `after.<f>`, `before.<f>`, `source.<f>`, `headers.<name>` (UTF-8 text). Paths go into nested
records (`value.address.city`). Comparing values of different types is false, never an error.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from core.records import Record
from transforms.envelope import is_envelope, op_of, row_of, table_of

Getter = Callable[[Record], Any]


class ExpressionError(ValueError):
    """A condition that does not parse; the message says where."""


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<punct>[()\[\],])
  | (?P<word>[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]+)*)
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}
_KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "null"})
_ROOTS = frozenset(
    {"op", "topic", "table", "schema", "partition", "offset", "timestamp"}
    | {"key", "value", "after", "before", "source", "headers"}
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # string, number, op, punct, word, keyword, end
    text: str
    column: int
    value: Any = None


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ExpressionError(f"unexpected character `{text[position]}` at column {position + 1}")
        kind = match.lastgroup or ""
        raw = match.group()
        column = position + 1
        position = match.end()
        if kind == "ws":
            continue
        if kind == "string":
            tokens.append(Token("string", raw, column, _unquote(raw[1:-1])))
        elif kind == "number":
            tokens.append(Token("number", raw, column, float(raw) if any(c in raw for c in ".eE") else int(raw)))
        elif kind == "word" and raw in _KEYWORDS:
            tokens.append(Token("keyword", raw, column))
        else:
            tokens.append(Token(kind, raw, column))
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


def _unquote(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def _safe(compare: Callable[[Any, Any], Any]) -> Callable[[Any, Any], bool]:
    def run(left: Any, right: Any) -> bool:
        try:
            return bool(compare(left, right))
        except TypeError:
            return False

    return run


def _contains(left: Any, right: Any) -> bool:
    if isinstance(right, (list, tuple)):
        return left in right
    if isinstance(right, str) and isinstance(left, str):
        return left in right
    return False


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "==": _safe(operator.eq),
    "!=": _safe(operator.ne),
    "<": _safe(operator.lt),
    "<=": _safe(operator.le),
    ">": _safe(operator.gt),
    ">=": _safe(operator.ge),
    "in": _contains,
    "not in": lambda left, right: not _contains(left, right),
}


def _walk(value: Any, path: tuple[str, ...]) -> Any:
    for segment in path:
        if not isinstance(value, dict):
            return None
        value = value.get(segment)
    # The sink's decoder gives `uuid` fields as UUID objects; conditions compare them as text.
    return str(value) if isinstance(value, UUID) else value


def _header(record: Record, name: str) -> str | None:
    raw = record.header(name)
    return None if raw is None else raw.decode("utf-8", errors="replace")


def compile_name(name: str) -> Getter:
    """A getter for a dotted name (`value.email`, `headers.change_id`); unknown roots are errors."""
    root, *rest = name.split(".")
    path = tuple(rest)
    if root not in _ROOTS:
        raise ExpressionError(f"unknown name `{name}` (names start with one of: {', '.join(sorted(_ROOTS))})")
    simple: dict[str, Getter] = {
        "op": op_of,
        "topic": lambda r: r.topic,
        "table": lambda r: table_of(r)[1],
        "schema": lambda r: table_of(r)[0],
        "partition": lambda r: r.partition,
        "offset": lambda r: r.offset,
        "timestamp": lambda r: r.timestamp_ms,
    }
    if root in simple:
        if path:
            raise ExpressionError(f"`{root}` has no fields (in `{name}`)")
        return simple[root]
    if root == "headers":
        if not path:
            raise ExpressionError("write `headers.<name>`")
        header = ".".join(path)
        return lambda r: _header(r, header)
    if root == "value" and not path:
        return lambda r: r.value
    if not path:
        raise ExpressionError(f"write `{root}.<field>`")
    if root == "key":
        return lambda r: _walk(r.key, path)
    if root == "value":
        return lambda r: _walk(row_of(r.value), path)
    if root == "after":
        return lambda r: _walk(r.value["after"] if is_envelope(r.value) else r.value, path)
    if root == "before":
        return lambda r: _walk(r.value["before"], path) if is_envelope(r.value) else None
    return lambda r: _walk(r.value["source"], path) if is_envelope(r.value) else None


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.index = 0

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def _describe(self, token: Token) -> str:
        return "the end" if token.kind == "end" else f"`{token.text}` at column {token.column}"

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def accept(self, kind: str, text: str | None = None) -> Token | None:
        token = self.current
        if token.kind == kind and (text is None or token.text == text):
            return self.advance()
        return None

    def expect(self, kind: str, text: str) -> Token:
        token = self.accept(kind, text)
        if token is None:
            raise ExpressionError(f"expected `{text}` but found {self._describe(self.current)}")
        return token

    def parse(self) -> Getter:
        if self.current.kind == "end":
            raise ExpressionError("empty condition")
        getter = self.expr()
        if self.current.kind != "end":
            raise ExpressionError(f"unexpected {self._describe(self.current)}")
        return getter

    def expr(self) -> Getter:
        parts = [self.and_expr()]
        while self.accept("keyword", "or"):
            parts.append(self.and_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda r: any(part(r) for part in parts)

    def and_expr(self) -> Getter:
        parts = [self.not_expr()]
        while self.accept("keyword", "and"):
            parts.append(self.not_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda r: all(part(r) for part in parts)

    def not_expr(self) -> Getter:
        if self.current.kind == "keyword" and self.current.text == "not":
            self.advance()
            inner = self.not_expr()
            return lambda r: not inner(r)
        return self.comparison()

    def comparison(self) -> Getter:
        left = self.operand()
        token = self.current
        if token.kind == "op" or (token.kind == "keyword" and token.text == "in"):
            symbol = self.advance().text
        elif token.kind == "keyword" and token.text == "not" and self.tokens[self.index + 1].text == "in":
            self.index += 2
            symbol = "not in"
        else:
            return left
        right = self.operand()
        compare = _COMPARISONS[symbol]
        return lambda r: compare(left(r), right(r))

    def operand(self) -> Getter:
        token = self.advance()
        if token.kind in ("string", "number"):
            constant = token.value
            return lambda _r: constant
        if token.kind == "keyword" and token.text in ("true", "false", "null"):
            literal = {"true": True, "false": False, "null": None}[token.text]
            return lambda _r: literal
        if token.kind == "word":
            try:
                return compile_name(token.text)
            except ExpressionError as exc:
                raise ExpressionError(f"{exc} at column {token.column}") from None
        if token.kind == "punct" and token.text == "(":
            inner = self.expr()
            self.expect("punct", ")")
            return inner
        if token.kind == "punct" and token.text == "[":
            items: list[Getter] = []
            if not self.accept("punct", "]"):
                items.append(self.operand())
                while self.accept("punct", ","):
                    items.append(self.operand())
                self.expect("punct", "]")
            return lambda r: [item(r) for item in items]
        raise ExpressionError(f"expected a value or a name but found {self._describe(token)}")


def compile_condition(text: str) -> Callable[[Record], bool]:
    """Parse a condition once; the result tells whether a record satisfies it."""
    getter = _Parser(text).parse()
    return lambda record: bool(getter(record))
