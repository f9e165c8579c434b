"""The stamping service's certificate bundle, read at request time so that a rotation shows at once.

The stamping service writes the bundle (``MINTING_STAMPING_CERTIFICATES_FILE``; in production a
mounted file). Each call stats the file and parses it again only when its (path, mtime, size,
inode) changed. A missing, unreadable or unparsable file publishes no certificate key (logged once per
state of the file) and never fails the request.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from minting_service.domain.certificate import InvalidCertificates, certificate_jwk

log = logging.getLogger(__name__)

FileState = tuple[str, int, int, int]
"""(path, mtime in ns, size, inode): when it changes the file is read again. The inode catches a
rotation by rename (or a Kubernetes secret's symlink swap) within the same mtime tick."""


class StampingCertificates:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._state: FileState | None = None
        self._jwk: dict[str, Any] | None = None
        self._warned: object = None
        """The condition last warned about, so that each is logged once, not at every request."""

    def jwk(self) -> dict[str, Any] | None:
        """The signing certificate's JWK, or None when the file is missing or unusable."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._warn("missing", "no such file: GET /v1/keys publishes the stamp-token keys only")
            return self._cache(None, None)
        except OSError as exc:
            self._warn(("stat", str(exc)), f"cannot stat it: {exc}")
            return self._cache(None, None)
        if self._state is not None and self._state == self._key(st):
            return self._jwk
        try:
            with open(self.path, "rb") as f:
                state = self._key(os.fstat(f.fileno()))  # the version read, should it have been replaced meanwhile
                data = f.read()
        except OSError as exc:  # not cached: read again at the next request (permissions fixed)
            self._warn(("read", str(exc)), f"cannot read it: {exc}")
            return self._cache(None, None)
        try:
            jwk = certificate_jwk(data)
        except InvalidCertificates as exc:
            self._warn(state, str(exc))
            return self._cache(state, None)
        except Exception:  # never a 500 for a bad file
            log.exception("stamping certificates in %s: unexpected error, not published", self.path)
            self._warned = state
            return self._cache(state, None)
        log.info("publishing the stamping certificate (x5t#S256 %s) from %s", jwk["x5t#S256"], self.path)
        self._warned = None
        return self._cache(state, jwk)

    def _key(self, st: os.stat_result) -> FileState:
        return (str(self.path), st.st_mtime_ns, st.st_size, st.st_ino)

    def _warn(self, condition: object, reason: str) -> None:
        if condition != self._warned:
            log.warning("stamping certificates in %s not published: %s", self.path, reason)
            self._warned = condition

    def _cache(self, state: FileState | None, jwk: dict[str, Any] | None) -> dict[str, Any] | None:
        self._state, self._jwk = state, jwk
        return jwk
