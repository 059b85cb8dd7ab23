"""The API fuzzed with schemathesis from the platform's own OpenAPI schema (``/api/schema/``),
against a live server with a real master token: no input gives a 5xx, and every 4xx is the
``{"errors": [...]}`` envelope with a code and a reason per entry.

Path selectors are drawn from the generated strings and from rows that exist (a calculator with
an assigned device and stored intervals, a second calculator and device, a token, a
subaccount), so that calls reach the code behind the lookups as well as the lookups' refusals.
What a call deletes or disables (the token itself, ``DELETE /gw/devices/all``) is put back
after each example. `make test` runs a bounded number of examples per operation, the same on
every run (the suite's "repeatable" Hypothesis profile, tests/conftest.py); FLESPI_SLOW=1 (or
FUZZ_EXAMPLES=N) runs more, and HYPOTHESIS_PROFILE=explore draws new ones.
"""

from __future__ import annotations

import os
import re
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from analytics.engine import Diff
from tests.support.calculators import TRIPS

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100" if os.environ.get("FLESPI_SLOW") else "6"))
CIRCLE = {"type": "circle", "center": {"lat": 50.0, "lon": 10.0}, "radius": 1.0}
WEBHOOK = {"name": "fuzz", "triggers": [{"topic": "flespi/message/gw/devices/+"}],
           "configuration": {"uri": "http://93.184.216.34/fuzz"}}


