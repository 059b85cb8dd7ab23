"""Reads of devices, messages and telemetry, scoped to the acting account."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import EmptyResultSet, FullResultSet
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import F, Q, QuerySet
from django.db.models.fields.json import KeyTransform
from django.db.models.lookups import Regex

from accounts import placement
from accounts.models import Account
from devices import storage
from devices.constants import MAX_KEY_LENGTH
from devices.models import Device, DeviceIdent, Group, GroupDevice
from flespi_site.api.selection import MAX_WILDCARD_LENGTH, SelectionField, parse_selection, wildcard_regex
from flespi_site.errors import InvalidInput

# The fields a device selector selects on: in paths (``/gw/devices/{selector}``) and in a group's
# stored selector.
DEVICE_SELECTION_FIELDS = {
    "id": SelectionField("pk", "int"),
    "cid": SelectionField("account_id", "int"),
    "name": SelectionField("name", "str"),
    "enabled": SelectionField("enabled", "bool"),
    "configuration": SelectionField("configuration", "json"),
    "metadata": SelectionField("metadata", "json"),
}
# The device fields whose change can change what a selector selects.
DEVICE_SELECTED_FIELDS = frozenset({"account_id", "name", "enabled", "configuration", "metadata"})


def device_item(device: Device) -> dict:
    """A device as the API renders it, and as its log events carry it."""
    return {
        "id": device.pk,
        "name": device.name,
        "cid": device.account_id,
        "device_type_id": device.device_type_id,
        "configuration": device.configuration,
        "enabled": device.enabled,
        "messages_ttl": device.messages_ttl,
        "messages_rotate": device.messages_rotate,
        "media_ttl": device.media_ttl,
        "media_rotate": device.media_rotate,
        "metadata": device.metadata,
        "shard": device.shard,
        "created": device.created,
    }


def devices_of(*, account: Account) -> QuerySet[Device]:
    return placement.using_account(Device, account.pk).filter(account_id=account.pk)


def device_by_id(device_id: int) -> Device | None:
    """The device with ``device_id``, read from the datacenter of its account, or None."""
    claim = DeviceIdent.objects.filter(device_id=device_id).first()
    if claim is None:
        return None
    return placement.using_account(Device, claim.account_id).filter(pk=device_id).first()


def device_by_ident(*, region: str, ident: str) -> Device | None:
    """The device with ``ident`` in ``region``, read from its datacenter, or None."""
    claim = DeviceIdent.objects.filter(region=region, ident=ident).first()
    if claim is None:
        return None
    return placement.using_account(Device, claim.account_id).filter(pk=claim.device_id).first()


def devices_by_idents(*, regions: Collection[str], idents: Collection[str]) -> dict[tuple[str, str], Device]:
    """The devices with ``idents`` in ``regions``, by (region, ident): one read of the claims,
    one of each datacenter holding some of them."""
    claims = list(
        DeviceIdent.objects.filter(region__in=list(regions), ident__in=list(idents)).values_list(
            "region", "ident", "device_id", "account_id"
        )
    )
    by_alias: dict[str, list[int]] = {}
    for _region, _ident, device_id, account_id in claims:
        by_alias.setdefault(placement.alias_for_account(account_id), []).append(device_id)
    rows = {device.pk: device for alias, ids in by_alias.items() for device in Device.objects.using(alias).filter(pk__in=ids)}
    return {(region, ident): rows[device_id] for region, ident, device_id, _account in claims if device_id in rows}


def messages_of(
    *, devices: list[Device], begin: float | None, end: float | None, count: int | None, reverse: bool
) -> list[dict]:
    if not devices:
        return []
    return storage.messages_read(
        alias=devices[0].database,
        device_ids=[device.pk for device in devices],
        begin=None if begin is None else round(begin * 1_000_000),
        end=None if end is None else round(end * 1_000_000),
        count=count,
        reverse=reverse,
    )


def messages_matching(
    *, devices: list[Device], begin: float | None, end: float | None, count: int, reverse: bool, condition, chunk: int = 10_000
) -> list[dict]:
    """Messages for which ``condition.matches`` holds, read in chunks so that a selective filter
    over a long history never loads the whole history at once."""
    return [
        message
        for page in messages_pages(
            devices=devices, begin=begin, end=end, count=count, reverse=reverse, condition=condition, chunk=chunk
        )
        for message in page
    ]


def messages_pages(
    *,
    devices: list[Device],
    begin: float | None,
    end: float | None,
    count: int | None,
    reverse: bool,
    condition=None,
    chunk: int = 10_000,
) -> Iterator[list[dict]]:
    """The messages ``messages_of`` (``messages_matching`` with a ``condition``) answers for the
    same arguments, in the same order, as pages of at most ``chunk`` read one statement at a time:
    an export of a long range holds one page at a time."""
    if not devices:
        return
    left = count
    low = None if begin is None else round(begin * 1_000_000)
    high = None if end is None else round(end * 1_000_000)
    while left is None or left > 0:
        size = chunk if left is None or condition is not None else min(chunk, left)
        batch = storage.messages_read(
            alias=devices[0].database, device_ids=[device.pk for device in devices],
            begin=low, end=high, count=size, reverse=reverse,
        )
        last = len(batch) < size
        if last:
            head = batch
        else:
            # Several devices can share the boundary timestamp: its group is left for the next
            # chunk, which starts at that timestamp (or after it, if the whole chunk is one group).
            boundary = batch[-1]["timestamp"]
            head = [message for message in batch if message["timestamp"] != boundary] or batch
            edge = round(boundary * 1_000_000)
            step = 0 if len(head) < len(batch) else 1
            if reverse:
                high = edge - step
            else:
                low = edge + step
        kept = head if condition is None else [message for message in head if condition.matches(message)]
        if left is not None:
            kept = kept[:left]
            left -= len(kept)
        if kept:
            yield kept
        if last:
            return


def messages_keys(
    *, devices: list[Device], begin: float | None, end: float | None, count: int | None, reverse: bool
) -> set[str]:
    """The parameter names of the messages ``messages_of`` answers for the same arguments."""
    if not devices:
        return set()
    return storage.messages_keys(
        alias=devices[0].database,
        device_ids=[device.pk for device in devices],
        begin=None if begin is None else round(begin * 1_000_000),
        end=None if end is None else round(end * 1_000_000),
        count=count,
        reverse=reverse,
    )


def devices_state(*, devices: list[Device], names: Collection[str], now: float | None = None) -> dict[int, dict]:
    """What the platform knows of each device's state, by id, for the ``names`` asked:
    ``telemetry`` (the latest value of each parameter and its time), ``last_active`` (when the
    platform last heard from it, by its own clock: a message received over REST or MQTT; null
    before any), ``connected`` (heard from within ``DEVICE_CONNECTION_TIMEOUT`` seconds of
    ``now``), ``messages_size`` (bytes its messages take) and ``groups`` (the ids of the groups
    of its account it belongs to now, explicit or by selector, ascending)."""
    state: dict[int, dict] = {device.pk: {} for device in devices}
    if not devices:
        return state
    if "telemetry" in names:
        for device_id, values in telemetry_of(devices=devices).items():
            state[device_id]["telemetry"] = values
    if "last_active" in names or "connected" in names:
        now = time.time() if now is None else now
        activity = storage.activity_read(alias=devices[0].database, device_ids=list(state))
        for device_id, item in state.items():
            heard = activity.get(device_id)
            if "last_active" in names:
                item["last_active"] = None if heard is None else heard[0]
            if "connected" in names:
                # The stored flag is the sweep's; between sweeps the clock says it first.
                item["connected"] = heard is not None and heard[1] and now - heard[0] <= settings.DEVICE_CONNECTION_TIMEOUT
    if "messages_size" in names:
        sizes = storage.messages_sizes(alias=devices[0].database, device_ids=list(state))
        for device_id, size in sizes.items():
            state[device_id]["messages_size"] = size
    if "groups" in names:
        alias = devices[0].database
        group_ids = Group.objects.using(alias).filter(
            account_id__in={device.account_id for device in devices}
        ).values_list("id", flat=True)
        memberships = groups_matching(alias=alias, device_ids=list(state), group_ids=list(group_ids))
        for device_id, joined in memberships.items():
            state[device_id]["groups"] = sorted(joined)
    return state


def telemetry_of(*, devices: list[Device]) -> dict[int, dict[str, dict]]:
    if not devices:
        return {}
    return storage.telemetry_read(alias=devices[0].database, device_ids=[device.pk for device in devices])


@dataclass(frozen=True)
class TelemetrySelection:
    """flespi's ``{telemetry-selector}``: ``all``, or parameter names separated by commas, each
    with ``*`` and ``?`` wildcards (``position.*,battery.voltage``)."""

    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()  # regular expressions of the names with wildcards
    everything: bool = False

    @classmethod
    def parse(cls, text: str) -> TelemetrySelection:
        text = text.strip()
        if text == "all":
            return cls(everything=True)
        names, patterns = [], []
        for part in text.split(","):
            part = part.strip()
            if not part:
                raise InvalidInput(f"telemetry selector {text[:64]!r} has an empty item", field="selector")
            if len(part) > MAX_KEY_LENGTH or any(ord(ch) < 32 for ch in part):
                raise InvalidInput(
                    f"telemetry selector item {part[:64]!r}: a parameter name has at most {MAX_KEY_LENGTH} "
                    "characters and no control characters",
                    field="selector",
                )
            if "*" in part or "?" in part:
                if len(part) > MAX_WILDCARD_LENGTH:
                    raise InvalidInput(
                        f"telemetry selector item {part[:64]!r}...: a name with wildcards has at most "
                        f"{MAX_WILDCARD_LENGTH} characters",
                        field="selector",
                    )
                patterns.append(wildcard_regex(part))
            else:
                names.append(part)
        return cls(names=tuple(names), patterns=tuple(patterns))

    def matches(self, name: str) -> bool:
        return self.everything or name in self.names or any(re.match(pattern, name) for pattern in self.patterns)


def telemetry_selected(*, devices: list[Device], selection: TelemetrySelection) -> dict[int, dict[str, dict]]:
    """The devices' telemetry parameters that ``selection`` names, by device id."""
    telemetry = telemetry_of(devices=devices)
    return {
        device_id: {name: value for name, value in values.items() if selection.matches(name)}
        for device_id, values in telemetry.items()
    }


