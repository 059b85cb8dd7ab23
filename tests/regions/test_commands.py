"""``manage.py platform_setup`` (``flespi migrate``): migrates every database under a lock, mirrors
the topology, creates a superuser once with a password that never reaches the log; running it
again changes nothing."""

from __future__ import annotations

import stat
import threading
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connections

from regions.models import Datacenter, Region

pytestmark = pytest.mark.django_db(databases="__all__")


def topology_rows():
    return (
        list(Region.objects.values_list("code", "rest_url", "mqtt_url", "is_default")),
        list(Datacenter.objects.values_list("code", "region__code", "number", "is_default")),
    )


def test_platform_setup_is_idempotent(settings, tmp_path, monkeypatch):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.STATE_DIR = tmp_path
    settings.ADMIN_PASSWORD = ""
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
    # The password is in a file of its owner only, and nowhere in the output.
    path = tmp_path / "admin-password"
    password = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert get_user_model().objects.get(username="admin").check_password(password)
    assert f"its password is in {path}" in first.getvalue()
    assert password not in first.getvalue()
    assert "migrating database dc_ru_1" in first.getvalue()

    call_command("platform_setup", stdout=second)
    assert topology_rows() == rows
    assert list(get_user_model().objects.values_list("username", "is_superuser")) == users
    assert "created superuser" not in second.getvalue()
    assert "topology: 2 regions, 3 datacenters" in second.getvalue()


def test_the_first_admin_password_can_come_from_the_environment(settings, tmp_path, monkeypatch):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.STATE_DIR = tmp_path
    settings.ADMIN_PASSWORD = "an operator's chosen password"
    out = StringIO()
    call_command("platform_setup", stdout=out)
    assert get_user_model().objects.get(username="admin").check_password("an operator's chosen password")
    assert "an operator's chosen password" not in out.getvalue()
    assert not (tmp_path / "admin-password").exists()


def test_a_second_migration_waits_for_the_first(settings, tmp_path):
    """Two hosts run `flespi migrate` at once: the second waits on the lock, says so, then finds
    nothing left to do."""
    from flespi_site.constants import MIGRATE_LOCK
    from regions.setup import _lock_connection

    settings.STATE_DIR = tmp_path
    with _lock_connection() as other:  # the first host's migration, in progress
        assert other.execute("SELECT pg_try_advisory_lock(%s)", [MIGRATE_LOCK]).fetchone()[0]
        out = StringIO()
        done = threading.Event()
        errors: list[BaseException] = []

        def second():
            try:
                call_command("platform_setup", "--no-superuser", stdout=out)
            except BaseException as error:  # reported below
                errors.append(error)
            finally:
                connections.close_all()  # this thread's own
                done.set()

        thread = threading.Thread(target=second)
        thread.start()
        assert not done.wait(1.5), "the second migration did not wait for the lock"
        assert "waiting for another migration to finish (backend pid" in out.getvalue()
        assert "migrating database" not in out.getvalue()
        other.execute("SELECT pg_advisory_unlock(%s)", [MIGRATE_LOCK])
        assert done.wait(60)
        thread.join()
    assert not errors
    assert "the other migration finished after" in out.getvalue()
    assert "topology: 2 regions, 3 datacenters" in out.getvalue()
