"""The SSRF guard and DNS lookups with a timeout, for :mod:`vlcurate.download.fetch`.

urllib3 connection pools whose connect step (``_new_conn``) resolves a host once,
refuses it if any answer is neither a public address nor inside the allowed networks
(:class:`AddressPolicy`), connects to the very addresses it vetted (a second,
rebinding DNS answer is never consulted) and checks the peer it reached. It runs for
every new connection, every redirect hop included; there is no unguarded pool.
"""

from __future__ import annotations

import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor

from urllib3 import exceptions as ux
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.connection import allowed_gai_family
from urllib3.util.timeout import _DEFAULT_TIMEOUT


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# What `allow_private: true` stands for: the private ranges and loopback, never
# link-local (169.254/16 holds the cloud metadata service; fe80::/10), multicast,
# CGNAT (100.64/10) or reserved space.
PRIVATE_NETWORKS: tuple[str, ...] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8",
                                     "fc00::/7", "::1/128")


class BlockedAddressError(Exception):
    """The destination is neither public nor allowed. Deliberately not an OSError so
    urllib3 lets it through unwrapped instead of turning it into a ProtocolError."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} resolves to non-public address {address} (not in allow_networks)")


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback in disguise
    return ip


def is_public_address(address: str) -> bool:
    """True if `address` (an IP literal, optionally with a %scope) is globally routable."""
    ip = _ip(address)
    return ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local
                                 or ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def parse_networks(cidrs: tuple[str, ...] | list[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings -> networks; ValueError naming the bad one (host bits set count)."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(str(cidr).strip(), strict=True))
        except ValueError as e:
            raise ValueError(f"allow_networks: {cidr!r} is not a network in CIDR form ({e})") from None
    return tuple(networks)


class AddressPolicy:
    """Which addresses a connection may reach: public ones, plus those inside
    `allowed` (IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry)."""

    def __init__(self, allowed: tuple[IPNetwork, ...] = ()) -> None:
        self.allowed = allowed

    def permits(self, address: str) -> bool:
        if is_public_address(address):  # looked up at call time: tests may patch it
            return True
        ip = _ip(address)
        return any(ip.version == net.version and ip in net for net in self.allowed)


# getaddrinfo has no timeout of its own (the system resolver may wait 5 s per try and
# server); lookups run here so a connection can give up on one after its connect
# timeout. A lookup given up on finishes in the background and is discarded.
_RESOLVER = ThreadPoolExecutor(64, thread_name_prefix="vlcurate-dns")


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve(host: str, port: int, timeout: float | None) -> list:
    """``socket.getaddrinfo`` for a TCP connection, giving up (``TimeoutError``) after
    ``timeout`` seconds (None: wait as long as the system resolver does). An IP
    address needs no lookup and cannot hang: it is converted on the calling thread."""
    if _is_ip_literal(host):
        return socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    if timeout is None:
        return socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
    lookup = _RESOLVER.submit(socket.getaddrinfo, host, port, allowed_gai_family(), socket.SOCK_STREAM)
    try:
        return lookup.result(timeout)
    except TimeoutError:
        lookup.cancel()  # if it never started (every resolver thread stuck), it never will
        raise TimeoutError(f"DNS lookup of {host} timed out after {timeout:g} s") from None


class _GuardedConnectionMixin:
    """Replaces urllib3's connect: resolve once, refuse if ANY answer is not permitted,
    connect to the vetted addresses only, then check the peer actually reached.
    (host, port, timeout, socket_options come from urllib3's HTTPConnection;
    `policy` from the pool class made by `guarded_pools`.)"""

    policy: AddressPolicy = AddressPolicy()

    def _new_conn(self) -> socket.socket:  # type: ignore[misc]
        host = str(getattr(self, "_dns_host", self.host)).strip("[]")
        try:
            infos = resolve(host, self.port, None if self.timeout is _DEFAULT_TIMEOUT else self.timeout)  # type: ignore[arg-type]
        except socket.gaierror as e:
            raise ux.NameResolutionError(self.host, self, e) from e  # type: ignore[arg-type]
        except TimeoutError as e:
            raise ux.ConnectTimeoutError(self, str(e)) from e
        for info in infos:
            if not self.policy.permits(str(info[4][0])):
                raise BlockedAddressError(host, str(info[4][0]))
        last_error: Exception | None = None
        for family, socktype, proto, _, sockaddr in infos:
            sock = socket.socket(family, socktype, proto)
            try:
                for opt in self.socket_options or ():
                    sock.setsockopt(*opt)
                if self.timeout is not _DEFAULT_TIMEOUT:
                    sock.settimeout(self.timeout)  # type: ignore[arg-type]
                sock.connect(sockaddr)
                peer = str(sock.getpeername()[0])
            except OSError as e:  # socket.timeout is TimeoutError, an OSError, on 3.10+
                sock.close()
                last_error = (ux.ConnectTimeoutError(self, f"connect to {host} timed out")
                              if isinstance(e, TimeoutError)
                              else ux.NewConnectionError(self, f"connect to {host} failed: {e}"))  # type: ignore[arg-type]
                continue
            if not self.policy.permits(peer):  # belt and braces: what we actually reached
                sock.close()
                raise BlockedAddressError(host, peer)
            return sock
        raise last_error or ux.NewConnectionError(self, f"{host}: no address")  # type: ignore[arg-type]


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass  # TLS still verifies the certificate and sends SNI for self.host


def guarded_pools(policy: AddressPolicy) -> dict[str, type]:
    """urllib3 pool classes by scheme whose connections obey `policy` (for
    ``PoolManager.pool_classes_by_scheme``)."""
    http = type("_GuardedHTTPConnection", (_GuardedHTTPConnection,), {"policy": policy})
    https = type("_GuardedHTTPSConnection", (_GuardedHTTPSConnection,), {"policy": policy})
    return {
        "http": type("_GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
        "https": type("_GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
    }
