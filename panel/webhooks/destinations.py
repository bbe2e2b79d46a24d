"""Where a webhook may send: http(s) URLs, and for customers' webhooks public addresses only.

A customer could otherwise point a webhook at the panel's own network (the metadata service,
the database, a node's libvirt) and have the panel make requests there for them (SSRF). The
host is resolved when the webhook is saved and again at every send; the transport then
connects to exactly the addresses checked here, so a DNS answer that changes in between
(rebinding) does not get past the check.
"""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.utils.translation import gettext as _

SCHEMES = {"http": 80, "https": 443}


class BadUrl(ValueError):
    """The URL can never be sent to (not http(s), no host, a bad port): a permanent error."""


class Unresolvable(OSError):
    """The host name does not resolve now (may be temporary)."""


class Forbidden(ValueError):
    """The host resolves to an address customers' webhooks may not reach."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # without brackets for IPv6 literals
    port: int
    path: str  # path and query, at least "/"


def parse(url: str) -> Target:
    """Split `url` into what a request needs, or raise BadUrl."""
    url = url.strip()
    # urlsplit silently drops tabs and newlines; a URL that has them is a mistake, not a URL.
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise BadUrl(_("The URL contains spaces or control characters."))
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadUrl(_("This is not a valid URL: %(error)s") % {"error": exc}) from exc
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise BadUrl(_("Webhook URLs must start with http:// or https://."))
    if not parts.hostname:
        raise BadUrl(_("The URL has no host."))
    if parts.username is not None or parts.password is not None:
        raise BadUrl(_("Credentials in the URL are not supported; check the signature instead."))
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(scheme=scheme, host=parts.hostname, port=port or SCHEMES[scheme], path=path)


# IPv6 forms that carry an IPv4 address inside them, which a relay, a NAT64 gateway or the
# host's own stack may turn back into that IPv4 address: 2002:7f00:1:: is 127.0.0.1 by 6to4.
# Python's is_global passes some of them (6to4 on 3.11), and which ones changes between Python
# versions, so they are refused whatever IPv4 address they embed; a receiver that has one of
# these also has the IPv4 address to use instead.
EMBEDS_IPV4 = tuple(ipaddress.ip_network(net) for net in (
    "2002::/16",        # 6to4
    "::ffff:0:0/96",    # IPv4-mapped
    "64:ff9b::/96",     # NAT64, well-known prefix
    "64:ff9b:1::/48",   # NAT64, local use
    "2001::/32",        # Teredo
    "::/96",            # IPv4-compatible (deprecated), and :: and ::1
))


def is_public(address: str) -> bool:
    """False for loopback, private, link-local, reserved, multicast and unspecified addresses,
    and for IPv6 addresses that embed an IPv4 one (EMBEDS_IPV4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone index
    if isinstance(ip, ipaddress.IPv6Address) and any(ip in net for net in EMBEDS_IPV4):
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_loopback
                                 or ip.is_private or ip.is_unspecified)


def resolve(target: Target, *, public_only: bool) -> list[str]:
    """The addresses to connect to. With `public_only`, refuse (Forbidden) when any of them is
    not public: one private answer among public ones is enough for an attacker's DNS."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unresolvable(_("The host %(host)s does not resolve: %(error)s") % {"host": target.host, "error": exc})
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if public_only:
        for address in addresses:
            if not is_public(address):
                raise Forbidden(_("The host %(host)s resolves to %(address)s, a loopback, private, link-local, "
                                  "reserved or IPv4-embedding IPv6 address; webhooks must reach the public "
                                  "internet unless the provider allows private destinations.")
                                % {"host": target.host, "address": address})
    return addresses
