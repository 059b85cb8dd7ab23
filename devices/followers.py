"""What follows a change of a device's metadata.

The calculators whose expressions read ``device.metadata`` (``analytics``) recalculate the
device's assignments when it changes. ``analytics`` sits above ``devices``: it installs its
follower when the app registry is ready (``AnalyticsConfig.ready`` calls
``metadata_follower_provide``), and ``devices.services`` calls ``metadata_changed`` in the
transaction that changes the metadata, so that the request and the change commit together.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol


class MetadataFollower(Protocol):
    def metadata_changed(self, *, alias: str, device_ids: Collection[int]) -> None:
        """The metadata of ``device_ids`` (devices in database ``alias``) changed: act on it in
        the caller's transaction."""
        ...


_followers: list[MetadataFollower] = []


def metadata_follower_provide(follower: MetadataFollower) -> None:
    """Install a follower of metadata changes (once, when the app registry is ready)."""
    if follower not in _followers:
        _followers.append(follower)


def metadata_changed(*, alias: str, device_ids: Iterable[int]) -> None:
    """Tell the followers, in the caller's transaction on ``alias``."""
    ids = sorted(set(device_ids))
    if not ids:
        return
    for follower in _followers:
        follower.metadata_changed(alias=alias, device_ids=ids)
