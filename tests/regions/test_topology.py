"""The topology configuration and its mirror in Region and Datacenter rows."""

from __future__ import annotations

import json

import pytest

from flespi_site import topology
from regions.models import Datacenter, Region
from regions.services import TopologyConflict, topology_sync


def load(document: dict, **env: str) -> topology.Topology:
    return topology.load(
        {"FLESPI_TOPOLOGY": json.dumps(document), "DATABASE_URL": "postgres://u@h:5432/flespi", **env}
    )


def test_default_topology():
    loaded = topology.load({"DATABASE_URL": "postgres://u@h:5432/flespi", "PORT": "9000"})
    assert loaded.default_region == "eu"
    assert [(dc.code, dc.region, dc.number, dc.alias) for dc in loaded.datacenters] == [
        ("eu-1", "eu", 1, "dc_eu_1"),
        ("eu-2", "eu", 2, "dc_eu_2"),
        ("ru-1", "ru", 3, "dc_ru_1"),
    ]
    assert loaded.datacenter("eu-2").database_url == "postgres://u@h:5432/flespi_eu_2"
    assert loaded.control_database_url == "postgres://u@h:5432/flespi"
    # The default region answers at the central point, which every resolver knows.
    assert [region.rest_url for region in loaded.regions] == [
        "http://localhost:9000",
        "http://ru.localhost:9000",
    ]
    document = {**topology.DEFAULT_TOPOLOGY, "domain": "fleet.example"}
    elsewhere = topology.load(
        {
            "DATABASE_URL": "postgres://u@h:5432/flespi",
            "PORT": "9000",
            "FLESPI_TOPOLOGY": json.dumps(document),
        }
    )
    assert [region.rest_url for region in elsewhere.regions] == [
        "http://eu.fleet.example:9000",
        "http://ru.fleet.example:9000",
    ]


def test_per_datacenter_database_url_wins():
    loaded = topology.load(
        {"DATABASE_URL": "postgres://u@h/flespi", "DATABASE_URL_RU_1": "postgres://x@ru/db"}
    )
    assert loaded.datacenter("ru-1").database_url == "postgres://x@ru/db"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"regions": []}, "the topology needs at least one region"),
        (
            {"regions": [{"code": "EU", "datacenters": [{"code": "eu-1", "number": 1}]}]},
            "regions[0].code must be a lowercase code",
        ),
        ({"regions": [{"code": "eu"}]}, "regions[0] (eu) needs at least one datacenter"),
        (
            {"regions": [{"code": "eu", "datacenters": [{"code": "eu-1", "number": 0}]}]},
            "regions[0].datacenters[0].number must be an integer in 1..1023",
        ),
        (
            {"regions": [{"code": "eu", "datacenters": [{"code": "eu-1", "number": 1024}]}]},
            "number must be an integer in 1..1023",
        ),
        (
            {
                "regions": [
                    {
                        "code": "eu",
                        "datacenters": [{"code": "eu-1", "number": 1}, {"code": "eu-2", "number": 1}],
                    }
                ]
            },
            "regions[0].datacenters[1].number 1 is already used by eu-1",
        ),
        (
            {
                "regions": [
                    {
                        "code": "eu",
                        "datacenters": [{"code": "eu-1", "number": 1}],
                        "default_datacenter": "eu-9",
                    }
                ]
            },
            "regions[0].default_datacenter 'eu-9' is not one of its datacenters",
        ),
        (
            {
                "default_region": "us",
                "regions": [{"code": "eu", "datacenters": [{"code": "eu-1", "number": 1}]}],
            },
            "default_region 'us' is not one of ['eu']",
        ),
        (
            {
                "regions": [
                    {"code": "eu", "datacenters": [{"code": "eu-1", "number": 1}]},
                    {"code": "eu", "datacenters": [{"code": "eu-2", "number": 2}]},
                ]
            },
            "region codes must be unique",
        ),
    ],
)
def test_inconsistent_topologies_are_refused(document, message):
    with pytest.raises(topology.TopologyError) as excinfo:
        load(document)
    assert message in str(excinfo.value)