# --- groups --------------------------------------------------------------------------------


def group_item(group: Group) -> dict:
    """A group as the API renders it."""
    return {
        "id": group.pk,
        "cid": group.account_id,
        "name": group.name,
        "metadata": group.metadata,
        "selector": group.selector,
        "created": group.created,
    }


def groups_of(*, account: Account) -> QuerySet[Group]:
    return placement.using_account(Group, account.pk).filter(account_id=account.pk)


def device_selection(selector: str) -> Q:
    """What a device selector selects (InvalidInput naming the bad part, ``field="selector"``)."""
    return parse_selection(selector, DEVICE_SELECTION_FIELDS)


def group_members(*, group: Group) -> QuerySet[Device]:
    """The devices of a group now: its explicit members, or the devices of its account that its
    selector selects."""
    devices = Device.objects.using(group.database).filter(account_id=group.account_id)
    if group.selector is not None:
        return devices.filter(device_selection(group.selector))
    return devices.filter(pk__in=GroupDevice.objects.using(group.database).filter(group_id=group.pk).values("device_id"))


def group_member_ids(*, groups: Sequence[Group]) -> dict[int, list[int]]:
    """The member ids of each group (of one datacenter), by group id: one read of the member
    lists, one statement evaluating every selector over the groups' accounts' devices."""
    members: dict[int, list[int]] = {group.pk: [] for group in groups}
    if not groups:
        return members
    alias = groups[0].database
    explicit = [group.pk for group in groups if group.selector is None]
    if explicit:
        rows = GroupDevice.objects.using(alias).filter(group_id__in=explicit)
        for group_id, device_id in rows.values_list("group_id", "device_id").order_by("group_id", "device_id"):
            members[group_id].append(device_id)
    selected = [group for group in groups if group.selector is not None]
    if selected:
        table = Device._meta.db_table
        terms: list[str] = []
        params: list = []
        for group in selected:
            sql, values = _selector_sql(group.selector)  # type: ignore[arg-type]  # selected groups have one
            terms.append(f"COALESCE(({sql}), false)")
            params.extend(values)
        statement = (
            f'SELECT "{table}"."id", "{table}"."account_id", ARRAY[{", ".join(terms)}] FROM "{table}" '
            f'WHERE "{table}"."account_id" = ANY(%s) ORDER BY "{table}"."id"'
        )
        with connections[alias].cursor() as cursor:
            cursor.execute(statement, [*params, sorted({group.account_id for group in selected})])
            for device_id, account_id, matches in cursor.fetchall():
                for group, match in zip(selected, matches, strict=True):
                    if match and group.account_id == account_id:
                        members[group.pk].append(device_id)
    return members


