"""Limits of a webhook (docs/webhooks.md)."""

MAX_TRIGGERS = 3  # flespi's: triggers are joined with OR
MAX_HEADERS = 32
MAX_URL = 2048
MAX_RETRY_SECONDS = 7 * 86400
DEFAULT_RETRY_SECONDS = 86400
MAX_TIMEOUT = 60
DEFAULT_TIMEOUT = 10
CONFIGURATION_TYPE = "custom-server"  # flespi's name of a request to a server outside the platform
# Headers the platform sets itself: a webhook's own headers cannot name them.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "x-webhook-id",
                              "x-webhook-timestamp", "x-webhook-signature"})
