"""The demo of ``manage.py demo``: an account with a master token, a device per real track in
``tests/data/tracks``, and calculators of trips, parkings and daily mileage assigned to both.

Every step finds what an earlier run made before making anything, so a second run changes
nothing. The tracks are from 2019 and 2020: the devices keep messages, and the calculators keep
and recalculate intervals, for ``KEEP`` seconds, or the platform's defaults (one year) would
expire the messages and freeze the intervals before they were computed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import connections

from accounts.choices import AccessType
from accounts.models import Account
from accounts.services import account_create, token_authenticate, token_create
from analytics import examples
from analytics.choices import AssignmentState
from analytics.fleet.leases import ShardLeases
from analytics.models import Assignment, Calculator
from analytics.selectors import calculators_of
from analytics.services import assignment_create, calculator_create
from devices.models import Device
from devices.selectors import devices_of
from devices.services import device_create
from flespi_site.celery import redis_client
from flespi_site.errors import Unauthorized

ACCOUNT_NAME = "demo"
TOKEN_INFO = "demo (manage.py demo)"
KEEP = 20 * 365 * 86400
TRACKS_DIR = settings.BASE_DIR / "tests" / "data" / "tracks"


@dataclass(frozen=True)
class Track:
    ident: str
    name: str
    file: str


TRACKS = (
    Track("demo-bus-304", "bus 304, Limerick", "bus-304-limerick-2019-02-18.gpx"),
    Track("demo-car-visnjan", "car around Visnjan", "car-around-visnjan.gpx"),
)

_LONG = {"update_period": KEEP, "intervals_ttl": KEEP}
# The trips calculator of the real-track checks (docs/engine.md, "Real tracks, checked by eye").
TRIPS: dict[str, Any] = {**examples.TRIPS, "name": "demo trips", **_LONG}
# A tracker that records nothing while standing leaves a stop as one point whose (derived) speed
# is the gap's: merge_message_after takes the point where the vehicle moves off into the parking,
# so the parking lasts the whole halt (docs/engine.md, "Real tracks").
PARKINGS = {
    "name": "demo parkings",
    "selectors": [
        {
            "type": "expression",
            "expression": "position.speed < 3",
            "min_duration": 10,
            "merge_message_after": True,
        }
    ],
    "counters": [
        {"name": "lat", "type": "parameter", "parameter": "position.latitude", "method": "last"},
        {"name": "lon", "type": "parameter", "parameter": "position.longitude", "method": "last"},
    ],
    **_LONG,
}
DAILY_MILEAGE = {
    "name": "demo daily mileage",
    "selectors": [{"type": "datetime", "split": "day"}],
    "counters": [
        {"name": "mileage", "type": "expression", "expression": "mileage()", "method": "summary"},
        {"name": "date", "type": "datetime", "interval": "begin", "format": "%Y-%m-%d"},
    ],
    **_LONG,
}
CALCULATORS: tuple[dict[str, Any], ...] = (TRIPS, PARKINGS, DAILY_MILEAGE)


@dataclass
class Demo:
    account: Account
    key: str
    devices: list[Device]
    calculators: list[Calculator]
    assignments: list[Assignment]
    created: list[str] = field(default_factory=list)  # what this run made, for the summary


def token_file() -> Path:
    """Where the demo token's key is kept (it is stored hashed: a later run can only show it from
    here), one file per control database."""
    return settings.BASE_DIR / "var" / "demo" / f"{settings.DATABASES['default']['NAME']}.token"


def _demo_key(*, account: Account, path: Path, created: list[str]) -> str:
    try:
        key = path.read_text().strip()
        token = token_authenticate(key=key)
        if token.account_id == account.pk and token.access_type == AccessType.MASTER:
            return key
    except (OSError, Unauthorized):
        pass
    token, key = token_create(account=account, info=TOKEN_INFO, access_type=AccessType.MASTER)
    created.append(f"master token {token.pk}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


def demo_setup(*, key_file: Path | None = None) -> Demo:
    """Find or make the demo account, its token, devices, calculators and assignments."""
    created: list[str] = []
    account = Account.objects.filter(name=ACCOUNT_NAME, parent=None).order_by("id").first()
    if account is None:
        account = account_create(name=ACCOUNT_NAME, metadata={"demo": True})
        created.append(f"account {account.pk}")
    key = _demo_key(account=account, path=key_file or token_file(), created=created)
    existing_devices = {device.ident: device for device in devices_of(account=account)}
    devices = []
    for track in TRACKS:
        device = existing_devices.get(track.ident)
        if device is None:
            device = device_create(
                account=account, name=track.name, configuration={"ident": track.ident}, messages_ttl=KEEP
            )
            created.append(f"device {device.pk} ({track.name})")
        devices.append(device)
    existing_calculators = {calculator.name: calculator for calculator in calculators_of(account=account)}
    calculators = []
    for config in CALCULATORS:
        calculator = existing_calculators.get(config["name"])
        if calculator is None:
            calculator = calculator_create(account=account, config=config)
            created.append(f"calculator {calculator.pk} ({calculator.name})")
        calculators.append(calculator)
    assignments = []
    for calculator in calculators:
        for device in devices:
            assignment, new = assignment_create(calculator=calculator, device=device)
            if new:
                created.append(f"assignment of device {device.pk} to calculator {calculator.pk}")
            assignments.append(assignment)
    return Demo(account, key, devices, calculators, assignments, created)


def assignments_synced(*, demo: Demo) -> int:
    """How many of the demo's assignments are synced and caught up with their device's messages:
    nothing pending (a synced assignment whose device received messages since is recalculated
    after its ``update_delay``), and no change of the device's messages waiting in the change log
    (the import's last batches, not yet taken by the worker)."""
    alias = demo.calculators[0].database
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT DISTINCT device_id FROM message_changes WHERE device_id = ANY(%s)",
                       [[device.pk for device in demo.devices]])
        changing = {row[0] for row in cursor.fetchall()}
    return (
        Assignment.objects.using(alias)
        .filter(
            pk__in=[assignment.pk for assignment in demo.assignments],
            state=AssignmentState.SYNCED,
            pending_begin__isnull=True,
        )
        .exclude(device_id__in=changing)
        .count()
    )


def calc_workers_running(*, region: str) -> bool:
    """Whether any calc worker of ``region`` has a live heartbeat (False when its Redis is away)."""
    try:
        leases = ShardLeases(
            redis_client(region), region=region, shards=settings.CALC_SHARDS, worker="demo", ttl=1
        )
        return bool(leases.live_workers())
    except redis.RedisError:  # Redis not reachable: nothing can be running there
        return False
