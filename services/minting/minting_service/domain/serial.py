"""Serial numbers: 22 characters of ``[0-9A-Z]``, the last one an ISO/IEC 7064 MOD 37,36 check.

Layout: an optional prefix (0-4 characters, chosen by the operator for a stock batch), a random
body drawn from ``secrets`` (17-21 characters, at least 87 bits, so no serial can be guessed
from another), then one check character. Uniqueness is the database's primary key, not this
module's business.

MOD 37,36 is the hybrid system of ISO/IEC 7064 for alphanumeric data. It catches every single
character substitution, and every transposition of adjacent characters except some swaps of two
characters that are neighbours in ``ALPHABET`` ("45" for "54", "AB" for "BA", "Z0" for "0Z"): a
swap goes unseen exactly when the running sums before the two characters are 18 and 19, which
happens to such a pair once in 36 (about 1 in 630 random adjacent swaps). So a verifier tells a
mistyped serial from an unknown one without asking the database.
"""

from __future__ import annotations

import re
import secrets

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LENGTH = 22
MAX_PREFIX = 4
PREFIX_PATTERN = re.compile(r"^[0-9A-Z]{0,4}$")

_VALUES = {c: i for i, c in enumerate(ALPHABET)}
_M = len(ALPHABET)  # MOD 37,36: M = 36, M + 1 = 37
# Random bytes below 252 (= 7 x 36) map uniformly onto the alphabet; the others are dropped.
_TO_ALPHABET = bytes(ord(ALPHABET[b % _M]) for b in range(256))
_REJECTED = bytes(range(256 - 256 % _M, 256))


def check_char(data: str) -> str:
    """The MOD 37,36 check character for ``data`` (characters of ``ALPHABET``)."""
    p = _M
    for c in data:
        s = (p + _VALUES[c]) % _M or _M
        p = 2 * s % (_M + 1)
    return ALPHABET[(_M + 1 - p) % _M]


def is_well_formed(sn: str) -> bool:
    """True for 22 characters of ``[0-9A-Z]``, whatever the check character."""
    return len(sn) == LENGTH and all(c in _VALUES for c in sn)


def is_valid(sn: str) -> bool:
    """True for 22 characters of ``[0-9A-Z]`` whose last one checks the others."""
    return is_well_formed(sn) and check_char(sn[:-1]) == sn[-1]


def is_valid_prefix(prefix: str) -> bool:
    return PREFIX_PATTERN.match(prefix) is not None


def generate(prefix: str = "") -> str:
    """A new serial: ``prefix`` + cryptographically random body + check character."""
    if not is_valid_prefix(prefix):
        raise ValueError(f"a serial prefix is 0-{MAX_PREFIX} characters of [0-9A-Z], not {prefix!r}")
    size = LENGTH - 1 - len(prefix)
    body = b""
    while len(body) < size:  # 32 bytes almost always give enough accepted ones at the first draw
        body += secrets.token_bytes(32).translate(_TO_ALPHABET, _REJECTED)
    data = prefix + body[:size].decode("ascii")
    return data + check_char(data)
