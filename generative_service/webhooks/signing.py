"""Standard Webhooks signatures.

`webhook-signature` is `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per configured
`whsec_` secret (the key is the base64 after the prefix), space-separated: during a rotation the
receiver accepts whichever secret it knows. The timestamp is the attempt's, so a retry carries a
fresh signature while `webhook-id` stays that of the event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from generative_service.settings import Settings

SECRET_PREFIX = "whsec_"


def secret_keys(settings: Settings) -> list[bytes]:
    """The HMAC keys of the configured secrets (Settings already checked their format)."""
    keys = []
    for secret in settings.webhook_secrets:
        body = secret.removeprefix(SECRET_PREFIX)
        keys.append(base64.b64decode(body + "=" * (-len(body) % 4)))
    return keys


def sign(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: one `v1,` signature per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")
        for key in keys
    )


def headers(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(keys, msg_id, timestamp, body),
    }
