"""Development keys created by several processes starting at once (api, worker and relay of
``make run`` on a fresh machine): exactly one pair is created and nobody reads half a file."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
from datetime import timedelta
from pathlib import Path

from emeterai_shared.auth import TokenIssuer, ensure_keypair, load_public_keys
from emeterai_shared.files import write_atomic


def _start(folder: str, barrier: multiprocessing.synchronize.Barrier) -> str:
    private, public = Path(folder) / "auth.pem", Path(folder) / "auth.pub"
    barrier.wait()
    ensure_keypair(private, public)
    TokenIssuer(private.read_bytes(), timedelta(minutes=1))  # a complete private key
    [kid] = load_public_keys(public)  # a complete public key
    return kid


def test_processes_racing_to_create_the_key_pair_all_read_the_same_complete_pair(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        barrier = manager.Barrier(6)
        with context.Pool(6) as pool:
            kids = pool.starmap(_start, [(str(tmp_path), barrier)] * 6)
    assert len(set(kids)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".auth.pem.lock", "auth.pem", "auth.pub"]
    assert (tmp_path / "auth.pem").stat().st_mode & 0o777 == 0o600


def test_an_atomic_write_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "certificates.pem"
    write_atomic(target, b"old")
    write_atomic(target, b"new" * 1000)
    assert target.read_bytes() == b"new" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["certificates.pem"]