class World:
    """The rows the fuzzed calls are pointed at, and the token they authenticate with."""

    def __init__(self, account, make_token):
        self.account = account
        self.make_token = make_token
        self.key = ""
        self.base_url = ""
        self.token_id = 0
        self.other_token_id = 0
        self.subaccount_id = 0
        self.devices: list[int] = []
        self.calculators: list[int] = []
        self.intervals: list[int] = []
        self.geofences: list[int] = []
        self.groups: list[int] = []
        self.webhooks: list[int] = []
        self.restore()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"FlespiToken {self.key}"}

    def restore(self) -> None:
        """Put back what the last call deleted or disabled; a handful of queries when nothing was."""
        from accounts.choices import AccessType
        from accounts.models import Account, Token
        from accounts.services import account_create

        tokens = Token.objects.filter(account_id=self.account.pk)
        if not tokens.filter(pk=self.token_id).update(
            enabled=True, expire=0, ttl=0, access_type=AccessType.MASTER
        ):
            self.key = self.make_token(self.account)
            self.token_id = tokens.latest("pk").pk
        if not tokens.filter(pk=self.other_token_id).exists():
            self.make_token(self.account, master=False, info="other")
            self.other_token_id = tokens.latest("pk").pk
        if not Account.objects.filter(pk=self.subaccount_id, parent_id=self.account.pk).exists():
            self.subaccount_id = account_create(name="fuzz child", parent=self.account).pk
        self._restore_devices()
        self._restore_calculators()
        self._restore_geofences()
        self._restore_groups()
        self._restore_webhooks()

    def _restore_devices(self) -> None:
        from devices.models import Device
        from devices.selectors import devices_of
        from devices.services import device_create, device_update, messages_ingest

        rows = {d.pk: d for d in devices_of(account=self.account).filter(pk__in=self.devices)}
        for index in range(2):
            device: Device | None = rows.get(self.devices[index]) if index < len(self.devices) else None
            if device is None:
                device = device_create(
                    account=self.account,
                    name=f"fuzz {index}",
                    configuration={"ident": f"fuzz-{index}-{len(self.devices)}"},
                )
                if index == 0:
                    messages_ingest(devices=[device], messages=TRACK)
                self.devices[index : index + 1] = [device.pk]
            elif not device.enabled:
                device_update(device=device, account=self.account, data={"enabled": True})

    def _restore_calculators(self) -> None:
        from analytics.selectors import assignments_of, calculators_of
        from analytics.services import assignment_create, calculator_create
        from devices.selectors import devices_of
        from tests.support.intervals import diff_store

        have = set(
            calculators_of(account=self.account).filter(pk__in=self.calculators).values_list("pk", flat=True)
        )
        for index in range(2):
            if index >= len(self.calculators) or self.calculators[index] not in have:
                calculator = calculator_create(
                    account=self.account, config={**TRIPS, "name": f"fuzz {index}"}
                )
                self.calculators[index : index + 1] = [calculator.pk]
        calc_id, device_id = self.calculators[0], self.devices[0]
        if not assignments_of(
            account=self.account, calculator_ids=[calc_id], device_ids=[device_id]
        ).exists():
            calculator = calculators_of(account=self.account).get(pk=calc_id)
            device = devices_of(account=self.account).get(pk=device_id)
            assignment, _new = assignment_create(calculator=calculator, device=device)
            created = [
                {
                    "id": int(begin * 1_000_000),
                    "begin": begin,
                    "end": begin + 50.0,
                    "duration": 50.0,
                    "max_speed": 60.0,
                    "km": 0.8,
                }
                for begin in (1_000.0, 2_000.0, 3_000.0)
            ]
            diff_store(assignment=assignment, diff=Diff(created=created, reached_end=True))
            self.intervals = [interval["id"] for interval in created]

    def _restore_geofences(self) -> None:
        from analytics.selectors import calculator_geofences_of, calculators_of, geofences_of
        from analytics.services import calculator_geofence_assign, geofence_create, geofence_update

        rows = {zone.pk: zone for zone in geofences_of(account=self.account).filter(pk__in=self.geofences)}
        for index in range(2):
            zone = rows.get(self.geofences[index]) if index < len(self.geofences) else None
            if zone is None:
                zone = geofence_create(account=self.account, data={"name": f"fuzz {index}", "geometry": CIRCLE})
                self.geofences[index: index + 1] = [zone.pk]
            elif not zone.enabled:
                geofence_update(geofence=zone, data={"enabled": True})
        calc_id, zone_id = self.calculators[0], self.geofences[0]
        if not calculator_geofences_of(account=self.account, calculator_ids=[calc_id]).filter(
            geofence_id=zone_id
        ).exists():
            calculator_geofence_assign(
                calculator=calculators_of(account=self.account).get(pk=calc_id),
                geofence=geofences_of(account=self.account).get(pk=zone_id),
            )
    def _restore_groups(self) -> None:
        """A group listing the first device and a selector group, the first calculator assigned to
        the first."""
        from analytics.selectors import calculators_of
        from analytics.services import group_assignment_create
        from devices.selectors import groups_of
        from devices.services import group_create

        have = set(groups_of(account=self.account).filter(pk__in=self.groups).values_list("pk", flat=True))
        for index, fields in enumerate(({"devices": [self.devices[0]]}, {"selector": "metadata.k=1"})):
            if index >= len(self.groups) or self.groups[index] not in have:
                group = group_create(account=self.account, name=f"fuzz {index}", **fields)
                self.groups[index : index + 1] = [group.pk]
        calculator = calculators_of(account=self.account).get(pk=self.calculators[0])
        group = groups_of(account=self.account).get(pk=self.groups[0])
        group_assignment_create(calculator=calculator, group=group)

    def _restore_webhooks(self) -> None:
        """Two webhooks (to a public address, which no request of the fuzzing reaches)."""
        from webhooks.selectors import webhooks_of
        from webhooks.services import webhook_create

        have = set(webhooks_of(account=self.account).filter(pk__in=self.webhooks).values_list("pk", flat=True))
        for index in range(2):
            if index >= len(self.webhooks) or self.webhooks[index] not in have:
                webhook = webhook_create(account=self.account, data=WEBHOOK)
                self.webhooks[index : index + 1] = [webhook.pk]

    def valid_bodies(self, operation: str) -> list:
        """Bodies that an operation (``METHOD shape``) takes, for operations that random bodies
        seldom satisfy."""
        return {
            "PUT /gw/calcs/{}": [
                {"update_delay": 5},
                {"timezone": "Europe/Riga"},
                {"name": "renamed"},
                {"counters": TRIPS["counters"][:1]},
            ],
            "PUT /gw/devices/{}": [{"name": "renamed"}, {"enabled": True}, {"metadata": {"k": 1}}],
            "PATCH /gw/calcs/{}": [{"metadata": {"k": {"a": 1}}}, {"name": "renamed"}],
            "PATCH /gw/devices/{}": [{"metadata": {"k": 1}}, {"configuration": {"phone": "1"}}],
            "PATCH /platform/subaccounts/{}": [{"metadata": {"k": None}}, {"name": "renamed"}],
            "POST /gw/devices/{}/calculate": [
                {"calc_id": self.calculators[0], "begin": 0, "end": 10_000},
                {"calculator": TRIPS, "from": 0, "to": 10_000},
            ],
            "POST /gw/calcs/{}/devices/{}/recalculate": [{}, {"begin": 1_000, "end": 2_000}],
            "POST /gw/calcs/{}/devices/{}/calculate": [
                {"from": 0, "to": 10_000, "selectors": [{"type": "datetime", "split": "day"}],
                 "counters": [{"name": "km", "type": "summary", "field": "km"}]},
            ],
            "POST /gw/geofences": [{"name": "zone", "geometry": CIRCLE}],
            "PUT /gw/geofences/{}": [{"name": "renamed"}, {"priority": 5}],
            "PATCH /gw/geofences/{}": [{"metadata": {"k": 1}}, {"enabled": True}],
            "POST /gw/groups": [[{"name": "g", "devices": self.devices[:1]}], [{"name": "s", "selector": "name=fuzz*"}]],
            "PUT /gw/groups/{}": [{"name": "renamed"}, {"metadata": {"k": 1}}],
            "PATCH /gw/groups/{}": [{"metadata": {"k": {"a": 1}}}, {"name": "renamed"}],
            "POST /platform/webhooks": [[WEBHOOK]],
            "PUT /platform/webhooks/{}": [{"name": "renamed"}, {"configuration": {"body": "{{payload}}"}}],
            "POST /platform/webhooks/{}/replay": [{"begin": 0, "end": 10}],
        }.get(operation, [])

    def valid_queries(self, operation: str) -> list[dict]:
        """Query parameters that an operation takes, where random ones seldom are."""
        return {
            "GET /gw/geofences/{}/hittest": [{"data": '{"lat": 50.0, "lon": 10.0}'}],
        }.get(operation, [])

    def path_values(self, path: str) -> list[list[str]]:
        """Selectors of existing rows for each path parameter of ``path``, in order."""
        calcs = [str(pk) for pk in self.calculators]
        devices = [str(pk) for pk in self.devices]
        intervals = [str(pk) for pk in self.intervals]
        zones = [str(pk) for pk in self.geofences]
        groups = [str(pk) for pk in self.groups]
        for prefix, values in (
            ("/gw/calcs/{}/devices/{}/intervals/{}", [calcs, devices, intervals]),
            ("/gw/calcs/{}/geofences/{}", [calcs, zones]),
            ("/gw/geofences/{}", [zones]),
            ("/gw/calcs/{}/devices/{}", [calcs, devices]),
            ("/gw/calcs/{}/groups/{}", [calcs, groups]),
            ("/gw/groups/{}/devices/{}", [groups, devices]),
            ("/gw/groups/{}", [groups]),
            ("/gw/calcs/{}", [calcs]),
            ("/gw/devices/{}", [devices]),
            ("/platform/tokens/{}", [[str(self.other_token_id), str(self.token_id)]]),
            ("/platform/subaccounts/{}", [[str(self.subaccount_id)]]),
            ("/platform/webhooks/{}", [[str(pk) for pk in self.webhooks]]),
        ):
            if shape(path).startswith(prefix):
                return [[*ids, "all", ",".join(ids)] for ids in values]
        return []


