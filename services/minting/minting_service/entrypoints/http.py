"""The minting service's public HTTP API: the stamp registry and the token-verification keys."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Literal

import asyncpg
from aiohttp import web
from emeterai_shared.http import ApiError, OpenApi, Operation
from emeterai_shared.ratelimit import RateLimiter
from pydantic import BaseModel, Field

from minting_service.adapters.keys import StampKeys
from minting_service.adapters.repository import MintingRepository
from minting_service.domain import serial
from minting_service.domain.stamp import FACE_VALUE
from minting_service.domain.token import jwk

KEYS_MAX_AGE_S = 300


class Jwk(BaseModel):
    """An Ed25519 public key (RFC 8037) that verifies stamp tokens."""

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str = Field(description="the raw public key, base64url without padding")
    kid: str = Field(description="the key id in the header of the tokens it verifies")
    alg: Literal["EdDSA"]
    use: Literal["sig"]


class KeySet(BaseModel):
    """Published verification material; further members (the stamping certificate) may join."""

    keys: list[Jwk] = Field(description="every key whose tokens are valid, the signing key first")


class StampView(BaseModel):
    sn: str
    status: Literal["UNUSED", "STAMPED", "VOID"]
    face_value: int = Field(description="rupiah")
    minted_at: datetime | None = Field(description="when the serial was issued to a paid order")
    stamped_at: datetime | None
    document_sha256: str | None = Field(description="SHA-256 (hex) of the stamped PDF as served for download")


def add_routes(app: web.Application, spec: OpenApi, pool: asyncpg.Pool, keys: Callable[[], StampKeys],
               limiter: RateLimiter) -> None:
    """``keys`` is called per request, so that building the app reads no key file."""

    async def get_keys(_: web.Request) -> web.Response:
        body = KeySet(keys=[Jwk.model_validate(jwk(k)) for k in keys().published.values()])
        return web.json_response(body.model_dump(mode="json"),
                                 headers={"Cache-Control": f"public, max-age={KEYS_MAX_AGE_S}"})

    async def get_stamp(request: web.Request) -> web.Response:
        limiter.enforce(request.remote or "unknown")
        sn = request.match_info["sn"].strip().upper()
        if len(sn) != serial.LENGTH or not set(sn) <= set(serial.ALPHABET):
            raise ApiError(404, "invalid_serial",
                           f"a serial number is {serial.LENGTH} characters of 0-9 and A-Z")
        if not serial.is_valid(sn):
            raise ApiError(404, "invalid_serial", "the last character of this serial number does not check "
                           "the others (ISO/IEC 7064 MOD 37,36): it was probably mistyped")
        async with pool.acquire() as conn:
            stamp = await MintingRepository(conn).stamp(sn)
        if stamp is None or not stamp.is_public:
            raise ApiError(404, "stamp_not_found", f"no stamp has the serial number {sn}")
        view = StampView.model_validate({
            "sn": stamp.sn, "status": stamp.status.value, "face_value": FACE_VALUE, "minted_at": stamp.minted_at,
            "stamped_at": stamp.stamped_at, "document_sha256": stamp.document_sha256})
        return web.json_response(view.model_dump(mode="json"))

    app.router.add_get("/v1/keys", get_keys)
    app.router.add_get("/v1/stamps/{sn}", get_stamp)

    spec.add(Operation("GET", "/v1/keys", "Public keys that verify stamp tokens (JWK set)", tags=["stamps"],
                       responses={200: ("the published keys", KeySet)}))
    spec.add(Operation("GET", "/v1/stamps/{sn}", "A stamp in the public registry", tags=["stamps"],
                       parameters=[{"name": "sn", "in": "path", "required": True,
                                    "schema": {"type": "string", "pattern": "^[0-9A-Za-z]{22}$"}}],
                       responses={200: ("the stamp", StampView),
                                  404: ("invalid_serial (bad format or check character) or "
                                        "stamp_not_found", None),
                                  429: ("rate limited per client IP (Retry-After)", None)}))
