"""Phone sign-in rules, pure: phones, one-time codes, their limits, refresh tokens.

A code is 6 digits drawn from ``secrets``; only its keyed digest is stored (HMAC-SHA256 over the
phone and the code, with the service's OTP key), so a database dump yields no code and a fast
keyed hash keeps a sign-in as cheap as an order (no slow password hashing on the hot path: the
code's short life, single use and ``MAX_WRONG_TRIES`` are what stop guessing). Refresh tokens are
32 random bytes; only their SHA-256 is stored.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

CODE_DIGITS = 6
MAX_WRONG_TRIES = 5
"""Wrong codes after which the pending code is void (a new one must be requested)."""
_CODE = re.compile(r"[0-9]{6}")


def normalize_phone(phone: str) -> str:
    """One form per phone: ``+`` and digits; a national ``0...`` number is Indonesian (``+62...``)."""
    digits = phone.strip()
    if digits.startswith("+"):
        return digits
    if digits.startswith("0"):
        return "+62" + digits[1:]
    return "+" + digits


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def code_digest(key: bytes, phone: str, code: str) -> bytes:
    return hmac.new(key, f"{phone}\x00{code}".encode(), hashlib.sha256).digest()


def code_matches(key: bytes, phone: str, code: str, digest: bytes) -> bool:
    """Constant-time comparison of the keyed digests (a malformed code is compared all the same)."""
    return hmac.compare_digest(code_digest(key, phone, code), digest)


def sms_text(code: str, ttl_s: int) -> str:
    """The text with the code: the only 6-digit number in it."""
    minutes = max(1, ttl_s // 60)
    text = (f"Kode masuk e-meterai Anda: {code}. Berlaku {minutes} menit. "
            "Jangan berikan kode ini kepada siapa pun.")
    assert _CODE.findall(text) == [code]
    return text


def code_in(text: str) -> str | None:
    """The code in a text (``sms_text``), for whoever reads the development sink."""
    found = re.findall(r"(?<![0-9])[0-9]{6}(?![0-9])", text)
    return found[0] if len(found) == 1 else None


class CodeCheck(enum.Enum):
    ACCEPTED = "accepted"
    WRONG = "wrong"
    """Counted against the pending code; the fifth wrong one voids it."""
    NO_CODE = "no_code"
    """None pending, expired, or void after too many wrong tries."""


@dataclass(frozen=True)
class PendingCode:
    digest: bytes
    expires_at: datetime
    wrong_tries: int


_NO_DIGEST = bytes(32)


def check_code(key: bytes, phone: str, code: str, pending: PendingCode | None, now: datetime) -> CodeCheck:
    """The digest is compared whether or not a code is pending, so the time taken tells nothing."""
    matches = code_matches(key, phone, code, pending.digest if pending is not None else _NO_DIGEST)
    if pending is None or now >= pending.expires_at or pending.wrong_tries >= MAX_WRONG_TRIES:
        return CodeCheck.NO_CODE
    return CodeCheck.ACCEPTED if matches else CodeCheck.WRONG


@dataclass(frozen=True)
class Limit:
    """At most ``limit`` hits per fixed window of ``window_s`` for ``key``; ``limit`` 0 disables it."""

    key: str
    limit: int
    window_s: int

    def window_start(self, now: datetime) -> datetime:
        epoch = now.timestamp()
        return now - timedelta(seconds=epoch - math.floor(epoch / self.window_s) * self.window_s)

    def retry_after_s(self, now: datetime) -> int:
        """Seconds until this window ends (at least 1)."""
        end = self.window_start(now) + timedelta(seconds=self.window_s)
        return max(1, math.ceil((end - now).total_seconds()))


def code_request_limits(phone: str, client: str, *, per_phone: tuple[tuple[int, int], ...],
                        per_client: tuple[tuple[int, int], ...]) -> list[Limit]:
    """The limits a code request counts against: ``(limit, window_s)`` pairs per phone and per client."""
    limits = [Limit(f"otp:phone:{phone}:{w}", n, w) for n, w in per_phone if n > 0 and w > 0]
    limits += [Limit(f"otp:client:{client}:{w}", n, w) for n, w in per_client if n > 0 and w > 0]
    return limits


def exceeded(limits: list[Limit], hits: dict[str, int], now: datetime) -> int | None:
    """None when every limit holds after these hits, else the Retry-After (the longest wait)."""
    waits = [limit.retry_after_s(now) for limit in limits if hits.get(limit.key, 0) > limit.limit]
    return max(waits) if waits else None


def new_refresh_token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def refresh_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
