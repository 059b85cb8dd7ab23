"""Moving an account with its subtree between the datacenters of its region (``accounts.moves``,
``manage.py account_move``): what moves, what is refused, writers during the move, processes
that learn of it, and moves killed at every step."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import sys
import textwrap
import threading
import time
import uuid
from unittest import mock

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import override_settings

from accounts import placement
from accounts.choices import MoveState
from accounts.models import Account, AccountMove
from accounts.moves import CHECKPOINTS
from accounts.regional_data import DATACENTER, MoveKind, RegionalTable, regional_tables
from analytics import blocks
from analytics.engine import Diff
from analytics.models import Assignment
from analytics.services import (
    assignment_create,
    calculator_create,
    calculator_geofence_assign,
    geofence_create,
    group_assignment_create,
    interval_user_update,
)
from devices.models import Device
from devices.services import device_create, device_update, group_create, messages_ingest
from flespi_site.mqtt import client as mqtt
from tests.support.intervals import diff_store
from tests.support.mqtt import Subscriber
from tests.support.processes import WebServer, start
from webhooks.services import webhook_create

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

T0 = 1_700_000_000
CALCULATOR = {"name": "days", "selectors": [{"type": "datetime", "split": "day"}]}


def contents(alias: str, account_ids: list[int], *, with_derived: bool = False) -> dict[str, list]:
    """Every row of the accounts in one datacenter database, per table of the registry: log rows
    (outbox, change log) in their order without their serial ids, others sorted. The derived
    tables (message blocks) only ``with_derived``: a move does not copy them."""
    found = {}
    for entry in reversed(regional_tables()):
        if entry.database != DATACENTER or (entry.moves == MoveKind.DERIVED and not with_derived):
            continue
        with connections[alias].cursor() as cursor:
            cursor.execute(f"SELECT * FROM ({entry.select}) AS selected", [account_ids])
            names = [column.name for column in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        if entry.moves == MoveKind.LOG:
            rows.sort(key=lambda row: row["id"])
            rows = [{k: v for k, v in row.items() if k != "id"} for row in rows]
        else:
            rows.sort(key=lambda row: json.dumps(row, sort_keys=True, default=str))
        found[entry.table] = rows
    return found


def populated(make_account):
    """An account in eu-1 with a subaccount in eu-1 and one in eu-2 (which stays where it is):
    devices with messages, telemetry, queued outbox rows and change log; a calculator assigned
    with stored intervals carrying user fields, a geofence assigned and a calculator chaining it;
    groups (a member list, a selector) with the calculator assigned to the selector group, which
    holds the second device; a webhook of the root, its feed and its queued deliveries."""
    root = make_account("root")
    child = make_account("child", parent=root, datacenter="eu-1")
    elsewhere = make_account("elsewhere", parent=root, datacenter="eu-2")
    with override_settings(WEBHOOK_ALLOW=["127.0.0.1"]):  # its receiver: a closed local port
        webhook_create(account=root, data={
            "name": "crm", "triggers": [{"topic": "flespi/message/gw/devices/+"}],
            "configuration": {"type": "custom-server", "uri": "http://127.0.0.1:9/hooks", "method": "POST"},
        })
    devices = [
        device_create(account=account, configuration={"ident": f"ident-{account.name}-{n}"})
        for account in (root, child, elsewhere)
        for n in range(2)
    ]
    messages_ingest(devices=devices, messages=[{"timestamp": T0 + i, "v": i} for i in range(50)])
    messages_ingest(devices=devices, messages=[{"timestamp": T0 + 10, "w": 1}])  # a merge
    seal(devices)
    with override_settings(WEBHOOK_ALLOW=["127.0.0.1"]):
        deliveries_queued(count=2 * 50)
    for account in (root, child):
        calculator = calculator_create(account=account, config=CALCULATOR)
        calculator_create(account=account, config={"name": "inside", "selectors": [{"type": "calc",
                                                                                     "calc_id": calculator.pk}]})
        device = next(d for d in devices if d.account_id == account.pk)
        assignment, _new = assignment_create(calculator=calculator, device=device)
        interval = {"id": T0 * 10**6, "begin": float(T0), "end": T0 + 49.0, "duration": 49.0, "n": 50}
        diff_store(assignment=assignment, diff=Diff(created=[interval]))
        interval_user_update(assignment=assignment, calculator=calculator, interval_id=interval["id"],
                             fields={"driver": account.name})
        zone = geofence_create(account=account, data={
            "name": "depot", "geometry": {"type": "circle", "center": {"lat": 50.0, "lon": 10.0}, "radius": 0.5}})
        calculator_geofence_assign(calculator=calculator, geofence=zone)
        group_create(account=account, name="pool", devices=[device.pk])
        north = group_create(account=account, name="north", selector="metadata.fleet=north")
        group_assignment_create(calculator=calculator, group=north)
        second = [d for d in devices if d.account_id == account.pk][1]
        device_update(device=second, account=account, data={"metadata": {"fleet": "north"}})
    return root, child, elsewhere


def deliveries_queued(*, count: int) -> None:
    """The delivery loop of eu-1 fans the feed out until ``count`` deliveries are queued (its
    receiver does not answer: they stay queued), and leaves some of the feed for the move."""
    from webhooks.delivery import WebhookDelivery

    loop = WebhookDelivery(alias="dc_eu_1", region="eu", batch=count, retry_first=3600, retry_most=3600)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with connections["dc_eu_1"].cursor() as cursor:
                cursor.execute("SELECT count(*) FROM webhook_deliveries")
                if cursor.fetchone()[0] >= count:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError(f"fewer than {count} webhook deliveries queued")
    finally:
        loop.stop()
        thread.join(timeout=15)


def seal(devices) -> None:
    """Message blocks of a few messages each for the devices (the real size wants thousands)."""
    with mock.patch.object(blocks, "BLOCK_SIZE", 16):
        for device in devices:
            blocks.device_seal(alias=device.database, device_id=device.pk)


def test_a_move_copies_every_row_unchanged_and_leaves_nothing_in_the_source(make_account):
    root, child, elsewhere = populated(make_account)
    ids = [root.pk, child.pk]
    before = contents("dc_eu_1", ids, with_derived=True)
    assert all(before.values()), {table: len(rows) for table, rows in before.items()}
    stays = contents("dc_eu_2", [elsewhere.pk])

    call_command("account_move", account=root.pk, to="eu-2")

    after = contents("dc_eu_2", ids, with_derived=True)
    # Message blocks are not copied: the moved devices are noted, and sealing them at the target
    # builds the same blocks.
    assert after["message_blocks"] == [] and after["message_block_work"] == before["message_block_work"]
    seal(Device.objects.using("dc_eu_2").filter(account_id__in=ids))
    assert contents("dc_eu_2", ids, with_derived=True) == before
    assert {table: rows for table, rows in contents("dc_eu_1", ids, with_derived=True).items() if rows} == {}
    assert contents("dc_eu_2", [elsewhere.pk]) == stays
    assert set(Account.objects.filter(pk__in=ids).values_list("datacenter__code", flat=True)) == {"eu-2"}
    assert placement.alias_for_account(child.pk) == "dc_eu_2"
    move = AccountMove.objects.get()
    assert move.state == MoveState.DONE and move.tables["messages"] == len(before["messages"])
    with connections["dc_eu_1"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM move_journal")
        assert cursor.fetchone() == (0,)
        cursor.execute("SELECT tgname FROM pg_trigger WHERE tgname LIKE 'move_journal%%'")
        assert cursor.fetchall() == []
    # The moved devices take messages where they are now.
    moved = Device.objects.using("dc_eu_2").filter(account_id=child.pk).first()
    assert messages_ingest(devices=[moved], messages=[{"timestamp": T0 + 100}]).accepted == 1


def test_groups_and_their_calculators_work_where_the_account_moved(make_account):
    root, child, _elsewhere = populated(make_account)
    before = Assignment.objects.using("dc_eu_1").filter(account_id=child.pk, by_hand=False).count()
    assert before == 1

    call_command("account_move", account=root.pk, to="eu-2")

    moved = Assignment.objects.using("dc_eu_2").filter(account_id=child.pk, by_hand=False)
    assert moved.count() == 1
    # A device created in the moved account joins the moved selector group and is assigned there.
    device = device_create(account=child, configuration={"ident": "moved-north"}, metadata={"fleet": "north"})
    assert device.database == "dc_eu_2"
    assert Assignment.objects.using("dc_eu_2").filter(device_id=device.pk, by_hand=False).count() == 1
    assert not Assignment.objects.using("dc_eu_1").filter(device_id=device.pk).exists()


def test_every_table_of_the_registry_says_how_it_moves():
    assert [entry.table for entry in regional_tables() if entry.database == DATACENTER and entry.moves is None] == []
    # A new app's table that does not say it is refused where it is declared.
    with pytest.raises(ValueError, match="a_new_table: a datacenter table must say how a move brings its rows"):
        RegionalTable("a_new_table")


def seqs_of(received) -> set:
    return {payload["seq"] for _topic, payload in received if isinstance(payload, dict) and "seq" in payload}


def move_command(*args: str):
    return start([sys.executable, "manage.py", "account_move", *args])


# The command in a process of its own that stops at a point of the move (its ``checkpoint``, which
# has no command-line form) and waits there to be killed.
STOPPING_MOVE = textwrap.dedent("""
    import sys, time
    import django
    django.setup()
    from django.core.management import call_command

    def stop_at(point):
        if point == sys.argv[3]:
            print(f"move: stopped at {point}", flush=True)
            while True:
                time.sleep(3600)

    call_command("account_move", account=int(sys.argv[1]), to=sys.argv[2], checkpoint=stop_at)
