"""Constants of the analytics app."""

from __future__ import annotations

# The fields of a calculator whose change changes the intervals it computes: a change of any of
# them gives the calculator a new version (and, with update_onchange, recalculates).
RESULT_FIELDS = ("messages_source", "selectors", "counters", "validate_message", "validate_interval", "timezone")
# Intervals are stored in this many hash partitions by device (like messages).
INTERVALS_PARTITIONS = 8
# A user-field object (PUT on an interval) is at most this large, encoded.
MAX_USER_FIELDS_BYTES = 64 * 1024
# Intervals answered per assignment by one GET when the request names no count.
DEFAULT_INTERVALS_COUNT = 100_000
# A rollup answers at most this many calendar periods per device (a year of days, 41 days of
# hours); a longer range is refused, to be asked in parts or by a longer period.
MAX_ROLLUP_PERIODS = 1000
# Devices aggregated by one statement of a rollup.
ROLLUP_DEVICES_CHUNK = 1000
