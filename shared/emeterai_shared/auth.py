"""Bearer tokens every service verifies locally, without calling the order service.

The order service signs EdDSA (Ed25519) JWTs with its private key; every service holds the
public key(s) (``auth_public_key_file``, one or more PEM keys, so a new key can be published
before it signs anything). Claims: ``sub`` (account id), ``kind`` (``buyer``), ``iss``, ``aud``,
``iat``, ``exp``, and ``sid`` (the sign-in session) on tokens from phone sign-in. A missing,
malformed, forged, expired or wrongly addressed token is a 401.

Verified tokens are cached (``TokenVerifier``): a signed-in applicant sends the same token with
every request (its order, each status poll, its uploads), and checking an Ed25519 signature again
each time cost about a tenth of the order api's CPU in a rush. Nothing makes an access token
invalid before its ``exp`` (a logout or a reused refresh token revokes refresh tokens; issued
access tokens run until they expire), so a token verified once stays valid until then; the checks
that do depend on the database (``superseded``) are made per request by the services, cache or not.

Squatting rule: once an account's phone is verified by a sign-in with a code, its tokens without
a ``sid`` (``POST /v1/accounts`` tokens, which prove nothing about the phone) are refused with
401 ``token_superseded`` (``superseded``) by the services that know of the verification.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from emeterai_shared.files import locked, write_atomic
from emeterai_shared.http import ApiError

ISSUER = "emeterai-order"
AUDIENCE = "emeterai"
ALGORITHM = "EdDSA"


@dataclass(frozen=True)
class Principal:
    account_id: uuid.UUID
    kind: str
    partner_id: str | None = None
    sid: str | None = None
    """The sign-in session of a token from phone sign-in; None for ``POST /v1/accounts`` tokens."""


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()[:16]


def ensure_keypair(private_path: Path, public_path: Path) -> bool:
    """Create a development key pair when none exists; True when one was created.

    Safe when several processes start at once: one creates the pair under a lock, the public half
    first, so that whoever sees the private key also finds the public one, both complete."""
    if private_path.exists():
        return False
    with locked(private_path.with_name(f".{private_path.name}.lock")):
        if private_path.exists():
            return False
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        write_atomic(public_path, key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        write_atomic(private_path, pem, mode=0o600)
    return True


def load_public_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """All Ed25519 public keys in a PEM file (several may be concatenated), by key id."""
    keys: dict[str, Ed25519PublicKey] = {}
    text = path.read_bytes()
    marker = b"-----END PUBLIC KEY-----"
    for chunk in text.split(marker):
        if b"-----BEGIN PUBLIC KEY-----" not in chunk:
            continue
        key = serialization.load_pem_public_key(chunk.strip() + b"\n" + marker + b"\n")
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path}: only Ed25519 public keys are accepted")
        keys[key_id(key)] = key
    if not keys:
        raise ValueError(f"{path}: no public key found")
    return keys


class TokenIssuer:
    def __init__(self, private_key_pem: bytes, ttl: timedelta):
        key = serialization.load_pem_private_key(private_key_pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the token signing key must be Ed25519")
        self._key = key
        self._kid = key_id(key.public_key())
        self._ttl = ttl

    def issue(self, account_id: uuid.UUID, kind: str = "buyer", *, sid: str | None = None,
              ttl: timedelta | None = None) -> str:
        now = datetime.now(UTC)
        claims: dict[str, object] = {"sub": str(account_id), "kind": kind, "iss": ISSUER, "aud": AUDIENCE,
                                     "iat": now, "exp": now + (ttl or self._ttl)}
        if sid is not None:
            claims["sid"] = sid
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self._kid})


def _refused(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class TokenVerifier:
    """Verifies bearer tokens, remembering the ones it verified.

    The cache maps the exact token string (header, claims and signature) to its principal, so a
    token that differs in any byte, its signature included, is verified afresh; only tokens that
    passed every check are kept, each until its ``exp`` and for at most ``cache_max_age_s`` (a
    bound on what a stale entry could ever do, e.g. if keys were one day reloaded without
    ``clear()``); at most ``cache_size`` tokens, the least recently used leaving first. Expiry is
    also checked on the ``clock`` (Unix seconds) after PyJWT's own check, so a test can move time
    past ``exp`` for cached and fresh tokens alike. ``cache_size=0`` verifies every time."""

    def __init__(self, public_keys: dict[str, Ed25519PublicKey], *, cache_size: int = 10_000,
                 cache_max_age_s: float = 60.0, clock: Callable[[], float] = time.time):
        self._keys = public_keys
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_max_age_s = cache_max_age_s
        self._clock = clock

    def verify(self, token: str) -> Principal:
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None:
            principal, valid_until = cached
            if now < valid_until:
                self._cache.move_to_end(token)
                return principal
            del self._cache[token]
        principal, exp = self._verified(token)
        if now >= exp:  # PyJWT checked exp on its own clock; ours decides for the cache too
            raise _refused("token_expired", "the token has expired; create a new one")
        if self._cache_size > 0:
            self._cache[token] = (principal, min(exp, now + self._cache_max_age_s))
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return principal

    def _verified(self, token: str) -> tuple[Principal, int]:
        """The token's principal and ``exp``, after checking its signature and every claim."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise ApiError(401, "invalid_token", "token signed by an unknown key")
            claims = jwt.decode(token, key, algorithms=[ALGORITHM], audience=AUDIENCE,
                                issuer=ISSUER, options={"require": ["sub", "exp", "iat"]})
            sid = claims.get("sid")
            return (Principal(account_id=uuid.UUID(claims["sub"]), kind=str(claims.get("kind", "")),
                              sid=sid if isinstance(sid, str) else None), int(claims["exp"]))
        except jwt.ExpiredSignatureError:
            raise _refused("token_expired", "the token has expired; create a new one") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise _refused("invalid_token", "the bearer token is not valid") from None

    @property
    def cached(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Forget every verified token (to be called if the public keys ever change)."""
        self._cache.clear()

    def from_request(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "an Authorization: Bearer token is required",
                           headers={"WWW-Authenticate": "Bearer"})
        return self.verify(token.strip())


PARTNER_NAMESPACE = uuid.UUID("6f2d0c1e-8a51-4a43-9a8e-2f7c7f3e0b11")
"""Partner systems act as accounts of their own: ``uuid5(PARTNER_NAMESPACE, partner_id)``."""


def partner_account_id(partner_id: str) -> uuid.UUID:
    return uuid.uuid5(PARTNER_NAMESPACE, partner_id)


class PartnerKeys:
    """The partners' ``X-Api-Key``s, from the partners file (``{"partners": [{"partner_id",
    "api_key", ...}]}``; other fields are the order service's). Keys are compared as SHA-256
    digests in constant time, without an early exit."""

    def __init__(self, keys: dict[str, str]):
        self._digests = [(partner_id, hashlib.sha256(key.encode()).digest()) for partner_id, key in keys.items()]

    @classmethod
    def from_file(cls, path: str) -> PartnerKeys:
        if not path:
            return cls({})
        entries = json.loads(Path(path).read_text()).get("partners", [])
        return cls({str(e["partner_id"]): str(e["api_key"]) for e in entries})

    def authenticate(self, api_key: str) -> str | None:
        """The partner id of ``api_key``, or None."""
        # surrogateescape: aiohttp keeps a header's undecodable bytes as lone surrogates
        digest = hashlib.sha256(api_key.encode("utf-8", "surrogateescape")).digest()
        found = None
        for partner_id, known in self._digests:
            if hmac.compare_digest(known, digest):
                found = partner_id
        return found


@dataclass(frozen=True)
class Caller:
    account_id: uuid.UUID
    partner_id: str | None
    """Set when the caller is a partner system (``X-Api-Key``), None for a buyer (bearer token)."""
    sid: str | None = None
    """A buyer's sign-in session (phone sign-in tokens); None for ``POST /v1/accounts`` tokens."""

    @property
    def unproven(self) -> bool:
        """A buyer whose token proves nothing about the phone (no sign-in session): refused once
        the account's phone is verified (``superseded``)."""
        return self.partner_id is None and self.sid is None


def caller_from_request(request: web.Request, verifier: TokenVerifier, partners: PartnerKeys) -> Caller:
    """A buyer's bearer token, or a partner's ``X-Api-Key`` (``401 invalid_api_key`` when unknown)."""
    api_key = request.headers.get("X-Api-Key")
    if api_key is not None:
        partner_id = partners.authenticate(api_key)
        if partner_id is None:
            raise ApiError(401, "invalid_api_key", "the X-Api-Key is not valid")
        return Caller(partner_account_id(partner_id), partner_id)
    principal = verifier.from_request(request)
    return Caller(principal.account_id, None, principal.sid)


def superseded(caller: Caller, phone_verified_at: datetime | None) -> None:
    """401 ``token_superseded`` for a token without a sign-in session of an account whose phone
    was verified by a sign-in: whoever registered the phone first proves nothing by it."""
    if phone_verified_at is not None and caller.unproven:
        raise ApiError(401, "token_superseded", "this account's phone was verified by a sign-in since this "
                       "token was issued: sign in with a code (POST /v1/auth/otp)",
                       headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