def shape(path: str) -> str:
    """A path with its parameters unnamed (``/gw/calcs/{}/devices/{}``)."""
    return re.sub(r"\{[^}]+\}", "{}", path)


# Two trips of a vehicle: moving, standing, moving (a position and a speed every 10 s).
TRACK = [
    {
        "timestamp": 1_000.0 + 10 * n,
        "position.latitude": 50.0 + 0.001 * n,
        "position.longitude": 10.0,
        "position.speed": 0 if 10 <= n < 20 else 40,
    }
    for n in range(30)
]


def _reproduce(case) -> str:
    return case.as_curl_command(headers={"Authorization": "FlespiToken <key>"})


def check_response(case, response) -> None:
    status = response.status_code
    assert status < 500, f"{status} from {_reproduce(case)}\n{response.text[:2000]}"
    if status < 400:
        return
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(
            f"{status} without a JSON body from {_reproduce(case)}\n{response.text[:500]}"
        ) from None
    assert isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"], (
        f"{status} without the errors envelope from {_reproduce(case)}\n{response.text[:500]}"
    )
    for error in body["errors"]:
        assert isinstance(error, dict) and isinstance(error.get("reason"), str) and error["reason"], (
            f"an error without a reason in the {status} from {_reproduce(case)}\n{response.text[:500]}"
        )
        assert isinstance(error.get("code"), int) and 400 <= error["code"] < 500, (
            f"an error without a 4xx code in the {status} from {_reproduce(case)}\n{response.text[:500]}"
        )


