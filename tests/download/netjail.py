"""Keeps download tests on loopback: any connect to a non-loopback address, and any
DNS lookup of a name (IP literals and ``localhost`` resolve locally), is recorded and
refused before a packet leaves (patched at the socket layer)."""

from __future__ import annotations

import ipaddress
import socket
import threading

_REAL_CONNECT = socket.socket.connect
_REAL_CONNECT_EX = socket.socket.connect_ex
_REAL_GETADDRINFO = socket.getaddrinfo


def is_loopback(host: object) -> bool:
    try:
        ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
        return True
    except ValueError:
        return False


class NetworkJail:
    """``refused`` lists every non-loopback address a connect or lookup was tried for."""

    def __init__(self) -> None:
        self.refused: list[str] = []
        self._lock = threading.Lock()

    def _check(self, sock: socket.socket, address: object) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return  # unix sockets (e.g. a runner's control channel) stay local anyway
        host = address[0] if isinstance(address, tuple) else address
        if not is_loopback(host):
            with self._lock:
                self.refused.append(str(host))
            raise ConnectionRefusedError(f"test network jail: connect to {host} refused")

    def install(self, monkeypatch) -> NetworkJail:
        jail = self

        def connect(sock: socket.socket, address: object) -> None:
            jail._check(sock, address)
            return _REAL_CONNECT(sock, address)

        def connect_ex(sock: socket.socket, address: object) -> int:
            jail._check(sock, address)
            return _REAL_CONNECT_EX(sock, address)

        def getaddrinfo(host, *args, **kwargs):
            name = host.decode() if isinstance(host, bytes) else host
            if name is not None and name != "localhost" and not _is_ip_literal(name):
                with jail._lock:
                    jail.refused.append(str(name))
                raise socket.gaierror(socket.EAI_NONAME, f"test network jail: lookup of {name} refused")
            return _REAL_GETADDRINFO(host, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        return self
