"""Bearer tokens: the verified-token cache never accepts what a fresh verification would refuse."""

from __future__ import annotations

import base64
import time
import uuid
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from emeterai_shared.auth import TokenIssuer, TokenVerifier, key_id
from emeterai_shared.http import ApiError


class Clock:
    """Unix seconds that move only when told (starting at the real time: PyJWT checks ``exp``
    and ``iat`` on the real clock, the verifier on this one)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _issuer_and_key() -> tuple[TokenIssuer, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return TokenIssuer(pem, timedelta(hours=1)), key


def _verifier(key: Ed25519PrivateKey, clock: Clock, **cache: float) -> TokenVerifier:
    return TokenVerifier({key_id(key.public_key()): key.public_key()}, clock=clock, **cache)  # type: ignore[arg-type]


def _refusal(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(ApiError) as refused:
        verifier.verify(token)
    assert refused.value.status == 401
    return refused.value.code


def test_a_token_is_verified_once_then_served_from_the_cache() -> None:
    issuer, key = _issuer_and_key()
    clock = Clock()
    verifier = _verifier(key, clock)
    account = uuid.uuid4()
    token = issuer.issue(account, sid="s-1")
    first = verifier.verify(token)
    assert (first.account_id, first.sid, verifier.cached) == (account, "s-1", 1)
    verifier._verified = None  # type: ignore[assignment,method-assign]  # a second verification would fail
    assert verifier.verify(token) is first


def test_a_cached_token_still_expires_at_its_exp() -> None:
    issuer, key = _issuer_and_key()
    clock = Clock()
    verifier = _verifier(key, clock, cache_max_age_s=3600)
    token = issuer.issue(uuid.uuid4(), ttl=timedelta(seconds=120))
    verifier.verify(token)
    clock.now += 100
    verifier.verify(token)  # still valid, from the cache
    clock.now += 30  # past exp (the token's exp is whole seconds, at most 120 s after it was issued)
    assert _refusal(verifier, token) == "token_expired"
    assert verifier.cached == 0  # the stale entry is gone and the refused token was not kept
    assert _refusal(verifier, token) == "token_expired"


def test_a_cached_token_is_verified_again_after_the_cache_s_max_age() -> None:
    issuer, key = _issuer_and_key()
    clock = Clock()
    verifier = _verifier(key, clock, cache_max_age_s=60)
    token = issuer.issue(uuid.uuid4())
    verifier.verify(token)
    clock.now += 61
    calls = 0
    verified = verifier._verified

    def counting(t: str) -> object:
        nonlocal calls
        calls += 1
        return verified(t)

    verifier._verified = counting  # type: ignore[assignment,method-assign]
    verifier.verify(token)
    assert calls == 1


def test_a_token_with_another_signature_is_never_served_from_the_cache() -> None:
    issuer, key = _issuer_and_key()
    clock = Clock()
    verifier = _verifier(key, clock)
    token = issuer.issue(uuid.uuid4())
    verifier.verify(token)
    head, claims, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 1
    forged = f"{head}.{claims}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"
    assert _refusal(verifier, forged) == "invalid_token"
    assert _refusal(verifier, f"{head}.{claims}.") == "invalid_token"
    _, other_key = _issuer_and_key()  # the same claims signed by a key nobody published
    other = TokenIssuer(other_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()), timedelta(hours=1))
    assert _refusal(verifier, other.issue(uuid.uuid4())) == "invalid_token"
    assert verifier.cached == 1


def test_the_cache_holds_at_most_its_size_dropping_the_least_recently_used() -> None:
    issuer, key = _issuer_and_key()
    clock = Clock()
    verifier = _verifier(key, clock, cache_size=3)
    tokens = [issuer.issue(uuid.uuid4(), sid=str(n)) for n in range(5)]
    for token in tokens[:3]:
        verifier.verify(token)
    verifier.verify(tokens[0])  # used again: now the most recent
    verifier.verify(tokens[3])  # tokens[1] leaves
    verifier.verify(tokens[4])  # tokens[2] leaves
    assert verifier.cached == 3
    assert set(verifier._cache) == {tokens[0], tokens[3], tokens[4]}
    no_cache = _verifier(key, clock, cache_size=0)
    assert no_cache.verify(tokens[0]).sid == "0" and no_cache.cached == 0


def test_refusals_are_not_cached_and_are_those_of_a_fresh_verification() -> None:
    issuer, key = _issuer_and_key()
    clock = Clock()
    verifier = _verifier(key, clock)
    expired = issuer.issue(uuid.uuid4(), ttl=timedelta(seconds=-1))
    assert _refusal(verifier, expired) == "token_expired"
    assert _refusal(verifier, "not-a-token") == "invalid_token"
    assert verifier.cached == 0
