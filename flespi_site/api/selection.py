"""Selections in paths, the ``{selector}`` of ``/gw/devices/{selector}`` on the wire: ``all``; an
id or a comma list of ids; ``field=value`` conditions joined by commas (ANDed), with
``*`` and ``?`` wildcards in values.

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


def parse_selection(selector: str, fields: dict[str, SelectionField]) -> Q:
    """A Q object for ``selector``; raises InvalidInput naming the bad part."""
    selector = selector.strip()
    if "\x00" in selector:
        raise InvalidInput("a selector must not contain NUL characters (%00)", field="selector")
    if selector == "all":
        return Q()
    parts = selector.split(",")
    if any(part == "" for part in parts):
        raise InvalidInput(f"selector {selector!r} has an empty item", field="selector")
    if all(_is_int(part) for part in parts):
        if len(parts) > MAX_SELECTION_IDS:
            raise InvalidInput(f"a selector may list at most {MAX_SELECTION_IDS} ids", field="selector")
        # Ids select by the resource's "id" field (an assignment's id is its device's).
        lookup = fields["id"].lookup if "id" in fields else "pk"
        return Q(**{f"{lookup}__in": [int(part) for part in parts]})
    query = Q()
    for part in parts:
        name, eq, value = part.partition("=")
        if not eq:
            raise InvalidInput(
                f"selector item {part!r} is neither an id nor a field=value condition; "
                "use 'all', ids like '1,2' or conditions like 'name=truck*'",
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
