"""Where a webhook may send: the operator's allow-list applied to a URL's host and to every address
it resolves to. No Django here: the settings are passed in as an ``AddressPolicy``.

A public (globally routable) address is allowed unless the operator turned that off
(``WEBHOOK_ALLOW_PUBLIC``). Every other address (private, loopback, link-local, multicast,
reserved, shared, unspecified: whatever ``ipaddress`` does not call global, and an IPv4 address
inside IPv6) is refused unless ``WEBHOOK_ALLOW`` lists a network holding it, or lists the URL's
host name (``crm.internal``, or ``*.internal`` for its subdomains). The check runs when a webhook
is saved and again on the resolved addresses before every connection, which then goes to the
address checked (a name that resolves elsewhere after the save, DNS rebinding, is refused).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]


class AddressRefused(ValueError):
    """The URL's host or one of its addresses is not allowed (the reason says which)."""


@dataclass(frozen=True)
class AddressPolicy:
    networks: tuple[IPNetwork, ...] = ()
    names: tuple[str, ...] = ()  # lower case; "*.example.com" allows the subdomains
    allow_public: bool = True

    @classmethod
    def parse(cls, entries: Iterable[str], *, allow_public: bool = True) -> AddressPolicy:
        """From the allow-list's entries: networks (``10.0.0.0/8``, ``127.0.0.1``) and host names;
        ``ValueError`` naming an entry that is neither."""
        networks, names = [], []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            label = entry[2:] if entry.startswith("*.") else entry
            if not label or not all(part and part.replace("-", "").isalnum() for part in label.split(".")):
                raise ValueError(f"{raw!r} is neither a network (10.0.0.0/8) nor a host name (crm.internal)")
            names.append(entry)
        return cls(tuple(networks), tuple(names), allow_public)

    def name_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for name in self.names:
            if name.startswith("*.") and host.endswith(name[1:]):
                return True
            if host == name:
                return True
        return False

    def address_problem(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused, or None."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.networks):
            return None
        if address.is_global and not address.is_multicast:
            return None if self.allow_public else f"{address} is not in WEBHOOK_ALLOW"
        return f"{address} is {_kind(address)}, which WEBHOOK_ALLOW does not list"


def _kind(address: IPAddress) -> str:
    for attribute, kind in (
        ("is_loopback", "a loopback address"), ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"), ("is_unspecified", "the unspecified address"),
        ("is_private", "a private address"), ("is_reserved", "a reserved address"),
    ):
        if getattr(address, attribute):
            return kind
    return "not a public address"


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def system_resolve(host: str, port: int) -> list[str]:
    """The addresses of ``host`` (IPv4 and IPv6) from the system's resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def allowed_addresses(
    host: str, port: int, *, policy: AddressPolicy, resolve: Resolver = system_resolve
) -> Sequence[str]:
    """The addresses to connect to for ``host``, every one of them allowed; ``AddressRefused``
    when the host does not resolve or any address is refused (a name with one address the
    operator did not allow is refused whole: a resolver that rotates would reach it next time)."""
    literal = literal_address(host)
    if literal is not None:
        problem = policy.address_problem(literal)
        if problem:
            raise AddressRefused(problem)
        return [str(literal)]
    if policy.name_allowed(host):
        try:
            return resolve(host, port)
        except OSError as error:
            raise AddressRefused(f"{host} does not resolve: {error}") from None
    try:
        addresses = resolve(host, port)
    except OSError as error:
        raise AddressRefused(f"{host} does not resolve: {error}") from None
    if not addresses:
        raise AddressRefused(f"{host} does not resolve")
    for text in addresses:
        problem = policy.address_problem(ipaddress.ip_address(text.split("%", 1)[0]))
        if problem:
            raise AddressRefused(f"{host} resolves to {problem}")
    return addresses
