"""``manage.py platform_setup``: migrates every database, mirrors the topology, creates a
superuser once; running it again changes nothing."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from regions.models import Datacenter, Region

pytestmark = pytest.mark.django_db(databases="__all__")


def topology_rows():
    return (
        list(Region.objects.values_list("code", "rest_url", "mqtt_url", "is_default")),
        list(Datacenter.objects.values_list("code", "region__code", "number", "is_default")),
    )


def test_platform_setup_is_idempotent(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    first, second = StringIO(), StringIO()
    call_command("platform_setup", stdout=first)
    rows = topology_rows()
    assert rows == (
        [
            ("eu", settings.TOPOLOGY.region("eu").rest_url, settings.TOPOLOGY.region("eu").mqtt_url, True),
            ("ru", settings.TOPOLOGY.region("ru").rest_url, settings.TOPOLOGY.region("ru").mqtt_url, False),
        ],
        [("eu-1", "eu", 1, True), ("eu-2", "eu", 2, False), ("ru-1", "ru", 3, True)],
    )
    users = list(get_user_model().objects.values_list("username", "is_superuser"))
    assert users == [("admin", True)]
    assert "created superuser admin with password" in first.getvalue()
    assert "migrating database dc_ru_1" in first.getvalue()

    call_command("platform_setup", stdout=second)
    assert topology_rows() == rows
    assert list(get_user_model().objects.values_list("username", "is_superuser")) == users
    assert "created superuser" not in second.getvalue()
    assert "topology: 2 regions, 3 datacenters" in second.getvalue()