@dataclass(frozen=True)
class SelectorHint:
    """A condition a device selector implies: the device's ``field`` (``name``; or the text at
    ``path`` inside ``metadata`` or ``configuration``) equals ``value``, or starts with it when
    ``prefix`` (a mask: ``name=truck-*``)."""

    field: str
    path: tuple[str, ...]
    value: str
    prefix: bool = False


def _regex_literal(pattern: str) -> tuple[str, bool] | None:
    """What a wildcard pattern (``flespi_site.api.selection.wildcard_regex``) matches: its text
    and False when it has no wildcard, the text before its first wildcard and True otherwise;
    None when that is empty."""
    if not (pattern.startswith("^") and pattern.endswith("$")):
        return None
    text, at, body = [], 0, pattern[1:-1]
    while at < len(body):
        if body[at] == "\\" and at + 1 < len(body):
            text.append(body[at + 1])
            at += 2
        elif body[at] == ".":
            return ("".join(text), True) if text else None
        elif body[at] in "^$*+?()[]{}|\\":
            return None
        else:
            text.append(body[at])
            at += 1
    return "".join(text), False


def _hint_of(condition: object) -> SelectorHint | None:
    if isinstance(condition, Q):
        if condition.negated or (condition.connector != Q.AND and len(condition.children) > 1):
            return None
        hints = [hint for hint in map(_hint_of, condition.children) if hint is not None]
        # An equality narrows more than a prefix.
        return min(hints, key=lambda hint: hint.prefix, default=None)
    if isinstance(condition, tuple) and condition[0] == "name" and isinstance(condition[1], str):
        return SelectorHint("name", (), condition[1])
    if isinstance(condition, tuple) and condition[0] == "name__regex" and isinstance(condition[1], str):
        literal = _regex_literal(condition[1])
        return SelectorHint("name", (), *literal) if literal else None
    if isinstance(condition, Regex) and isinstance(condition.lhs, KeyTransform) and isinstance(condition.rhs, str):
        keys: list[str] = []
        node: object = condition.lhs
        while isinstance(node, KeyTransform):
            keys.insert(0, node.key_name)
            node = node.lhs
        literal = _regex_literal(condition.rhs)
        if isinstance(node, F) and node.name in ("metadata", "configuration") and literal is not None:
            return SelectorHint(node.name, tuple(keys), *literal)
    return None


