"""The operator's allow-list of webhook addresses (no database): which addresses pass, on the
literal host and on what a name really resolves to."""

from __future__ import annotations

import ipaddress
import re

import pytest

from webhooks.addresses import AddressPolicy, AddressRefused, allowed_addresses

DEFAULT = AddressPolicy.parse([])


@pytest.mark.parametrize(("address", "problem"), [
    ("93.184.216.34", None),
    ("2606:4700::1111", None),
    ("10.0.0.1", "10.0.0.1 is a private address, which WEBHOOK_ALLOW does not list"),
    ("172.16.5.4", "172.16.5.4 is a private address, which WEBHOOK_ALLOW does not list"),
    ("192.168.0.1", "192.168.0.1 is a private address, which WEBHOOK_ALLOW does not list"),
    ("127.0.0.1", "127.0.0.1 is a loopback address, which WEBHOOK_ALLOW does not list"),
    ("::1", "::1 is a loopback address, which WEBHOOK_ALLOW does not list"),
    ("169.254.169.254", "169.254.169.254 is a link-local address, which WEBHOOK_ALLOW does not list"),
    ("fe80::1", "fe80::1 is a link-local address, which WEBHOOK_ALLOW does not list"),
    ("239.1.1.1", "239.1.1.1 is a multicast address, which WEBHOOK_ALLOW does not list"),
    ("100.64.0.1", "100.64.0.1 is not a public address, which WEBHOOK_ALLOW does not list"),
    ("::ffff:192.168.1.1", "192.168.1.1 is a private address, which WEBHOOK_ALLOW does not list"),
])
def test_only_public_addresses_pass_by_default(address, problem):
    assert DEFAULT.address_problem(ipaddress.ip_address(address)) == problem


def test_listed_networks_and_names_pass_and_public_can_be_turned_off():
    policy = AddressPolicy.parse(["10.0.0.0/8", " 127.0.0.1 ", "crm.internal", "*.corp"], allow_public=False)
    assert policy.address_problem(ipaddress.ip_address("10.200.0.1")) is None
    assert policy.address_problem(ipaddress.ip_address("127.0.0.1")) is None
    assert policy.address_problem(ipaddress.ip_address("127.0.0.2")) == (
        "127.0.0.2 is a loopback address, which WEBHOOK_ALLOW does not list")
    assert policy.address_problem(ipaddress.ip_address("93.184.216.34")) == "93.184.216.34 is not in WEBHOOK_ALLOW"
    assert [policy.name_allowed(name) for name in ("crm.internal", "CRM.internal.", "a.b.corp", "corp", "x.internal")] == [
        True, True, True, False, False]


def test_a_bad_entry_is_named():
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33' is neither a network")):
        AddressPolicy.parse(["10.0.0.0/33"])


def test_a_name_is_judged_by_what_it_resolves_to():
    # localhost resolves (the system's resolver) to loopback: refused unless listed
    with pytest.raises(AddressRefused, match=re.escape("localhost resolves to 127.0.0.1 is a loopback address")):
        allowed_addresses("localhost", 80, policy=AddressPolicy.parse(["::1"]))
    assert "127.0.0.1" in allowed_addresses("localhost", 80, policy=AddressPolicy.parse(["127.0.0.1", "::1"]))
    with pytest.raises(AddressRefused, match=re.escape("no-such-host.invalid does not resolve")):
        allowed_addresses("no-such-host.invalid", 80, policy=DEFAULT)
