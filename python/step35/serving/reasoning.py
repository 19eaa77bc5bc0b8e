"""Reasoning that travels to the client and back, checked by the server.

Agents get the model's reasoning back with each turn (Anthropic: a
``thinking`` block with a ``signature``; Responses: a ``reasoning`` item with
``encrypted_content``) and send it again on the next turn, where it is
rendered exactly where the chat template puts reasoning, so the new prompt
extends the one in the cache. The server must not trust reasoning a client
made up, so what it hands out is *sealed*: the text plus an HMAC-SHA256 under
a key of this server process (or ``STEP35_REASONING_KEY``, to keep seals valid
across restarts). The seal is signed, not encrypted: it is opaque to clients,
who must pass it back unchanged. A seal that fails the check is dropped, with
a warning in the log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import zlib

__all__ = ["KEY_ENV", "ReasoningSeal"]

#: Environment variable holding a key (any text) that keeps seals valid across server restarts.
KEY_ENV = "STEP35_REASONING_KEY"

_PREFIX = "s35r1."
_DOMAIN = b"step35 reasoning seal v1\x00"
_MAC_BYTES = 16
#: Longest sealed reasoning accepted back (characters of the seal), far above any real turn's.
_MAX_SEAL = 8 * 1024 * 1024

log = logging.getLogger("step35.serve")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ReasoningSeal:
    """Seals reasoning text for a client and opens what a client sends back.

    Args:
        key: the HMAC key; None takes ``STEP35_REASONING_KEY`` from the
            environment, else a random key for this process.
    """

    def __init__(self, key: bytes | str | None = None) -> None:
        if key is None:
            key = os.environ.get(KEY_ENV) or secrets.token_bytes(32)
        if isinstance(key, str):
            key = key.encode("utf-8")
        if not key:
            raise ValueError("the reasoning seal key must not be empty")
        self._key = hashlib.sha256(_DOMAIN + key).digest()

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def seal(self, text: str) -> str:
        """The opaque seal of ``text``: it carries the text, and only this server can make one."""
        payload = zlib.compress(text.encode("utf-8"), 6)
        return f"{_PREFIX}{_b64(payload)}.{_b64(self._mac(payload))}"

    def open(self, seal: object, *, where: str) -> str | None:
        """The text of a seal this server made; None (with a warning naming ``where``) for anything else."""
        if not isinstance(seal, str) or not seal:
            return None
        why = None
        if not seal.startswith(_PREFIX) or len(seal) > _MAX_SEAL:
            why = "it was not made by this server"
        else:
            body, _, mac = seal[len(_PREFIX):].partition(".")
            try:
                payload, tag = _unb64(body), _unb64(mac)
            except (binascii.Error, ValueError):
                payload, tag = b"", b""
            if not tag or not hmac.compare_digest(tag, self._mac(payload)):
                why = "its signature does not match (made by another server process or changed)"
            else:
                try:
                    return zlib.decompress(payload).decode("utf-8")
                except (zlib.error, UnicodeDecodeError):
                    why = "its content is damaged"
        log.warning("step35 serve: dropped the reasoning of %s: %s; the turn is rendered without it "
                    "(set %s to keep seals valid across restarts)", where, why, KEY_ENV)
        return None
