"""Who the client is behind a reverse proxy: one reading of X-Forwarded-For/-Proto for the
views (`tenancy.client_address`: audit, login throttle, the install-config address check) and
for the ASGI scope (`panel.asgi`: what daphne's --proxy-headers did, believing the first entry
from any peer).

Only with TRUSTED_PROXY, and only from a peer in TRUSTED_PROXIES: anyone else's headers are
their own words. X-Forwarded-For is read from the right, each trusted proxy naming the hop
before it; the first hop that is not a trusted proxy is the client. Whatever stands to its
left was written by the client and is never believed.
"""

import ipaddress
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@lru_cache(maxsize=8)
def networks(setting: str, entries: tuple[str, ...]) -> tuple:
    """The addresses or networks a setting lists, parsed once; a bad entry names the setting."""
    parsed = []
    for entry in entries:
        try:
            parsed.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"{setting}: {entry!r} is not an IP address or network (e.g. 127.0.0.1,::1,10.0.0.0/8)"
            ) from None
    return tuple(parsed)


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address((text or "").strip())
    except ValueError:
        return None
    # ::ffff:127.0.0.1 is 127.0.0.1 (a dual-stack socket's view of an IPv4 peer).
    return getattr(address, "ipv4_mapped", None) or address


def is_trusted_proxy(address: str | None) -> bool:
    parsed = _address(address)
    return parsed is not None and any(parsed in net for net in networks("TRUSTED_PROXIES", tuple(settings.TRUSTED_PROXIES)))


def client_of(peer: str | None, forwarded_for: str | None) -> str | None:
    """The client's address: `peer` (the socket's other end) unless it is a trusted proxy,
    then the right-most X-Forwarded-For hop that is not one."""
    if not settings.TRUSTED_PROXY or not is_trusted_proxy(peer):
        return peer
    client = peer
    for hop in reversed((forwarded_for or "").split(",")):
        address = _address(hop)
        if address is None:
            # Not an address: the trusted proxy to its right passed on what it was sent; the
            # hops left of it are no one's word. That proxy is as far as we know.
            break
        client = str(address)
        if not is_trusted_proxy(client):
            break
    return client


def scheme_of(peer: str | None, forwarded_proto: str | None) -> str | None:
    """'http' or 'https' as a trusted proxy says the client spoke it; None otherwise."""
    proto = (forwarded_proto or "").split(",")[-1].strip().lower()
    if settings.TRUSTED_PROXY and is_trusted_proxy(peer) and proto in ("http", "https"):
        return proto
    return None
