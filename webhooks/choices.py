from django.db import models


class DeliveryStatus(models.IntegerChoices):
    """Where an event of a webhook's delivery log stands."""

    PENDING = 0, "pending"  # queued, or failed and waiting for its next attempt
    DELIVERED = 1, "delivered"  # the receiver answered 2xx
    DROPPED = 2, "dropped"  # still failing when the webhook's retry time ran out


class Method(models.TextChoices):
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"
    GET = "GET"
