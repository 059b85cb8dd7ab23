"""flespi's selector forms: ``all`` and ids combined with conditions (``all,cid=N``,
``12,cid=N``), ``cid`` on every resource, and expressions in braces (``{name=="x" && cid==1}``)."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from devices.models import Device
from devices.services import device_create
from tests.support.api import errors_of, result_of

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture
def fleet(root, make_account):
    child = make_account("child", parent=root)
    devices = {
        "truck 1": device_create(account=root, name="truck 1", configuration={"ident": "t1"}),
        "truck 2": device_create(account=root, name="truck 2", configuration={"ident": "t2"}, enabled=False),
        "van": device_create(
            account=root, name="van", configuration={"ident": "v1"}, metadata={"group": "north"}
        ),
        "child van": device_create(account=child, name="van", configuration={"ident": "c1"}),
    }
    return root, child, devices


def names(api, key, selector, cid=None):
    path = f"/gw/devices/{quote(selector, safe='=,*')}?fields=name"
    return sorted(item["name"] for item in result_of(api.call("GET", path, key=key, cid=cid)))


def test_all_and_ids_combine_with_conditions(api, root_key, fleet):
    root, child, devices = fleet
    assert names(api, root_key, f"all,cid={root.pk}") == ["truck 1", "truck 2", "van"]
    assert names(api, root_key, f"cid={root.pk}") == ["truck 1", "truck 2", "van"]
    assert names(api, root_key, f"{devices['van'].pk},cid={root.pk}") == ["van"]
    # Listed ids that select nothing are a 404, with conditions or without.
    response = api.call("GET", f"/gw/devices/{devices['van'].pk},cid={child.pk}", key=root_key)
    assert errors_of(response, 404)[0]["reason"] == f"no device matches '{devices['van'].pk},cid={child.pk}'"
    assert result_of(api.call("GET", f"/gw/devices/all,cid={child.pk}", key=root_key)) == []
    assert names(api, root_key, f"all,cid={child.pk}", cid=child.pk) == ["van"]
    assert names(api, root_key, "all,enabled=true,name=truck*") == ["truck 1"]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('{name=="van"}', ["van"]),
        ('{name=="truck*" && enabled==true}', ["truck 1"]),
        ('{name=="van" || !enabled}', ["truck 2", "van"]),
        ("{name=='truck 2' || (enabled && metadata.group==\"north\")}", ["truck 2", "van"]),
        ('{name!="van"}', ["truck 1", "truck 2"]),
        ("{enabled==false}", ["truck 2"]),
        ('{configuration.ident=="t?"}', ["truck 1", "truck 2"]),
    ],
)
def test_expressions(api, root_key, fleet, expression, expected):
    assert names(api, root_key, expression) == expected


def test_expressions_with_cid_and_ids(api, root_key, fleet):
    root, child, devices = fleet
    assert names(api, root_key, f'{{name=="van" && cid=={root.pk}}}') == ["van"]
    assert names(api, root_key, f"{{id>={devices['truck 2'].pk} && cid=={root.pk}}}") == ["truck 2", "van"]
    assert names(api, root_key, f'{{name=="van" && cid=={child.pk}}}', cid=child.pk) == ["van"]


def test_cid_is_selectable_on_every_resource(api, root, root_key, fleet, make_token):
    _root, child, _devices = fleet
    tokens = result_of(api.call("GET", f"/platform/tokens/all,cid={root.pk}?fields=cid", key=root_key))
    assert tokens and {token["cid"] for token in tokens} == {root.pk}
    subaccounts = result_of(
        api.call("GET", f"/platform/subaccounts/all,cid={root.pk}?fields=id,cid", key=root_key)
    )
    assert subaccounts == [{"id": child.pk, "cid": root.pk}]
    assert result_of(api.call("GET", "/platform/subaccounts/cid=1", key=root_key)) == []
    assert result_of(api.call("GET", f"/gw/calcs/all,cid={root.pk}", key=root_key)) == []


@pytest.mark.parametrize(
    "selector",
    [
        '{name=="van"',
        "{name==}",
        "{nosuch==1}",
        '{cid=="x"}',
        "{enabled==1}",
        "{name>}",
        '{(name=="a"}',
        "{" + "!" * 40 + "enabled}",
    ],
)
def test_bad_expressions_are_refused_and_nothing_is_touched(api, root_key, fleet, selector):
    before = list(Device.objects.using("dc_eu_1").values_list("pk", "name", "enabled"))
    response = api.call("DELETE", f"/gw/devices/{quote(selector, safe='=,*')}", key=root_key)
    [error] = errors_of(response, 400)
    assert error["field"] == "selector" and error["reason"].startswith(
        ("selector expression", "selector '{")
    ), error
    assert list(Device.objects.using("dc_eu_1").values_list("pk", "name", "enabled")) == before
