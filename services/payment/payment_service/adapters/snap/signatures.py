"""SNAP signatures and timestamps.

* Access token (service 73): ``base64(SHA256withRSA(bank private key, client_id + "|" + ts))``.
* Transactions: ``base64(HMAC-SHA512(client_secret, stringToSign))`` with stringToSign =
  ``METHOD:path:accessToken:hex(sha256(minified body)):timestamp``.

Verification functions return ``False`` on any malformed input and never raise.
"""

import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone
from typing import TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from emeterai_shared.http import decode_json

from payment_service.domain.model import JAKARTA

DEFAULT_SKEW = timedelta(minutes=5)

PublicKeyLike: TypeAlias = bytes | str | rsa.RSAPublicKey
PrivateKeyLike: TypeAlias = bytes | str | rsa.RSAPrivateKey


def minify_json(raw: bytes) -> bytes:
    """Return the SNAP "minified" form of a JSON body (an empty body stays empty).

    Implemented as ``json.loads`` + ``json.dumps(separators=(",", ":"), ensure_ascii=False)``,
    the same as the ``JSON.stringify(JSON.parse(body))`` used by most bank SDKs: whitespace
    outside strings goes, key order and string contents stay. It differs from a purely lexical
    whitespace strip only for non-canonical numbers (``1.50`` becomes ``1.5``) and escaped
    characters (``\\u00e9`` becomes ``é``), which SNAP bodies do not use (amounts are strings).
    Raises ``ValueError`` when ``raw`` is not JSON.
    """
    if not raw.strip():
        return b""
    value = decode_json(raw)  # JsonBodyError is a ValueError; depth bounded before decoding
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def body_sha256_hex(raw: bytes) -> str:
    """Lowercase hex SHA-256 of the minified body."""
    return hashlib.sha256(minify_json(raw)).hexdigest()


def load_public_key(pem: PublicKeyLike) -> rsa.RSAPublicKey:
    """Load an RSA public key from PEM (``TypeError``/``ValueError`` when it is not one)."""
    if isinstance(pem, rsa.RSAPublicKey):
        return pem
    key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise TypeError("not an RSA public key")
    return key


def load_private_key(pem: PrivateKeyLike) -> rsa.RSAPrivateKey:
    """Load an unencrypted RSA private key from PEM (``TypeError``/``ValueError`` otherwise)."""
    if isinstance(pem, rsa.RSAPrivateKey):
        return pem
    key = serialization.load_pem_private_key(pem.encode() if isinstance(pem, str) else pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("not an RSA private key")
    return key


def _access_token_message(client_id: str, timestamp: str) -> bytes:
    return f"{client_id}|{timestamp}".encode()


def sign_access_token(private_key_pem: PrivateKeyLike, client_id: str, timestamp: str) -> str:
    """X-SIGNATURE of ``POST /snap/v1.0/access-token/b2b``: RSA PKCS#1 v1.5 over SHA-256."""
    key = load_private_key(private_key_pem)
    signature = key.sign(_access_token_message(client_id, timestamp), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode()


def verify_access_token_signature(
    public_key_pem: PublicKeyLike, client_id: str, timestamp: str, signature_b64: str
) -> bool:
    """True when ``signature_b64`` is the bank's access-token signature; never raises."""
    try:
        key = load_public_key(public_key_pem)
        signature = base64.b64decode(signature_b64, validate=True)
        key.verify(
            signature,
            _access_token_message(client_id, timestamp),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def string_to_sign(method: str, path: str, access_token: str, raw_body: bytes, timestamp: str) -> str:
    """SNAP symmetric stringToSign (raises ``ValueError`` when the body is not JSON)."""
    return f"{method.upper()}:{path}:{access_token}:{body_sha256_hex(raw_body)}:{timestamp}"


def _transaction_mac(client_secret: str, method: str, path: str, access_token: str, raw_body: bytes,
                     timestamp: str) -> bytes:
    message = string_to_sign(method, path, access_token, raw_body, timestamp).encode()
    return hmac.new(client_secret.encode(), message, hashlib.sha512).digest()


def sign_transaction(client_secret: str, method: str, path: str, access_token: str, raw_body: bytes,
                     timestamp: str) -> str:
    """X-SIGNATURE of a transaction request: base64(HMAC-SHA512(secret, stringToSign))."""
    mac = _transaction_mac(client_secret, method, path, access_token, raw_body, timestamp)
    return base64.b64encode(mac).decode()


def verify_transaction_signature(client_secret: str, method: str, path: str, access_token: str, raw_body: bytes,
                                 timestamp: str, signature_b64: str) -> bool:
    """Constant-time check of a transaction X-SIGNATURE; never raises."""
    try:
        expected = _transaction_mac(client_secret, method, path, access_token, raw_body, timestamp)
        given = base64.b64decode(signature_b64, validate=True)
    except (ValueError, TypeError):  # binascii.Error is a ValueError
        return False
    return hmac.compare_digest(expected, given)


def parse_snap_timestamp(value: str) -> datetime:
    """Parse an ISO-8601 X-TIMESTAMP; a UTC offset is mandatory (``ValueError`` otherwise)."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"timestamp without UTC offset: {value!r}")
    return parsed


def timestamp_within(ts: datetime, now: datetime, skew: timedelta = DEFAULT_SKEW) -> bool:
    """True when the aware ``ts`` is at most ``skew`` away from ``now`` (either direction)."""
    return abs(ts - now) <= skew


def format_snap_timestamp(dt: datetime | None = None, tz: timezone = JAKARTA) -> str:
    """Format an aware datetime (default: now) as e.g. ``2024-09-04T10:00:00+07:00``."""
    if dt is None:
        dt = datetime.now(tz)
    elif dt.tzinfo is None:
        raise ValueError("naive datetime")
    return dt.astimezone(tz).isoformat(timespec="seconds")
