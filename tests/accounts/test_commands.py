"""``manage.py account_create``."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounts.choices import AccessType
from accounts.models import Account, Token
from accounts.services import token_authenticate

pytestmark = pytest.mark.django_db(databases="__all__")


def run(*args: str) -> list[str]:
    out = StringIO()
    call_command("account_create", *args, stdout=out)
    return out.getvalue().splitlines()


def test_prints_the_key_alone_on_the_last_line_and_it_authenticates(platform):
    lines = run("--name", "fleet", "--token")
    account = Account.objects.get(name="fleet")
    assert lines[0] == f"account {account.pk} 'fleet' in region eu, datacenter eu-1"
    key = lines[-1]
    assert key == key.strip() and " " not in key and len(key) == 64
    token = token_authenticate(key=key)
    assert (token.account_id, token.access_type) == (account.pk, AccessType.MASTER)


def test_subaccount_in_a_region_and_datacenter(platform):
    root = Account.objects.get(pk=int(run("--name", "root")[0].split()[1]))
    lines = run("--name", "moscow", "--parent", str(root.pk), "--region", "ru", "--token")
    account = Account.objects.get(name="moscow")
    assert (account.parent_id, account.region.code, account.datacenter.code) == (root.pk, "ru", "ru-1")
    assert token_authenticate(key=lines[-1]).account_id == account.pk
    run("--name", "second", "--parent", str(root.pk), "--datacenter", "eu-2")
    assert Account.objects.get(name="second").datacenter.code == "eu-2"


def test_without_token_prints_no_key(platform):
    assert len(run("--name", "plain")) == 1
    assert not Token.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--region", "ru"], "a root account lives in the default region eu"),
        (["--datacenter", "ru-1"], "datacenter ru-1 is in region ru, not in eu"),
        (["--parent", "999999999"], "parent account 999999999 does not exist"),
    ],
)
def test_refusals_are_command_errors_and_store_nothing(platform, args, message):
    with pytest.raises(CommandError) as excinfo:
        run("--name", "refused", "--token", *args)
    assert message in str(excinfo.value)
    assert not Account.objects.exists()
    assert not Token.objects.exists()
