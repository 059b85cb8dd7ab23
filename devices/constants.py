DEFAULT_MESSAGES_TTL = 365 * 86400
# Identifiers may not contain MQTT wildcards or separators (they become topic levels) nor
# control characters.
IDENT_FORBIDDEN = frozenset("#+/")
MAX_IDENT_LENGTH = 255
MAX_KEY_LENGTH = 255
MAX_STRING_LENGTH = 65536
# Messages dated further in the future than this (seconds) are refused: a wrong device clock
# must not create intervals that never close.
MAX_FUTURE_SECONDS = 86400
MAX_MESSAGES_PER_BATCH = 100_000
MESSAGES_PARTITIONS = 8
