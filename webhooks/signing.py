"""The signature of a webhook request (docs/webhooks.md, "Verifying a request"). No Django here.

Every request carries ``X-Webhook-Id`` (the event's delivery id, the same on every retry: a
receiver deduplicates on it), ``X-Webhook-Timestamp`` (unix seconds when this attempt was signed)
and ``X-Webhook-Signature: sha256=<hex>``, the HMAC-SHA256 with the webhook's secret of the
timestamp, a dot, and the body's bytes. A receiver recomputes it, compares in constant time, and
refuses a timestamp older than a few minutes (a replayed request).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ID_HEADER = "X-Webhook-Id"
TIMESTAMP_HEADER = "X-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Webhook-Signature"
SCHEME = "sha256="
SECRET_BYTES = 32


def secret_new() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def signature(*, secret: str, timestamp: int, body: bytes) -> str:
    """The value of ``X-Webhook-Signature`` for ``body`` signed at ``timestamp``."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return SCHEME + digest


def verify(*, secret: str, timestamp: str, body: bytes, signed: str, now: float, tolerance: float = 300) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(signature(secret=secret, timestamp=int(timestamp), body=body), signed)
