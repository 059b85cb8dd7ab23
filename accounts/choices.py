from django.db import models


class AccessType(models.IntegerChoices):
    STANDARD = 0, "standard"
    MASTER = 1, "master"


class MoveState(models.TextChoices):
    """Where a move between datacenters is (``accounts.moves``): rows are being copied (the
    source is authoritative), the placement was switched (the target is; the source's rows are
    still to be deleted), or it is done."""

    COPYING = "copying", "copying"
    SWITCHED = "switched", "switched"
    DONE = "done", "done"
