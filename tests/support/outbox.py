"""What the outbox holds, read as the relay publishes it: event rows one publish each, telemetry
rows (``OutboxKind.TELEMETRY``) one retained publish per value."""

from __future__ import annotations

import json

from django.db import connections

from devices.choices import OutboxKind
from flespi_site.mqtt.topics import device_telemetry_topic

_PUBLISHES = """
SELECT o.id, o.device_id, o.kind, o.topic, o.payload::text, o.retain, NULL
FROM outbox o WHERE o.kind = %(event)s {where}
UNION ALL
SELECT o.id, o.device_id, o.kind, NULL, e.value::text, o.retain, e.key
FROM outbox o CROSS JOIN LATERAL jsonb_each(o.payload) e WHERE o.kind = %(telemetry)s {where}
ORDER BY 1, 7
"""


def queued_events(alias: str, device_id: int | None = None) -> list[tuple[str, object, bool]]:
    """The publishes the outbox holds besides messages (topic relative to the root, decoded
    payload, retain), in the relay's order; of one device when named."""
    where = "AND o.device_id = %(device)s" if device_id is not None else ""
    with connections[alias].cursor() as cursor:
        cursor.execute(_PUBLISHES.format(where=where),
                       {"event": int(OutboxKind.EVENT), "telemetry": int(OutboxKind.TELEMETRY), "device": device_id})
        rows = cursor.fetchall()
    return [
        (topic if kind == OutboxKind.EVENT else device_telemetry_topic(device_id=device, parameter=name),
         None if payload is None else json.loads(payload), retain)
        for _id, device, kind, topic, payload, retain, name in rows
    ]