def selector_hint(selector: str) -> SelectorHint | None:
    """A condition that every device a selector selects satisfies (one of its ANDed comparisons of
    ``name`` or of a key inside ``metadata`` or ``configuration`` with a value: its text, or the
    text before its first wildcard), or None when it implies none that way (an ``||``, a negation,
    a value starting with a wildcard)."""
    return _hint_of(device_selection(selector))


@functools.lru_cache(maxsize=4096)
def _selector_sql(selector: str) -> tuple[str, tuple]:
    """The condition of a device selector as SQL over the devices table, compiled once per
    process: a membership test of many groups costs one statement and no parsing."""
    query = Device.objects.filter(device_selection(selector)).query
    compiler = query.get_compiler(using=DEFAULT_DB_ALIAS)  # every database is PostgreSQL
    try:
        sql, params = compiler.compile(query.where)
    except FullResultSet:
        return "TRUE", ()
    except EmptyResultSet:
        return "FALSE", ()
    return sql, tuple(params)


# The groups among the given ids that a device may belong to: its explicit groups, and the
# selector groups of its account whose hint it satisfies or that have none (one statement; the
# hint comparisons run in PostgreSQL, nothing per group in Python).
_CANDIDATES = """
SELECT m.device_id, m.group_id, NULL FROM {members} m
 WHERE m.group_id = ANY(%(groups)s) AND m.device_id = ANY(%(devices)s) AND NOT %(created)s
UNION ALL
SELECT d.id, g.id, g.selector FROM {groups} g JOIN {devices} d ON d.account_id = g.account_id
 WHERE d.id = ANY(%(devices)s) AND g.id = ANY(%(groups)s) AND g.selector IS NOT NULL
   AND (g.hint_field IS NULL OR (
        CASE g.hint_field WHEN 'name' THEN d.name
                          WHEN 'metadata' THEN d.metadata #>> g.hint_path
                          WHEN 'configuration' THEN d.configuration #>> g.hint_path END
        = g.hint_value
        OR (g.hint_prefix AND starts_with(
            CASE g.hint_field WHEN 'name' THEN d.name
                              WHEN 'metadata' THEN d.metadata #>> g.hint_path
                              WHEN 'configuration' THEN d.configuration #>> g.hint_path END,
            g.hint_value))))
"""