""")


def stopping_move(account_id: int, target: str, point: str):
    assert point in CHECKPOINTS
    return start([sys.executable, "-c", STOPPING_MOVE, str(account_id), target, point],
                 DJANGO_SETTINGS_MODULE="flespi_site.settings")


def unchanged(root, before: dict) -> None:
    """Nothing of a refused or dry move changed anything."""
    assert Account.objects.get(pk=root.pk).datacenter.code == "eu-1"
    assert contents("dc_eu_1", [root.pk]) == before
    assert {t: rows for t, rows in contents("dc_eu_2", [root.pk]).items() if rows} == {}
    assert not AccountMove.objects.exclude(state=MoveState.DONE).exists()


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("ru-1", "datacenter ru-1 is in region ru, account {id} in region eu: an account moves only between the "
                 "datacenters of its region (eu-1, eu-2)"),
        ("eu-9", "datacenter 'eu-9' is unknown; account {id} is in region eu, whose datacenters are eu-1, eu-2"),
        ("eu-1", "account {id} is already in datacenter eu-1"),
    ],
)
def test_a_move_to_another_region_an_unknown_datacenter_or_where_it_is_is_refused(make_account, target, reason):
    root, _child, _elsewhere = populated(make_account)
    before = contents("dc_eu_1", [root.pk])
    with pytest.raises(CommandError) as refused:
        call_command("account_move", account=root.pk, to=target)
    assert str(refused.value) == reason.format(id=root.pk)
    unchanged(root, before)


def test_a_dry_run_prints_the_rows_per_table_and_changes_nothing(make_account):
    root, child, _elsewhere = populated(make_account)
    before = contents("dc_eu_1", [root.pk, child.pk])
    out = io.StringIO()
    call_command("account_move", account=root.pk, to="eu-2", dry_run=True, stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == f"dry run: would move accounts {root.pk}, {child.pk} from eu-1 to eu-2"
    counts = {line.split()[0]: int(line.split()[1]) for line in lines[2:]}
    assert counts == {table: len(rows) for table, rows in before.items()}
    unchanged(root, contents("dc_eu_1", [root.pk]))


def test_a_second_move_while_one_runs_is_refused(make_account):
    root, child, _elsewhere = populated(make_account)
    first, output = stopping_move(root.pk, "eu-2", "copied")
    try:
        output.wait_for("move: stopped at copied")
        for account in (root, child):
            second, second_output = move_command("--account", str(account.pk), "--to", "eu-2")
            assert second.wait(60) == 1
            assert (f"a move is running in region eu: account {root.pk} to eu-2; one move runs at a time in a "
                    "region: wait for it to finish") in second_output.text
    finally:
        first.kill()
        first.wait()
    assert Account.objects.get(pk=root.pk).datacenter.code == "eu-1"


# `make test` kills the command at three points; FLESPI_SLOW=1 at every point of the move.
KILL_POINTS = CHECKPOINTS if os.environ.get("FLESPI_SLOW") else ("copying", "paused", "switched")


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_move_killed_at_any_point_is_served_where_the_control_database_says_and_a_rerun_completes(
    make_account, point
):
    root, child, _elsewhere = populated(make_account)
    ids = [root.pk, child.pk]
    before = contents("dc_eu_1", ids)
    process, output = stopping_move(root.pk, "eu-2", point)
    output.wait_for(f"move: stopped at {point}")
    process.send_signal(signal.SIGKILL)
    process.wait()

    switched = CHECKPOINTS.index(point) >= CHECKPOINTS.index("switched")
    served = "dc_eu_2" if switched else "dc_eu_1"
    assert placement.alias_for_account(child.pk) == served
    assert contents(served, ids) == before
    # The account takes writes where it is served, at once (the killed move's locks went with it).
    device = Device.objects.using(served).filter(account_id=child.pk).first()
    assert messages_ingest(devices=[device], messages=[{"timestamp": T0 + 1000, "late": True}]).accepted == 1
    expected = contents(served, ids)

    rerun, rerun_output = move_command("--account", str(root.pk), "--to", "eu-2")
    assert rerun.wait(120) == 0, rerun_output.text
    assert contents("dc_eu_2", ids) == expected
    assert {table: rows for table, rows in contents("dc_eu_1", ids).items() if rows} == {}
    assert AccountMove.objects.get().state == MoveState.DONE
    assert "(resumed)" in rerun_output.text


class RestWriter(threading.Thread):
    """Posts one message per request to a device through a live server until stopped, sending a
    503 again after its Retry-After; records what was accepted and how long each request took."""

    def __init__(self, port: int, key: str, device_id: int, start_ts: int):
        super().__init__(daemon=True)
        self.port, self.key, self.device_id, self.ts = port, key, device_id, start_ts
        self.accepted: list[int] = []
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self.stopping.is_set():
            self.ts += 1
            body = json.dumps([{"timestamp": self.ts, "seq": self.ts}])
            while True:
                started = time.monotonic()
                connection.request("POST", f"/gw/devices/{self.device_id}/messages", body=body, headers={
                    "Authorization": f"FlespiToken {self.key}", "Content-Type": "application/json", "Host": "localhost"})
                response = connection.getresponse()
                response.read()
                self.latencies.append(time.monotonic() - started)
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                if response.status != 503:
                    break
                time.sleep(float(response.getheader("Retry-After", "1")))
            if response.status == 200:
                self.accepted.append(self.ts)
            time.sleep(0.005)

    def stop(self) -> list[int]:
        self.stopping.set()
        self.join(30)
        return self.accepted


class MqttWriter(threading.Thread):
    """Publishes one message at a time (QoS 1) to a device's ingest topic until stopped."""

    def __init__(self, topic: str, start_ts: int):
        super().__init__(daemon=True)
        self.topic, self.ts = topic, start_ts
        self.published: list[int] = []
        self.stopping = threading.Event()
        self.client = mqtt.client_for(settings.MQTT_URL, client_id=f"writer-{uuid.uuid4().hex[:8]}")

    def run(self) -> None:
        self.client.connect(*mqtt.broker_address(settings.MQTT_URL)[:2])
        self.client.loop_start()
        while not self.stopping.is_set():
            self.ts += 1
            self.client.publish(self.topic, json.dumps({"timestamp": self.ts, "seq": self.ts}), qos=1).wait_for_publish(10)
            self.published.append(self.ts)
            time.sleep(0.005)
        self.client.loop_stop()
        self.client.disconnect()

    def stop(self) -> list[int]:
        self.stopping.set()
        self.join(30)
        return self.published


