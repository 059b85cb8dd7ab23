from django.db import models


class OutboxKind(models.IntegerChoices):
    MESSAGE = 1, "message"  # payload read from the messages table at publish time
    EVENT = 2, "event"  # payload and topic stored in the row