def groups_matching(
    *, alias: str, device_ids: Collection[int], group_ids: Collection[int], created: bool = False
) -> dict[int, set[int]]:
    """Which of the groups ``group_ids`` each of ``device_ids`` belongs to now, by device id. One
    statement finds the candidates (explicit memberships; selector groups whose hint the device
    satisfies, ``selector_hint``), a second evaluates the candidates' selectors in full, all of
    them at once (compiled to SQL once per process). ``created``: the devices are new, and no
    explicit member yet."""
    found: dict[int, set[int]] = {device_id: set() for device_id in device_ids}
    if not device_ids or not group_ids:
        return found
    statement = _CANDIDATES.format(
        members=GroupDevice._meta.db_table, groups=Group._meta.db_table, devices=Device._meta.db_table
    )
    candidates: list[tuple[int, int, str]] = []
    with connections[alias].cursor() as cursor:
        cursor.execute(statement, {"groups": list(group_ids), "devices": list(device_ids), "created": created})
        for device_id, group_id, selector in cursor.fetchall():
            if selector is None:
                found[device_id].add(group_id)
            else:
                candidates.append((device_id, group_id, selector))
    if candidates:
        table = Device._meta.db_table
        selectors = sorted({selector for _device, _group, selector in candidates})
        terms: list[str] = []
        params: list = []
        for selector in selectors:
            sql, values = _selector_sql(selector)
            terms.append(f"COALESCE(({sql}), false)")
            params.extend(values)
        statement = f'SELECT "{table}"."id", ARRAY[{", ".join(terms)}] FROM "{table}" WHERE "{table}"."id" = ANY(%s)'
        with connections[alias].cursor() as cursor:
            cursor.execute(statement, [*params, sorted({device for device, _group, _selector in candidates})])
            matches = {device_id: dict(zip(selectors, row, strict=True)) for device_id, row in cursor.fetchall()}
        for device_id, group_id, selector in candidates:
            if matches.get(device_id, {}).get(selector):
                found[device_id].add(group_id)
    return found
