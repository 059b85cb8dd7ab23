"""MQTT clients of the platform (paho-mqtt 2, callback API version 2)."""

from __future__ import annotations

import ssl
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def broker_address(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of an ``mqtt://`` or ``mqtts://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"MQTT URL {url!r} must start with mqtt:// or mqtts://")
    tls = parts.scheme in ("mqtts", "ssl")
    return parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls


def platform_credentials() -> tuple[str, str] | None:
    """The platform's own login on brokers with access control (``MQTT_PLATFORM_USERNAME`` and
    ``MQTT_PLATFORM_PASSWORD``), or None when no password is configured."""
    from django.conf import settings

    if not settings.configured or not settings.MQTT_PLATFORM_PASSWORD:
        return None
    return settings.MQTT_PLATFORM_USERNAME, settings.MQTT_PLATFORM_PASSWORD


def login_for(url: str, credentials: tuple[str, str] | None = None) -> tuple[str, str] | None:
    """The login of a platform client on the broker at ``url``: ``credentials``, else those of
    the URL, else the platform's (``platform_credentials``); None: anonymous."""
    parts = urlsplit(url)
    if credentials is None and parts.username:
        credentials = unquote(parts.username), unquote(parts.password or "")
    return credentials or platform_credentials()


def client_for(
    url: str, *, client_id: str, clean_session: bool = True, credentials: tuple[str, str] | None = None,
    mqtt5: bool = False,
) -> paho.Client:
    """A configured, not yet connected client for the broker at ``url``, logging in as
    ``login_for`` says. ``mqtt5``: speak MQTT 5 (the session's persistence is then said at connect: ``session_properties``)."""
    _host, _port, tls = broker_address(url)
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
        clean_session=None if mqtt5 else clean_session, protocol=paho.MQTTv5 if mqtt5 else paho.MQTTv311,
    )
    credentials = login_for(url, credentials)
    if credentials is not None:
        client.username_pw_set(*credentials)
    if tls:
        client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    return client


def session_properties(*, expiry: int, receive_maximum: int) -> Properties:
    """MQTT 5 CONNECT properties of a persistent session kept ``expiry`` seconds after it
    disconnects, which takes up to ``receive_maximum`` unacknowledged messages at once."""
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = expiry
    properties.ReceiveMaximum = receive_maximum
    return properties


def connect(client: paho.Client, url: str, *, keepalive: int = 30) -> None:
    host, port, _tls = broker_address(url)
    client.connect(host, port, keepalive=keepalive)
