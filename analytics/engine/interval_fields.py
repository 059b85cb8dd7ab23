"""The fields of an interval besides its counters, by who writes them: the one list the engine,
storage, the API and the admin read. No Django here."""

from __future__ import annotations

# Computed by the engine for every interval; stored as columns of their own.
ENGINE_FIELDS = ("id", "begin", "end", "duration")
# When storage last wrote the interval.
STAMP_FIELD = "timestamp"
# Whose interval it is: added to a stored interval when it is read.
OWNER_FIELDS = ("calc_id", "device_id")

# Names no counter may take.
COUNTER_RESERVED = (*ENGINE_FIELDS, STAMP_FIELD)
# Every field of a stored interval that is not a counter or a user field: names no user field
# may take.
INTERVAL_FIELDS = (*ENGINE_FIELDS, STAMP_FIELD, *OWNER_FIELDS)