def test_a_boolean_datacenter_number_is_refused():
    with pytest.raises(topology.TopologyError) as excinfo:
        load({"regions": [{"code": "eu", "datacenters": [{"code": "eu-1", "number": True}]}]})
    assert str(excinfo.value) == "regions[0].datacenters[0].number must be an integer in 1..1023"


EU_1 = {"code": "eu-1", "number": 1}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"regions": {"code": "eu"}}, "regions must be a JSON array"),
        ({"regions": [{"code": "eu", "datacenters": "eu-1"}]}, "regions[0].datacenters must be a JSON array"),
        (
            {"regions": [{"code": "eu", "datacenters": [EU_1], "rest_url": 8000}]},
            "regions[0].rest_url must be a string",
        ),
        (
            {"regions": [{"code": "eu", "datacenters": [EU_1], "mqtt_url": ["m"]}]},
            "regions[0].mqtt_url must be a string",
        ),
        (
            {"regions": [{"code": "eu", "datacenters": [EU_1], "redis_url": {}}]},
            "regions[0].redis_url must be a string",
        ),
        (
            {"regions": [{"code": "eu", "datacenters": [EU_1], "default_datacenter": ["eu-1"]}]},
            "regions[0].default_datacenter must be a string",
        ),
        (
            {"default_region": {"eu": 1}, "regions": [{"code": "eu", "datacenters": [EU_1]}]},
            "default_region must be a string",
        ),
        ({"domain": 5, "regions": [{"code": "eu", "datacenters": [EU_1]}]}, "domain must be a string"),
        (
            {
                "regions": [
                    {"code": "eu", "datacenters": [EU_1]},
                    {"code": "ru", "datacenters": [{"code": "eu-1", "number": 2}]},
                ]
            },
            "regions[1].datacenters[0].code eu-1 is already used by another datacenter",
        ),
    ],
)
def test_topologies_with_wrong_types_are_refused(document, message):
    with pytest.raises(topology.TopologyError) as excinfo:
        load(document)
    assert str(excinfo.value) == message


def test_topology_that_is_not_json_is_refused():
    with pytest.raises(topology.TopologyError, match="FLESPI_TOPOLOGY is not valid JSON"):
        topology.load({"FLESPI_TOPOLOGY": "{nope"})
    with pytest.raises(topology.TopologyError, match="must be a JSON object"):
        topology.load({"FLESPI_TOPOLOGY": "[]"})


def rows():
    return (
        list(Region.objects.values_list("code", "is_default")),
        list(Datacenter.objects.values_list("code", "region__code", "number", "is_default")),
    )


@pytest.mark.django_db(databases="__all__")
def test_sync_is_idempotent_and_follows_the_default(platform):
    before = rows()
    assert topology_sync() == (2, 3)
    assert rows() == before
    moved_default = load(
        {
            "default_region": "ru",
            "regions": [
                {
                    "code": "eu",
                    "datacenters": [{"code": "eu-1", "number": 1}, {"code": "eu-2", "number": 2}],
                    "default_datacenter": "eu-2",
                },
                {"code": "ru", "datacenters": [{"code": "ru-1", "number": 3}]},
            ],
        }
    )
    topology_sync(topology=moved_default)
    assert rows() == (
        [("eu", False), ("ru", True)],
        [("eu-1", "eu", 1, False), ("eu-2", "eu", 2, True), ("ru-1", "ru", 3, True)],
    )


@pytest.mark.django_db(databases="__all__")
@pytest.mark.parametrize(
    "datacenters",
    [
        [{"code": "eu-1", "number": 1}, {"code": "eu-2", "number": 5}],
        [{"code": "eu-1", "number": 1}, {"code": "ru-1", "number": 3}],
    ],
    ids=["renumbered", "moved-region"],
)
def test_sync_refuses_to_change_a_datacenters_number_or_region(platform, datacenters):
    before = rows()
    conflicting = load({"regions": [{"code": "eu", "datacenters": datacenters}]})
    with pytest.raises(TopologyConflict, match="cannot change"):
        topology_sync(topology=conflicting)
    assert rows() == before