def stamps(alias: str, device_id: int, after: int) -> list[int]:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT ts / 1000000 FROM messages WHERE device_id = %s AND ts > %s ORDER BY ts",
                       [device_id, after * 1_000_000])
        return [row[0] for row in cursor.fetchall()]


def test_a_live_move_under_rest_and_mqtt_writers_stores_every_accepted_message_once_in_the_target(
    make_account, make_token
):
    root, child, _elsewhere = populated(make_account)
    ids = [root.pk, child.pk]
    key = make_token(child)
    rest_device = Device.objects.using("dc_eu_1").filter(account_id=child.pk).order_by("id").first()
    mqtt_device = Device.objects.using("dc_eu_1").filter(account_id=root.pk).order_by("id").first()
    before = contents("dc_eu_1", ids)
    root_topic, pattern = f"mv{uuid.uuid4().hex[:8]}", f"in{uuid.uuid4().hex[:8]}/+"
    web = WebServer(MQTT_TOPIC_ROOT=root_topic)
    ingest, ingest_output = start([sys.executable, "manage.py", "mqtt_ingest", "--pattern", pattern])
    relay, relay_output = start([sys.executable, "manage.py", "outbox_relay"], MQTT_TOPIC_ROOT=root_topic)
    rest = RestWriter(web.port, key, rest_device.pk, T0 + 10_000)
    published = MqttWriter(pattern.replace("+", mqtt_device.ident), T0 + 10_000)
    try:
        ingest_output.wait_for("subscribed to")
        relay_output.wait_for("relaying")
        with Subscriber(settings.MQTT_URL, f"{root_topic}/message/gw/devices/+") as subscriber:
            rest.start()
            published.start()
            time.sleep(1.0)
            move, move_output = start([sys.executable, "manage.py", "account_move", "--account", str(root.pk),
                                       "--to", "eu-2"])
            assert move.wait(300) == 0, move_output.text
            time.sleep(1.0)
            accepted, sent = rest.stop(), published.stop()
            deadline = time.monotonic() + 30
            while stamps("dc_eu_2", mqtt_device.pk, T0 + 10_000) != sent and time.monotonic() < deadline:
                time.sleep(0.1)
            # What the live server answers after the move comes from the target.
            connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
            connection.request("GET", f"/gw/devices/{rest_device.pk}/messages?fields=seq",
                               headers={"Authorization": f"FlespiToken {key}", "Host": "localhost"})
            answer = json.loads(connection.getresponse().read())
            assert "result" in answer, answer
            served = [m["seq"] for m in answer["result"] if "seq" in m]
            # Every accepted message's event, however many duplicates (QoS 1) come first.
            deadline = time.monotonic() + 60
            while True:
                received = list(subscriber.messages)
                if set(accepted) | set(sent) <= seqs_of(received) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
    finally:
        rest.stopping.set()
        published.stopping.set()
        for process in (ingest, relay):
            process.terminate()
            process.wait(15)
        web.stop()
    assert accepted and sent
    assert stamps("dc_eu_2", rest_device.pk, T0 + 10_000) == accepted  # each once, none lost
    assert stamps("dc_eu_2", mqtt_device.pk, T0 + 10_000) == sent
    assert served == accepted
    assert {table: rows for table, rows in contents("dc_eu_1", ids).items() if rows} == {}
    after = contents("dc_eu_2", ids)
    for table in ("analytics_calculator", "analytics_assignment", "intervals"):
        assert after[table] == before[table]
    assert {json.dumps(row, sort_keys=True) for row in before["messages"]} <= {
        json.dumps(row, sort_keys=True) for row in after["messages"]
    }
    # The relays published every new message, from the source before the switch and the target after.
    assert set(accepted) | set(sent) <= seqs_of(received)
    assert set(rest.statuses) <= {200, 503}, rest.statuses
    print(f"\nlongest REST write during the move: {max(rest.latencies) * 1000:.0f} ms "
          f"({len(accepted)} accepted, statuses {rest.statuses}); {move_output.text.splitlines()[-1]}")
