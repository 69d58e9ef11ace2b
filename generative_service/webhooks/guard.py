"""SSRF guard: which webhook destinations the service may connect to.

A destination is allowed when its URL is plain (http or https, no credentials, an allowed port,
a host that is a DNS name or a canonical IP literal) and EVERY address its host resolves to is
public. Delivery then connects to one of exactly those vetted addresses ("pinning") while
keeping the Host header and TLS SNI of the name, so a DNS answer that changes between the check
and the connect (rebinding) cannot redirect a request to an internal address.

NOTE: Python's `is_global` calls multicast, NAT64 (64:ff9b::/96), 6to4 (2002::/16) and
IPv4-compatible (::a.b.c.d) addresses "global"; the embedded IPv4 address is what a packet
reaches, so it is unwrapped and judged on its own.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from urllib.parse import urlsplit

from generative_service.errors import InvalidRequest
from generative_service.settings import Settings

IPAddress = IPv4Address | IPv6Address
# (host, port) -> the host's addresses as strings; injectable so tests need no DNS.
Resolver = Callable[[str, int], list[str]]

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_CHARS = 2048
METADATA_ADDRESSES = frozenset(
    ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "169.254.169.253",
        "100.100.100.200",
        "fd00:ec2::254",
        "fd00:ec2::23",
    )
)
CGNAT = ip_network("100.64.0.0/10")
NAT64 = ip_network("64:ff9b::/96")
NAT64_LOCAL = ip_network("64:ff9b:1::/48")
# Characters on which URL parsers disagree (WHATWG treats "\" as "/", strips tabs and newlines...).
_AMBIGUOUS = re.compile(r"[\x00-\x20\x7f\\]")
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
# WHATWG URL: a host whose last label is a number is an IPv4 address, in whatever spelling.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


class UnresolvableHost(InvalidRequest):
    """The host has no address right now (DNS failure): retryable at delivery time."""


@dataclass(frozen=True)
class Destination:
    """A vetted webhook destination: connect to `addresses`, present `host` in Host and SNI."""

    scheme: str
    host: str
    port: int
    target: str
    addresses: tuple[IPAddress, ...]

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def url_for(self, address: IPAddress) -> str:
        """The URL that connects to the pinned `address` (the name travels in Host and SNI)."""
        host = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{host}:{self.port}{self.target}"


def _refuse(reason: str) -> InvalidRequest:
    return InvalidRequest("webhook", reason)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver returns for `host` (one lookup)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# --- URL syntax -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parsed:
    scheme: str
    host: str
    port: int
    target: str
    literal: IPAddress | None


def parse_url(url: str) -> _Parsed:
    """Check the URL's syntax (no DNS). Raises InvalidRequest('webhook', reason)."""
    if len(url) > MAX_URL_CHARS:
        raise _refuse(f"URL longer than {MAX_URL_CHARS} characters")
    if _AMBIGUOUS.search(url):
        raise _refuse("URL contains whitespace, control characters or backslashes")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise _refuse(f"scheme {parts.scheme or '(none)'!r} is not allowed; use http or https")
    if "@" in parts.netloc:
        raise _refuse("credentials in the URL are not allowed")
    try:
        port = DEFAULT_PORTS[scheme] if parts.port is None else parts.port
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise _refuse("the port is not a number in 1..65535")
    if not parts.hostname:
        raise _refuse("the URL has no host")
    host, literal = _parse_host(parts.hostname, bracketed="[" in parts.netloc)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Parsed(scheme, host, port, target, literal)