def load_schema(world: World, url: str):
    schema = schemathesis.openapi.from_url(f"{url}/api/schema/?format=json", timeout=30)

    @schema.hook
    def flatmap_path_parameters(context, path_parameters):
        # As generated, or every selector naming existing rows, or a mix: a call reaches the code
        # behind the lookups only when all of its selectors match.
        names = re.findall(r"\{([^}]+)\}", context.operation.path)
        known = dict(zip(names, world.path_values(context.operation.path), strict=False))
        if not path_parameters or not known:
            return st.just(path_parameters)
        real = {name: st.sampled_from(known[name]) for name in path_parameters if name in known}
        mixed = {
            name: st.one_of(st.just(value), real[name]) if name in real else st.just(value)
            for name, value in path_parameters.items()
        }
        return st.one_of(
            st.fixed_dictionaries(
                {**{name: st.just(value) for name, value in path_parameters.items()}, **real}
            ),
            st.fixed_dictionaries(mixed),
            st.just(path_parameters),
        )

    @schema.hook
    def flatmap_query(context, query):
        # ``data`` (all parameters as one JSON text) is mostly drawn as text that is not JSON:
        # some examples leave it out so that the other parameters are read, some leave every
        # parameter out (the defaults), some take a query known to be valid.
        seeds = world.valid_queries(f"{context.operation.method.upper()} {shape(context.operation.path)}")
        if not query and not seeds:
            return st.just(query)
        choices = [query, {}, *seeds]
        if "data" in query:
            choices.append({name: value for name, value in query.items() if name != "data"})
        return st.sampled_from(choices)

    @schema.hook
    def flatmap_body(context, body):
        # Generated bodies, and now and then one known to be valid, so that the writes behind
        # the validation run too; a calculator named by id is mostly one that exists.
        operation = f"{context.operation.method.upper()} {shape(context.operation.path)}"
        if isinstance(body, dict) and "calc_id" in body:
            body_strategy = st.sampled_from([*world.calculators, body["calc_id"]]).map(
                lambda calc_id: {**body, "calc_id": calc_id}
            )
        else:
            body_strategy = st.just(body)
        seeds = world.valid_bodies(operation)
        return st.one_of(body_strategy, st.sampled_from(seeds)) if seeds else body_strategy

    @schema.hook
    def flatmap_case(context, case):
        # The schema declares no body for a few writes (PUT and PATCH of the customer, PUT of an
        # interval's user fields); give them JSON objects.
        if case.method not in ("PUT", "PATCH") or case.operation.body:
            return st.just(case)
        return JSON_OBJECTS.map(lambda body: _with_body(case, body))

    return schema


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
JSON_OBJECTS = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "name": st.text(max_size=20),
            "metadata": st.dictionaries(st.text(max_size=5), st.integers()),
        },
    ),
    st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=4),
)


def _with_body(case, body):
    case.body = body
    case.media_type = "application/json"
    return case


@pytest.fixture
def world(live_server, make_account, make_token):
    return World(make_account("fuzz"), make_token)


