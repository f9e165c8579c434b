"""What the minting service's routes, handlers, jobs and commands receive: its typed dependencies,
built once per process by ``bootstrap.dependencies``."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from emeterai_shared.ratelimit import RateLimiter

from minting_service.adapters.certificates import StampingCertificates
from minting_service.adapters.keys import StampKeys
from minting_service.config import MintingSettings


@dataclass(frozen=True)
class MintingDeps:
    """What the minting service's routes, handlers, jobs and commands use, built once per process."""

    settings: MintingSettings
    pool: asyncpg.Pool
    keys: StampKeys
    """The stamp-token keys: the signer of the tokens and the published public keys (read, in
    development created, at start: a process with unusable keys does not start)."""
    registry_limiter: RateLimiter
    """``GET /v1/stamps/{sn}`` requests per client IP of this (api) process."""
    certificates: StampingCertificates
    """The stamping service's certificate bundle, read per ``GET /v1/keys`` (a rotation shows at once)."""