def _parse_host(raw: str, *, bracketed: bool) -> tuple[str, IPAddress | None]:
    """(ascii host, IP literal or None). Refuses non-canonical IP spellings like `0x7f.1`."""
    if bracketed:
        if "%" in raw:
            raise _refuse("IPv6 zone identifiers are not allowed")
        try:
            return raw, IPv6Address(raw)
        except ValueError:
            raise _refuse(f"{raw!r} is not a valid IPv6 address") from None
    host = raw[:-1] if raw.endswith(".") else raw
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise _refuse(f"host {raw!r} is not a valid host name") from None
    labels = host.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        try:
            address = IPv4Address(host)
        except ValueError:
            address = None
        if address is None or str(address) != host:
            raise _refuse(
                f"host {raw!r} is a non-canonical IPv4 address spelling; write it as a.b.c.d"
            )
        return host, address
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise _refuse(f"host {raw!r} is not a valid host name")
    return host, None


# --- Address policy ---------------------------------------------------------------------------------


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv4-mapped, NAT64, 6to4 or IPv4-compatible address reaches."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:  # ::a.b.c.d (deprecated "IPv4-compatible")
        return IPv4Address(int(address))
    return None


def address_problem(address: IPAddress) -> str | None:
    """Why `address` is not a public unicast address, or None if it is."""
    if address.version == 6:
        if address.scope_id:
            return "a scoped IPv6 address"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            problem = address_problem(embedded)
            return f"{problem} ({embedded}) in an IPv6 encoding" if problem else None
        if address in NAT64_LOCAL:
            return "a local-use NAT64 address"
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    checks = (
        (address.is_loopback, "a loopback address"),
        (address.is_unspecified, "the unspecified address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.version == 4 and address in CGNAT, "a carrier-grade NAT (100.64.0.0/10) address"),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (not address.is_global, "not a public address"),
    )
    return next((reason for failed, reason in checks if failed), None)


def _literal(host: str) -> IPAddress | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


def is_loopback(address: IPAddress) -> bool:
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def check_address(address: IPAddress, settings: Settings, *, host: str) -> None:
    """Raise InvalidRequest unless a webhook may connect to `address`."""
    if settings.webhook_allow_loopback and is_loopback(address):
        return
    problem = address_problem(address)
    if problem:
        shown = host if address == _literal(host) else f"{host} ({address})"
        raise _refuse(f"{shown} is {problem}; webhooks only go to public addresses")


# --- Resolution -------------------------------------------------------------------------------------


def resolve_destination(
    url: str, settings: Settings, *, resolver: Resolver | None = None
) -> Destination:
    """Check `url`, resolve its host ONCE and vet every address.

    Raises:
        UnresolvableHost: the host has no address (DNS failure).
        InvalidRequest: the URL or one of its addresses is not allowed (field `webhook`).
    """
    parsed = parse_url(url)
    if parsed.literal:  # the address is known without DNS: its problem is the clearer message
        check_address(parsed.literal, settings, host=parsed.host)
    port_allowed = parsed.port in settings.allowed_ports
    if not port_allowed and not settings.webhook_allow_loopback:
        raise _refuse(_port_reason(parsed.port, settings))
    addresses = (
        (parsed.literal,)
        if parsed.literal
        else _resolve(parsed.host, parsed.port, resolver or system_resolver)
    )
    for address in addresses:
        check_address(address, settings, host=parsed.host)
    if not port_allowed and not all(is_loopback(a) for a in addresses):
        raise _refuse(_port_reason(parsed.port, settings))
    return Destination(parsed.scheme, parsed.host, parsed.port, parsed.target, addresses)


def _resolve(host: str, port: int, resolver: Resolver) -> tuple[IPAddress, ...]:
    try:
        found = resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise UnresolvableHost("webhook", f"host {host!r} does not resolve ({exc})") from None
    if not found:
        raise UnresolvableHost("webhook", f"host {host!r} does not resolve")
    try:
        return tuple(ip_address(item) for item in found)
    except ValueError:
        raise _refuse(f"host {host!r} resolved to something that is not an IP address") from None


def _port_reason(port: int, settings: Settings) -> str:
    allowed = ", ".join(str(p) for p in sorted(settings.allowed_ports))
    return f"port {port} is not allowed (GENSVC_WEBHOOK_ALLOWED_PORTS: {allowed})"
