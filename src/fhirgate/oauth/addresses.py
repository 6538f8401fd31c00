"""Which IP addresses the server may connect to on a client's behalf (the JWKS SSRF guard).

An address is *public* when it is globally routable unicast: IPv4 per ``ipaddress.is_global``
(no private, loopback, link-local — which holds cloud metadata at 169.254.169.254 —, CGNAT,
documentation, reserved or broadcast range) and not multicast; IPv6 in global unicast
``2000::/3`` (RFC 4291 §2.4) and ``is_global``.

An IPv6 address that carries an IPv4 address is judged by the IPv4 address it carries, because
that is where a translator or tunnel delivers the packets: it is public only if every IPv4
address it embeds is public. The forms recognised (their prefixes are fixed, so they can be):

* IPv4-mapped ``::ffff:a.b.c.d`` (RFC 4291 §2.5.5.2);
* IPv4-compatible ``::a.b.c.d`` (RFC 4291 §2.5.5.1, deprecated; ``::`` and ``::1`` excepted);
* SIIT IPv4-translated ``::ffff:0:a.b.c.d`` (RFC 2765 §2.1);
* NAT64 well-known prefix ``64:ff9b::a.b.c.d`` (RFC 6052 §2.1);
* 6to4 ``2002:AABB:CCDD::/48`` (RFC 3056 §2);
* Teredo ``2001:0:SSSS:SSSS::/64`` (RFC 4380 §4): the server's IPv4 in bits 32-63 and the
  client's in the last 32 bits inverted; both must be public.

The NAT64 local-use prefix ``64:ff9b:1::/48`` (RFC 8215) is never public: it is not globally
routable, and where its IPv4 address sits depends on the operator's prefix length (RFC 6052
§2.2), so it cannot be unwrapped reliably. Operator-chosen prefixes (a network-specific NAT64
prefix, 6rd, ISATAP) cannot be told apart from plain global addresses; the host's routing
decides where those go.
"""

from __future__ import annotations

import ipaddress

__all__ = ["Address", "embedded_ipv4", "is_loopback", "is_public"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
#: Prefixes whose last 32 bits are the IPv4 address.
_LAST_32_BITS = (
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (``::``/``::1`` are excluded below)
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # SIIT IPv4-translated
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64 well-known prefix
)
_IPV4_COMPATIBLE_EXCEPTIONS = ipaddress.IPv6Network("::/127")  # unspecified and loopback


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses ``address`` carries in one of the forms above; ``()`` if none."""
    if address.ipv4_mapped is not None:
        return (address.ipv4_mapped,)
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        return address.teredo  # (server, client), the client's bits already inverted
    if address in _IPV4_COMPATIBLE_EXCEPTIONS:
        return ()
    if any(address in network for network in _LAST_32_BITS):
        return (ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF),)
    return ()


def _is_public_ipv4(address: ipaddress.IPv4Address) -> bool:
    return address.is_global and not address.is_multicast


def is_public(address: Address) -> bool:
    """Whether the server may connect to ``address`` for a client (see the module doc)."""
    if isinstance(address, ipaddress.IPv4Address):
        return _is_public_ipv4(address)
    if address in _NAT64_LOCAL_USE:
        return False
    embedded = embedded_ipv4(address)
    if embedded:
        return all(_is_public_ipv4(ipv4) for ipv4 in embedded)
    return address in _GLOBAL_UNICAST and address.is_global


def is_loopback(address: Address) -> bool:
    """This host itself: ``127.0.0.0/8``, ``::1``, or an IPv4-mapped ``::ffff:127.x.y.z``
    (a dual-stack socket's way of reaching ``127.x.y.z``). A loopback address inside a
    translated or tunnelled form is another host's loopback, and not this."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
