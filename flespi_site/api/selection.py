"""Selections in paths, the ``{selector}`` of ``/gw/devices/{selector}`` on the wire, as flespi
has them: ``all``; an id or a comma list of ids; ``field=value`` conditions, with ``*`` and ``?``
wildcards in values; all three joined by commas, ANDed (``all,cid=5``, ``12,cid=5``); or one
expression in braces over the selectable fields (``{name=="truck*" && (cid==5 || enabled==false)}``).

The name keeps them apart from the engine's interval selectors (``analytics.engine``) and from
each app's read functions (``selectors.py``). A resource declares which fields can be selected on
(``SelectionField``); a dotted name under a JSON field (``configuration.ident``,
``metadata.group``) selects on a key inside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.db.models import Q
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.lookups import Regex

from flespi_site.errors import InvalidInput

MAX_SELECTION_IDS = 1000
# PostgreSQL refuses regular expressions past some complexity ("too complex"), a database error.
MAX_WILDCARD_LENGTH = 256
# Deeper keys than stored JSON can hold (MAX_JSON_DEPTH) match nothing; far deeper ones overflow
# the query compiler's recursion.
MAX_JSON_KEY_DEPTH = 16


@dataclass(frozen=True)
class SelectionField:
    lookup: str  # ORM path
    kind: str  # "int", "str", "bool" or "json" (a JSON object whose keys can be selected on)


def wildcard_regex(value: str) -> str:
    value = re.sub(r"\*+", "*", value)  # "**" means "*"
    return "^" + "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in value) + "$"


def _checked_wildcard(name: str, value: str) -> str:
    if len(value) > MAX_WILDCARD_LENGTH:
        raise InvalidInput(
            f"selector {name}=...: a value with wildcards may have at most {MAX_WILDCARD_LENGTH} characters",
            field="selector",
        )
    return wildcard_regex(value)


def _wildcard_q(name: str, lookup: str, value: str) -> Q:
    return Q(**{f"{lookup}__regex": _checked_wildcard(name, value)})


def _json_key_q(name: str, field: str, keys: list[str], value: str) -> Q:
    """A condition on the text of a key inside a JSON field. The keys are the client's: they are
    built into key transforms one by one, never joined into a lookup string, where ``a__gt``
    would read as an operator."""
    if len(keys) > MAX_JSON_KEY_DEPTH:
        raise InvalidInput(
            f"selector {name[:64]}...: at most {MAX_JSON_KEY_DEPTH} keys deep", field="selector"
        )
    target: str | KeyTransform = field
    for key in keys[:-1]:
        target = KeyTransform(key, target)
    return Q(Regex(KeyTextTransform(keys[-1], target), _checked_wildcard(name, value)))


def _is_int(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 19


def is_id_list(selector: str) -> bool:
    return all(_is_int(part) for part in selector.strip().split(","))


def names_ids(selector: str) -> bool:
    """Whether the selector lists ids (alone, or with conditions: ``12,cid=5``): one that then
    selects nothing names items the account does not have, a 404, where conditions alone
    matching nothing are an empty result."""
    selector = selector.strip()
    return not selector.startswith("{") and any(_is_int(part) for part in selector.split(","))


def parse_selection(selector: str, fields: dict[str, SelectionField]) -> Q:
    """A Q object for ``selector``; raises InvalidInput naming the bad part."""
    selector = selector.strip()
    if "\x00" in selector:
        raise InvalidInput("a selector must not contain NUL characters (%00)", field="selector")
    if selector == "all":
        return Q()
    if selector.startswith("{"):
        if not selector.endswith("}") or len(selector) < 3:
            raise InvalidInput(f"selector {selector[:64]!r}: an expression is written in braces, {{...}}", field="selector")
        if len(selector) > MAX_EXPRESSION_LENGTH:
            raise InvalidInput(f"a selector expression may have at most {MAX_EXPRESSION_LENGTH} characters", field="selector")
        return _Expression(selector[1:-1], fields).parse()
    parts = selector.split(",")
    if any(part == "" for part in parts):
        raise InvalidInput(f"selector {selector!r} has an empty item", field="selector")
    ids = [int(part) for part in parts if _is_int(part)]
    if len(ids) > MAX_SELECTION_IDS:
        raise InvalidInput(f"a selector may list at most {MAX_SELECTION_IDS} ids", field="selector")
    query = Q()
    if ids:
        # Ids select by the resource's "id" field (an assignment's id is its device's).
        lookup = fields["id"].lookup if "id" in fields else "pk"
        query = Q(**{f"{lookup}__in": ids})
    for part in parts:
        if _is_int(part) or part == "all":
            continue
        name, eq, value = part.partition("=")
        if not eq:
            raise InvalidInput(
                f"selector item {part!r} is neither an id nor a field=value condition; "
                "use 'all', ids like '1,2', conditions like 'name=truck*' or an expression like {name==\"truck\"}",
                field="selector",
            )
        query &= _condition(name.strip(), value, fields)
    return query


def _condition(name: str, value: str, fields: dict[str, SelectionField]) -> Q:
    field = fields.get(name)
    if field is None:
        root, dot, key = name.partition(".")
        json_field = fields.get(root)
        if dot and key and json_field is not None and json_field.kind == "json":
            return _json_key_q(name, json_field.lookup, key.split("."), value)
        known = ", ".join(sorted(fields))
        raise InvalidInput(f"cannot select on {name!r}; selectable fields: {known}", field="selector")
    wildcard = "*" in value or "?" in value
    if field.kind == "int":
        if not _is_int(value.lstrip("-")) or wildcard:
            raise InvalidInput(f"selector {name}={value!r}: {name} must be an integer", field="selector")
        return Q(**{field.lookup: int(value)})
    if field.kind == "bool":
        if value not in ("true", "false"):
            raise InvalidInput(f"selector {name}={value!r}: {name} must be true or false", field="selector")
        return Q(**{field.lookup: value == "true"})
    if field.kind == "json":
        raise InvalidInput(f"selector {name!r}: select on a key inside it, like {name}.key=value", field="selector")
    if wildcard:
        return _wildcard_q(name, field.lookup, value)
    return Q(**{field.lookup: value})


# --- expressions ---------------------------------------------------------------------------

MAX_EXPRESSION_LENGTH = 4096
# Nesting of brackets and negations; deeper would overflow the parser's and the ORM's recursion.
MAX_EXPRESSION_DEPTH = 32

_TOKEN = re.compile(
    r"""\s*(?:(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
    r"""|(?P<number>-?[0-9]+(?:\.[0-9]+)?(?![A-Za-z0-9_.]))"""
    r"""|(?P<op>==|!=|<=|>=|&&|\|\||[<>!()=])"""
    r"""|(?P<name>[A-Za-z_$][A-Za-z0-9_.\-]*))"""
)
_COMPARISONS = {"==": "exact", "=": "exact", "!=": "exact", "<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}


class _Expression:
    """A recursive-descent parser of flespi's selector expressions into a Q object: ``||``, ``&&``,
    ``!``, brackets, and comparisons of a selectable field with a literal (a quoted string, with
    ``*`` and ``?`` wildcards under ``==`` and ``!=``; a number; ``true``, ``false``); a bool field
    alone is ``field==true``."""

    def __init__(self, text: str, fields: dict[str, SelectionField]):
        self.text = text
        self.fields = fields
        self.tokens = self._tokens(text)
        self.at = 0
        self.depth = 0

    def _fail(self, what: str) -> InvalidInput:
        return InvalidInput(f"selector expression {{{self.text[:64]}}}: {what}", field="selector")

    def _tokens(self, text: str) -> list[tuple[str, str]]:
        tokens, at = [], 0
        while at < len(text):
            if text[at:].strip() == "":
                break
            match = _TOKEN.match(text, at)
            if match is None or match.end() == at:
                raise self._fail(f"cannot read {text[at:at + 16].strip()!r}")
            kind = match.lastgroup or ""
            tokens.append((kind, match.group(kind)))
            at = match.end()
        return tokens

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def _take(self, value: str | None = None) -> tuple[str, str]:
        token = self._peek()
        if token is None or (value is not None and token[1] != value):
            raise self._fail(f"expected {value or 'more'}" + (f", found {token[1]!r}" if token else " at the end"))
        self.at += 1
        return token

    def parse(self) -> Q:
        query = self._or()
        if self._peek() is not None:
            raise self._fail(f"unexpected {self._peek()[1]!r}")  # type: ignore[index]
        return query

    def _or(self) -> Q:
        query = self._and()
        while self._peek() == ("op", "||"):
            self._take()
            query |= self._and()
        return query

    def _and(self) -> Q:
        query = self._unary()
        while self._peek() == ("op", "&&"):
            self._take()
            query &= self._unary()
        return query

    def _unary(self) -> Q:
        self.depth += 1
        if self.depth > MAX_EXPRESSION_DEPTH:
            raise self._fail(f"nested more than {MAX_EXPRESSION_DEPTH} deep")
        try:
            token = self._peek()
            if token == ("op", "!"):
                self._take()
                return ~self._unary()
            if token == ("op", "("):
                self._take()
                query = self._or()
                self._take(")")
                return query
            return self._comparison()
        finally:
            self.depth -= 1

    def _comparison(self) -> Q:
        kind, name = self._take()
        if kind != "name":
            raise self._fail(f"expected a field name, found {name!r}")
        name = name.removeprefix("$")
        token = self._peek()
        if token is None or token[0] != "op" or token[1] not in _COMPARISONS:
            field = self.fields.get(name)
            if field is not None and field.kind == "bool":
                return Q(**{field.lookup: True})
            raise self._fail(f"expected a comparison after {name!r}")
        operator = self._take()[1]
        kind, literal = self._take()
        value: object
        if kind == "string":
            value = re.sub(r"\\(.)", r"\1", literal[1:-1])
        elif kind == "number":
            value = float(literal) if "." in literal else int(literal)
        elif kind == "name" and literal in ("true", "false"):
            value = literal == "true"
        else:
            raise self._fail(f"expected a value after {name}{operator}, found {literal!r}")
        query = self._compare(name, _COMPARISONS[operator], value)
        return ~query if operator == "!=" else query

    def _compare(self, name: str, lookup: str, value: object) -> Q:
        field = self.fields.get(name)
        if field is None:
            root, dot, key = name.partition(".")
            json_field = self.fields.get(root)
            if dot and key and json_field is not None and json_field.kind == "json" and lookup == "exact":
                return _json_key_q(name, json_field.lookup, key.split("."), _literal_text(value))
            known = ", ".join(sorted(self.fields))
            raise self._fail(f"cannot select on {name!r}; selectable fields: {known}")
        if field.kind == "int":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self._fail(f"{name} is a number")
            return Q(**{f"{field.lookup}__{lookup}": value})
        if field.kind == "bool":
            if not isinstance(value, bool) or lookup != "exact":
                raise self._fail(f"{name} is true or false")
            return Q(**{field.lookup: value})
        if field.kind == "json":
            raise self._fail(f"select on a key inside {name}, like {name}.key==\"value\"")
        if not isinstance(value, str):
            raise self._fail(f"{name} is a string: quote the value")
        if lookup != "exact":
            return Q(**{f"{field.lookup}__{lookup}": value})
        if "*" in value or "?" in value:
            return _wildcard_q(name, field.lookup, value)
        return Q(**{field.lookup: value})


def _literal_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
