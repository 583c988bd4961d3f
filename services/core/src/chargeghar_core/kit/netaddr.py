"""The caller's address, taking ``X-Forwarded-For`` only from proxies the deployment trusts.

``X-Forwarded-For`` is a list the client starts: ``client-says, proxy1-saw, proxy2-saw``. Only the entries
appended by our own proxies are facts, so the list is read from the right: the TCP peer, then each entry
added by a trusted proxy, until the first address that is not one of ours; that address is the client. The
leftmost entry (whatever the client wrote) is never trusted on its own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.requests import HTTPConnection

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_address(
    request: HTTPConnection, *, trust_forwarded_for: bool, trusted_proxies: Sequence[Network] = ()
) -> str | None:
    """The client's address. With ``trust_forwarded_for`` and no ``trusted_proxies`` the TCP peer is the one
    trusted hop (one reverse proxy in front): the rightmost ``X-Forwarded-For`` entry is the client. With
    ``trusted_proxies``, the peer must be one of them, and every hop that is one of them is skipped."""
    peer = request.client.host if request.client else None
    if not trust_forwarded_for:
        return peer
    header = ",".join(request.headers.getlist("x-forwarded-for"))
    hops = [hop.strip() for hop in header.split(",") if hop.strip()]
    if not hops:
        return peer
    if not trusted_proxies:
        return hops[-1]

    def trusted(text: str | None) -> bool:
        address = _address(text) if text else None
        return address is not None and any(address in network for network in trusted_proxies)

    if not trusted(peer):
        return peer  # the request did not come through our proxy: its header is the client's own words
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0]
