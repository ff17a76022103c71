"""Webhook signing keys: the per-domain key once rotated, the legacy installation key before.

001 (emailgateway.regeneratesigningkey): until a domain's key is rotated, its webhooks are
signed with a legacy installation-wide secret formatted ``XXXX-XXXX-XXXX-XXXX-XXXX-XXXX-XXXX-XXXX``
(the original derives it with md5 from installation secrets). Ours is derived the same
deterministic way from this installation's secret, the admin API key:

    hex(HMAC-SHA256(key=admin_api_key, msg="relay webhook legacy signing key v1"))[:32]

upper-cased and split in groups of four. HMAC makes it one-way (the key reveals nothing about
the admin key) and stable across restarts and nodes; rotating the admin key changes it, which is
one more reason to rotate domains onto their own keys. A rotated key is 64 upper-case hex
characters (256 bits), stored sealed by ``SecretBox``.
"""

from __future__ import annotations

import hashlib
import hmac

from relay.config import Settings
from relay.secrets import SecretBox

_LEGACY_CONTEXT = b"relay webhook legacy signing key v1"


def legacy_signing_key(settings: Settings) -> str:
    digest = hmac.new(
        settings.admin.api_key.encode("utf-8"), _LEGACY_CONTEXT, hashlib.sha256
    ).hexdigest()
    text = digest[:32].upper()
    return "-".join(text[i : i + 4] for i in range(0, 32, 4))


def signing_key(settings: Settings, box: SecretBox, stored: str | None) -> str:
    """The key a domain's webhooks are signed with (``stored``: its sealed column value)."""
    if stored:
        return box.open(stored)
    return legacy_signing_key(settings)
