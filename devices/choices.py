from django.db import models


class OutboxKind(models.IntegerChoices):
    MESSAGE = 1, "message"  # payload read from the messages table at publish time
    EVENT = 2, "event"  # payload and topic stored in the row
    # The telemetry values one write changed, ``{parameter: value}`` in the payload: one retained
    # ``state/gw/devices/{id}/telemetry/{parameter}`` publish each (``devices.outbox``).
    TELEMETRY = 3, "telemetry"