def fuzz_operation(operation, mode: GenerationMode, world: World, base_url: str, seen: Counter) -> None:
    """Run ``EXAMPLES`` generated calls of one operation; counts the answers by class in ``seen``."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
    )
    def fuzz(case):
        try:
            response = case.call(base_url=base_url, headers=world.headers, timeout=60)
        finally:
            world.restore()
        seen[f"{response.status_code // 100}xx"] += 1
        check_response(case, response)

    fuzz()
    known_call(operation, world, base_url, seen)


def known_call(operation, world: World, base_url: str, seen: Counter) -> None:
    """One call of the operation on existing rows with the first valid body and query the world
    knows of it (none when it knows none): generated examples reach the code behind the lookups
    only by chance, this call on every run."""
    name = f"{operation.method.upper()} {shape(operation.path)}"
    names = re.findall(r"\{([^}]+)\}", operation.path)
    values = world.path_values(operation.path)
    if names and len(values) != len(names):
        return
    bodies, queries = world.valid_bodies(name), world.valid_queries(name)
    extra = {"body": bodies[0], "media_type": "application/json"} if bodies and operation.body else {}
    case = operation.Case(
        path_parameters={key: options[0] for key, options in zip(names, values, strict=True)},
        query=queries[0] if queries else {},
        **extra,
    )
    try:
        response = case.call(base_url=base_url, headers=world.headers, timeout=60)
    finally:
        world.restore()
    seen[f"{response.status_code // 100}xx"] += 1
    check_response(case, response)


def test_no_5xx_and_every_4xx_in_the_envelope(world, live_server):
    schema = load_schema(world, live_server.url)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {
        "/gw/calcs",
        "/gw/calcs/{}",
        "/gw/calcs/{}/devices/{}",
        "/gw/calcs/{}/devices/{}/intervals/{}",
        "/gw/calcs/{}/devices/{}/recalculate",
        "/gw/devices/{}/calculate",
        "/gw/groups/{}",
        "/gw/groups/{}/devices/{}",
        "/gw/calcs/{}/groups/{}",
    } <= {shape(operation.path) for operation in operations}
    failures: list[str] = []
    statuses: dict[str, Counter] = {}
    for operation in operations:
        name = f"{operation.method.upper()} {shape(operation.path)}"
        seen = statuses.setdefault(name, Counter())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz_operation(operation, mode, world, live_server.url, seen)
            except Unsatisfiable:
                pass  # nothing to make invalid: an operation without parameters or body
            except Exception as exc:  # every operation runs; the failures are reported together
                failures.append(f"{name} ({mode.value}): {exc}")
    print_table(statuses)
    assert not failures, "\n\n".join(failures)
    # The selectors reached existing rows: every operation succeeded at least once, but for the
    # path shapes that are refused whatever the input (they need one more path segment; a
    # generated selector holding a "/" may still reach a longer path now and then).
    refused = {
        "DELETE /gw/devices/{}/telemetry",
        "DELETE /gw/groups/{}/devices",
        "POST /gw/calcs/{}/devices",
        "POST /gw/calcs/{}/geofences",
        "POST /gw/calcs/{}/groups",
        "POST /gw/groups/{}/devices",
        "PUT /gw/calcs/{}/devices/{}/intervals",
    }
    assert refused <= set(statuses)
    assert sorted(name for name, seen in statuses.items() if not seen["2xx"] and name not in refused) == []


def print_table(statuses: dict[str, Counter]) -> None:
    width = max(len(name) for name in statuses)
    print(f"\n{'operation':<{width}}  {'calls':>5}  {'2xx':>5}  {'4xx':>5}")
    for name, seen in statuses.items():
        print(f"{name:<{width}}  {sum(seen.values()):>5}  {seen['2xx']:>5}  {seen['4xx']:>5}")
    total: Counter = Counter()
    for seen in statuses.values():
        total.update(seen)
    print(f"{'total':<{width}}  {sum(total.values()):>5}  {total['2xx']:>5}  {total['4xx']:>5}")


# What the fuzzing found, kept as plain regression tests (they need no live server).
@pytest.mark.django_db(databases="__all__")
@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        # A key that is a Unicode digit but not a decimal ("²") crashed the ordering of the
        # calculator's problems by path: a 500 instead of the 400 naming the key.
        (
            "POST",
            "/gw/calcs",
            [{"name": "x", "selectors": [{"type": "datetime", "split": "day"}], "²": 1}],
            "[0].²",
        ),
        (
            "PUT",
            "/gw/calcs/{calc}",
            {"selectors": [{"type": "datetime", "split": "day", "1²": 1}]},
            "selectors[0].1²",
        ),
    ],
    ids=["post-calcs", "put-calcs"],
)
def test_found_by_fuzzing(api, make_account, make_token, method, path, body, field):
    from analytics.services import calculator_create

    account = make_account("fuzz")
    calculator = calculator_create(account=account, config=TRIPS)
    response = api.call(method, path.format(calc=calculator.pk), key=make_token(account), body=body)
    assert response.status_code == 400, response.content
    assert [error["field"] for error in response.json()["errors"]] == [field]
