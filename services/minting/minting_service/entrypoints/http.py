"""The minting service's public HTTP API: the stamp registry and the keys that verify stamp tokens and
stamped PDFs."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from emeterai_shared.http import ApiError, Operation, respond
from emeterai_shared.runtime import Router
from emeterai_shared.uow import unit_of_work
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema

from minting_service.dependencies import MintingDeps
from minting_service.domain import serial
from minting_service.domain.stamp import FACE_VALUE, Stamp
from minting_service.domain.token import jwk
from minting_service.service_layer.registry import public_stamp

KEYS_MAX_AGE_S = 300

log = logging.getLogger(__name__)


def _absent_not_null(schema: dict[str, Any]) -> None:
    """Optional members are left out of the JSON (``exclude_none``), never null: no null default."""
    for member in schema.get("properties", {}).values():
        if "default" in member and member["default"] is None:
            del member["default"]


class Jwk(BaseModel):
    """A public verification key (RFC 7517). ``purpose`` tells them apart: ``stamp-token`` keys are
    Ed25519 (RFC 8037) and verify the tokens in stamps' QR codes; the one ``pdf-signature`` key is
    the stamping service's PDF signing certificate, with its chain in ``x5c``."""

    model_config = ConfigDict(populate_by_name=True, json_schema_extra=_absent_not_null)

    kty: Literal["OKP", "EC", "RSA"]
    crv: Literal["Ed25519", "P-256", "P-384", "P-521"] | SkipJsonSchema[None] = Field(
        None, description="the curve (OKP and EC keys)")
    x: str | SkipJsonSchema[None] = Field(
        None, description="OKP: the raw public key; EC: the x coordinate (base64url without padding)")
    y: str | SkipJsonSchema[None] = Field(None, description="EC: the y coordinate (base64url without padding)")
    n: str | SkipJsonSchema[None] = Field(None, description="RSA: the modulus (base64url without padding)")
    e: str | SkipJsonSchema[None] = Field(None, description="RSA: the exponent (base64url without padding)")
    kid: str = Field(description="stamp-token keys: the key id in the header of the tokens it verifies; "
                     "the pdf-signature key: its RFC 7638 thumbprint (SHA-256, base64url)")
    alg: Literal["EdDSA", "ES256", "ES384", "ES512", "RS256"]
    use: Literal["sig"]
    purpose: Literal["stamp-token", "pdf-signature"] = Field(
        description="stamp-token: verifies stamp tokens; pdf-signature: the certificate that signs stamped PDFs")
    x5c: list[str] | SkipJsonSchema[None] = Field(
        None, description="pdf-signature: the certificate chain, DER in standard base64 (RFC 7517 §4.7), "
        "the signing certificate first, the root last")
    x5t_s256: str | SkipJsonSchema[None] = Field(
        None, alias="x5t#S256",
        description="pdf-signature: SHA-256 thumbprint of the signing certificate's DER (base64url)")


class KeySet(BaseModel):
    """Published verification material: the stamp-token keys, then the PDF signing certificate's key."""

    keys: list[Jwk] = Field(description="every key whose tokens are valid, the signing key first; then, when "
                            "the stamping service has published it, the key of the certificate that signs "
                            "stamped PDFs")


class StampView(BaseModel):
    sn: str
    status: Literal["UNUSED", "STAMPED", "VOID"]
    face_value: int = Field(description="rupiah")
    minted_at: datetime | None = Field(description="when the serial was issued to a paid order")
    stamped_at: datetime | None
    document_sha256: str | None = Field(description="SHA-256 (hex) of the stamped PDF as served for download")

    @classmethod
    def of(cls, stamp: Stamp) -> StampView:
        return cls.model_validate({
            "sn": stamp.sn, "status": stamp.status.value, "face_value": FACE_VALUE, "minted_at": stamp.minted_at,
            "stamped_at": stamp.stamped_at, "document_sha256": stamp.document_sha256})


def _certificate_key(found: dict[str, Any] | None) -> list[Jwk]:
    """The stamping certificate's key as published, if the stamping service has published one."""
    if found is None:
        return []
    try:
        return [Jwk.model_validate(found)]
    except ValidationError:  # cannot happen for what domain.certificate returns; never a 500
        log.exception("the stamping certificate's JWK does not fit the published model: not published")
        return []


async def get_keys(_: web.Request, deps: MintingDeps) -> web.Response:
    body = KeySet(keys=[*(Jwk.model_validate(jwk(k)) for k in deps.keys.published.values()),
                        *_certificate_key(deps.certificates.jwk())])
    return respond(body, headers={"Cache-Control": f"public, max-age={KEYS_MAX_AGE_S}"}, exclude_none=True)


async def get_stamp(request: web.Request, deps: MintingDeps) -> web.Response:
    deps.registry_limiter.enforce(request.remote or "unknown")
    sn = request.match_info["sn"].strip().upper()
    if not serial.is_well_formed(sn):
        raise ApiError(404, "invalid_serial", f"a serial number is {serial.LENGTH} characters of 0-9 and A-Z")
    if not serial.is_valid(sn):
        raise ApiError(404, "invalid_serial", "the last character of this serial number does not check "
                       "the others (ISO/IEC 7064 MOD 37,36): it was probably mistyped")
    async with unit_of_work(deps.pool) as uow:
        stamp = await public_stamp(uow, sn)
    if stamp is None:
        raise ApiError(404, "stamp_not_found", f"no stamp has the serial number {sn}")
    return respond(StampView.of(stamp))


def routes(router: Router[MintingDeps]) -> None:
    router.add(Operation("GET", "/v1/keys", "Public keys that verify stamp tokens and stamped PDFs (JWK set)",
                         tags=["stamps"], responses={200: ("the published keys", KeySet)}),
               get_keys)
    router.add(Operation("GET", "/v1/stamps/{sn}", "A stamp in the public registry", tags=["stamps"],
                         parameters=[{"name": "sn", "in": "path", "required": True,
                                      "schema": {"type": "string", "pattern": "^[0-9A-Za-z]{22}$"}}],
                         responses={200: ("the stamp", StampView),
                                    404: ("invalid_serial (bad format or check character) or "
                                          "stamp_not_found", None),
                                    429: ("rate limited per client IP (Retry-After)", None)}),
               get_stamp)
