"""Each client's own address behind an ingress: ``X-Forwarded-For``, trusted only from the proxies
configured in ``EMETERAI_TRUSTED_PROXIES``.

Behind the ingress (nginx, see ``compose/ingress/``) every request reaches a service from the
proxy's address; without this, every per-client limit (sign-in codes, registry look-ups, public
verification) would become one limit shared by everybody. With it, a request whose peer is a
trusted proxy is taken to come from the address that proxy saw: ``X-Forwarded-For`` is read from
the right (each proxy appends the address it saw), trusted proxies are skipped, and the first
address that is not a trusted proxy is the client. A request from any other peer keeps its own
address whatever headers it sends, so a client cannot pick the address its limits are counted
against by writing the header itself. With no proxy configured (the default) the header is
ignored.

Why not ``aiohttp-remotes``: its strict mode answers 400 to a request that did not come through a
proxy (aio-libs/aiohttp-remotes#52), which the banks' callbacks and the partners' calls straight
to a service are, and its relaxed mode trusts the header from any peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class TrustedProxies:
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, spec: str | Iterable[str]) -> TrustedProxies:
        """``"127.0.0.1, 10.0.0.0/8, ::1"``: addresses or networks, comma-separated (or a list)."""
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        try:
            return cls(tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip()))
        except ValueError as exc:
            raise ValueError(f"trusted proxies: {exc}") from None

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str | None) -> bool:
        ip = _address(address) if address else None
        return ip is not None and any(ip in network for network in self.networks)

    def client(self, peer: str | None, forwarded_for: Iterable[str]) -> str | None:
        """The client's address of a request from ``peer`` carrying these ``X-Forwarded-For`` headers."""
        if not self.trusts(peer):
            return peer
        hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
        client = peer
        for hop in reversed(hops):
            ip = _address(hop)
            if ip is None:  # only a trusted proxy can have put it there: stop at that proxy
                break
            client = str(ip)
            if not self.trusts(client):
                break
        return client


def middleware(trusted: TrustedProxies) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Replace ``request.remote`` by the client's address for the handlers (and the rate limits)."""

    @web.middleware
    async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        client = trusted.client(request.remote, request.headers.getall("X-Forwarded-For", ()))
        if client is not None and client != request.remote:
            request = request.clone(remote=client)
        return await handler(request)

    return forwarded
