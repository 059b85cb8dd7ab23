"""Choices of the analytics app."""

from __future__ import annotations

from django.db import models


class AssignmentState(models.TextChoices):
    """Where an assignment's stored intervals stand (docs/analytics.md, "Assignment states").

    ``unsynced``: its intervals are not computed yet (just assigned, enabled again, or its
    calculator changed with ``update_onchange``); ``synchronizing``: a calc worker is copying the
    device's messages into its shard cache and computing the whole history; ``synced``: the stored
    intervals are complete and kept current as messages arrive.
    """

    UNSYNCED = "unsynced"
    SYNCHRONIZING = "synchronizing"
    SYNCED = "synced"
