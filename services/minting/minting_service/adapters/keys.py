"""The stamp-token keys: the Ed25519 signing key and the public keys ``GET /v1/keys`` publishes.

Rotation: publish the next key's public half first (``MINTING_PUBLISHED_KEYS_FILE``, several PEM
keys concatenated), let verifiers pick it up, then switch ``MINTING_SIGNING_KEY_FILE`` to it and
keep the old public key in the published file for as long as its tokens are printed anywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from emeterai_shared.auth import ensure_keypair, load_public_keys

from minting_service.domain.token import StampSigner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StampKeys:
    signer: StampSigner
    published: dict[str, Ed25519PublicKey]
    """Every key that verifies tokens, by key id; the signing key first."""


def load_stamp_keys(signing_key_file: Path, published_keys_file: Path | None) -> StampKeys:
    """Read the keys; a missing signing key is created (development), with its ``.pub`` beside it."""
    try:
        if ensure_keypair(signing_key_file, signing_key_file.with_suffix(".pub")):
            log.warning("created a development stamp signing key in %s", signing_key_file)
    except FileExistsError:
        pass  # another process created it at the same moment
    key = serialization.load_pem_private_key(signing_key_file.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{signing_key_file}: the stamp signing key must be Ed25519")
    signer = StampSigner(key)
    published = {signer.kid: signer.public_key}
    if published_keys_file is not None:
        published.update(load_public_keys(published_keys_file))
    return StampKeys(signer, published)
