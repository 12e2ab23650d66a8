"""Fetcher against a real threaded HTTP server on 127.0.0.1 (no other network)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from vlcurate.download import fetch as fetch_mod
from vlcurate.download import guard
from vlcurate.download.fetch import (
    ERROR_KINDS,
    RETRYABLE,
    FetchConfig,
    Fetcher,
    FetchResult,
    is_retryable,
)
from tests.download.fetch_server import JPEG, _Server, running_server

LOOPBACK = ("127.0.0.0/8",)  # the test server's network; every other non-public address stays blocked


@pytest.fixture(scope="module")
def server():
    with running_server() as srv:
        yield srv


@pytest.fixture
def fetcher():
    # The test server lives on loopback: allow that network (only).
    with Fetcher(FetchConfig(timeout=0.5, retries=2, backoff=0.01, allow_networks=LOOPBACK, threads=4)) as f:
        yield f


def test_ok(server, fetcher):
    r = fetcher.fetch(server.url("/ok.jpg"))
    assert r == FetchResult(JPEG, None, None, 200, server.url("/ok.jpg"), 1)


def test_keep_alive_reuses_one_connection(server, fetcher):
    before = len(server.log)
    for i in range(10):
        assert fetcher.fetch(server.url(f"/ok-reuse{i}")).error_kind is None
    ports = {port for _, port, _ in server.log[before:]}
    assert len(ports) == 1


def test_http_404_not_retried(server, fetcher):
    r = fetcher.fetch(server.url("/404"))
    assert (r.error_kind, r.http_status, r.attempts, r.data) == ("http_error", 404, 1, None)
    assert server.hits["/404"] == 1
    assert "404" in r.error_message


def test_500_retried_until_ok(server, fetcher):
    r = fetcher.fetch(server.url("/flaky-a?fail=2"))
    assert (r.error_kind, r.data, r.attempts) == (None, JPEG, 3)
    assert server.hits["/flaky-a"] == 3


def test_500_gives_up_after_retries(server):
    with Fetcher(FetchConfig(retries=1, backoff=0.0, allow_networks=LOOPBACK)) as f:
        r = f.fetch(server.url("/flaky-b?fail=5"))
    assert (r.error_kind, r.http_status, r.attempts) == ("http_error", 500, 2)
    assert server.hits["/flaky-b"] == 2


def test_429_honours_retry_after(server, fetcher):
    r = fetcher.fetch(server.url("/429"))
    assert (r.error_kind, r.attempts) == (None, 2)


def test_retry_after_is_waited_not_the_backoff(server, monkeypatch):
    """The server asks for 2 s; the backoff alone would be ~0.01 s. The sleep is
    recorded, not slept."""
    slept = []
    monkeypatch.setattr(fetch_mod.time, "sleep", slept.append)
    with Fetcher(FetchConfig(timeout=5.0, retries=2, backoff=0.01, allow_private=True)) as f:
        r = f.fetch(server.url("/503-wait"))
    assert (r.error_kind, r.attempts, r.data) == (None, 2, JPEG)
    assert slept == [2.0]


def test_backoff_is_exponential_and_deterministic(fetcher):
    d1, d2, d3 = (fetcher._backoff_delay("http://x/", a, None) for a in (1, 2, 3))
    assert 0.005 <= d1 < 0.015 and 0.01 <= d2 < 0.03 and 0.02 <= d3 < 0.06
    assert d1 == fetcher._backoff_delay("http://x/", 1, None)
    assert fetcher._backoff_delay("http://x/", 1, 100.0) == 0.5  # Retry-After capped at timeout


def test_timeout_retried(server):
    with Fetcher(FetchConfig(timeout=0.2, retries=1, backoff=0.0, allow_networks=LOOPBACK)) as f:
        start = time.monotonic()
        r = f.fetch(server.url("/slow"))
    assert (r.error_kind, r.attempts) == ("timeout", 2)
    assert time.monotonic() - start < 1.5
    assert server.hits["/slow"] == 2


def test_whole_body_deadline(server):
    # Every read returns within the read timeout; the total still must not exceed it.
    with Fetcher(FetchConfig(timeout=0.5, retries=0, allow_networks=LOOPBACK)) as f:
        start = time.monotonic()
        r = f.fetch(server.url("/drip"))
    assert r.error_kind == "timeout" and "body" in r.error_message
    assert time.monotonic() - start < 1.5


def test_redirect_chain_relative(server, fetcher):
    r = fetcher.fetch(server.url("/redirect/3"))
    assert (r.error_kind, r.data, r.final_url) == (None, JPEG, server.url("/ok.jpg"))


def test_too_many_redirects(server):
    with Fetcher(FetchConfig(max_redirects=2, allow_networks=LOOPBACK)) as f:
        assert f.fetch(server.url("/redirect/3")).error_kind == "too_many_redirects"
        r = f.fetch(server.url("/loop"))
    assert (r.error_kind, r.attempts) == ("too_many_redirects", 1)


def test_redirect_without_location(server, fetcher):
    r = fetcher.fetch(server.url("/nolocation"))
    assert (r.error_kind, r.http_status) == ("http_error", 302)


def test_redirect_to_other_scheme_is_invalid(server, fetcher):
    r = fetcher.fetch(server.url("/to?u=ftp://example.com/a.jpg"))
    assert r.error_kind == "invalid_url" and "ftp" in r.error_message


def test_too_large_declared_and_streamed(server):
    with Fetcher(FetchConfig(max_bytes=1000, allow_networks=LOOPBACK)) as f:
        declared = f.fetch(server.url("/big-declared"))
        streamed = f.fetch(server.url("/big-chunked"))
        after = f.fetch(server.url("/ok-after-big"))  # the pool recovers from closed connections
    assert declared.error_kind == "too_large" and "Content-Length" in declared.error_message
    assert streamed.error_kind == "too_large" and "body exceeds" in streamed.error_message
    assert after.data == JPEG


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (["noai"], "opted_out"),
        (["noindex, nofollow"], "opted_out"),
        (["nofollow", "NoImageAI"], "opted_out"),  # any of several headers, case-insensitive
        (["vlcurate: noai"], "opted_out"),  # addressed to us
        (["mytoken: noimageindex"], "opted_out"),  # addressed to our UA token
        (["googlebot: noai"], None),  # addressed to someone else
        (["googlebot: noindex, *: noai"], "opted_out"),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None),
        (["nofollow"], None),
    ],
)
def test_x_robots_tag(server, values, kind):
    query = "&".join(f"v={v}" for v in values)
    cfg = FetchConfig(allow_networks=LOOPBACK, user_agent_token="mytoken")
    with Fetcher(cfg) as f:
        r = f.fetch(server.url(f"/robots?{query}"))
    assert r.error_kind == kind
    assert (r.data is None) == (kind is not None)


def test_opt_out_check_can_be_disabled(server):
    with Fetcher(FetchConfig(allow_networks=LOOPBACK, disallowed_header_directives=())) as f:
        assert f.fetch(server.url("/robots?v=noai")).data == JPEG


def test_truncated_body(server, fetcher):
    r = fetcher.fetch(server.url("/truncated"))
    assert (r.error_kind, r.http_status) == ("transfer_error", 200)
    assert r.attempts == 3  # transfer errors are retryable


def test_user_agent(server):
    with Fetcher(FetchConfig(allow_networks=LOOPBACK, user_agent_token="acme-research")) as f:
        assert f.fetch(server.url("/ua")).data == b"vlcurate/0.1 (+acme-research)"
    with Fetcher(FetchConfig(allow_networks=LOOPBACK)) as f:
        assert f.fetch(server.url("/ua")).data == b"vlcurate/0.1"


@pytest.mark.parametrize(
    "url", ["", "   ", "ftp://example.com/a.jpg", "javascript:alert(1)", "example.com/a.jpg",
            "http://", "http://exa mple.com/a.jpg", "http://a:99999/"],
)
def test_invalid_urls(fetcher, url):
    r = fetcher.fetch(url)
    assert (r.error_kind, r.attempts) == ("invalid_url", 1)


def test_connection_refused(fetcher):
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = fetcher.fetch(f"http://127.0.0.1:{port}/x.jpg")
    assert (r.error_kind, r.attempts) == ("connection_error", 3)


def test_dns_failure(monkeypatch):
    def fail(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with Fetcher(FetchConfig(retries=0)) as f:
        r = f.fetch("http://no-such-host.invalid/a.jpg")
    assert r.error_kind == "connection_error" and "DNS" in r.error_message


# --- SSRF guard ---------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
def test_loopback_blocked_by_default(server, host):
    before = sum(server.hits.values())
    with Fetcher(FetchConfig(retries=2, backoff=0.0)) as f:
        r = f.fetch(server.url("/ok.jpg", host=host))
    assert (r.error_kind, r.attempts) == ("blocked_address", 1)  # not retried
    assert "non-public address" in r.error_message
    assert sum(server.hits.values()) == before  # never connected


@pytest.mark.parametrize(
    ("address", "public"),
    [("8.8.8.8", True), ("2606:4700::1111", True), ("10.1.2.3", False), ("172.16.0.1", False),
     ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False),
     ("224.0.0.1", False), ("240.0.0.1", False), ("::1", False), ("fe80::1%eth0", False),
     ("fc00::1", False), ("::ffff:10.0.0.1", False), ("ff02::1", False)],
)
def test_is_public_address(address, public):
    assert guard.is_public_address(address) is public


def test_redirect_hop_to_private_address_blocked(server, monkeypatch):
    # Pretend 127.0.0.1 is public so the first hop is allowed; 127.0.0.2 (also
    # loopback on Linux) stays private: the redirect there must be refused.
    monkeypatch.setattr(guard, "is_public_address", lambda a: a == "127.0.0.1")
    port = server.server_address[1]
    with Fetcher(FetchConfig(retries=0)) as f:
        ok = f.fetch(server.url("/ok.jpg"))
        r = f.fetch(server.url(f"/to?u=http://127.0.0.2:{port}/ok-private.jpg"))
    assert ok.data == JPEG
    assert r.error_kind == "blocked_address" and "127.0.0.2" in r.error_message
    assert server.hits["/ok-private.jpg"] == 0


def test_connected_peer_is_checked(server, monkeypatch):
    # Resolution says public, the connected peer is not: refuse (rebinding guard).
    answers = iter([True, False])
    monkeypatch.setattr(guard, "is_public_address", lambda a: next(answers))
    with Fetcher(FetchConfig(retries=0)) as f:
        r = f.fetch(server.url("/ok-peer.jpg"))
    assert r.error_kind == "blocked_address"
    assert server.hits["/ok-peer.jpg"] == 0


def test_a_dns_lookup_that_hangs_times_out(monkeypatch):
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(10)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    t0 = time.monotonic()
    try:
        with Fetcher(FetchConfig(timeout=0.3, retries=0)) as f:
            r = f.fetch("http://slow-dns.example/a.jpg")
    finally:
        release.set()
    assert time.monotonic() - t0 < 3
    assert r.error_kind == "timeout" and "DNS lookup of slow-dns.example timed out" in r.error_message
    assert is_retryable(r.error_kind)


def test_host_resolved_once_and_vetted_address_used(server, monkeypatch):
    # A rebinding DNS answers differently the second time; we must never ask twice
    # per connection, and must connect to what we vetted.
    calls: list[str] = []
    real = socket.getaddrinfo

    def resolver(host, *args, **kwargs):
        calls.append(host)
        return real("127.0.0.1" if len(calls) == 1 else "127.0.0.2", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    monkeypatch.setattr(guard, "is_public_address", lambda a: a == "127.0.0.1")
    with Fetcher(FetchConfig(retries=0)) as f:
        r = f.fetch(server.url("/ok-rebind.jpg", host="rebind.example"))
    assert r.data == JPEG and calls == ["rebind.example"]
    assert server.log[-1][2] == f"rebind.example:{server.server_address[1]}"  # Host header kept


# --- fetch_many ---------------------------------------------------------------

def test_fetch_many_yields_every_index(server, fetcher):
    urls = [server.url(f"/ok-many{i}") if i % 3 else server.url("/404") for i in range(30)]
    results = dict(fetcher.fetch_many(urls))
    assert sorted(results) == list(range(30))
    for i, r in results.items():
        assert (r.error_kind is None) == bool(i % 3)


def test_fetch_many_is_lazy_and_bounded(server, fetcher):
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield server.url(f"/ok-lazy{i}")

    stream = fetcher.fetch_many(source())
    next(stream)
    assert pulled <= 2 * fetcher.config.threads + 1
    stream.close()


def test_fetch_many_connections_bounded_by_threads(server, fetcher):
    before = len(server.log)
    list(fetcher.fetch_many(server.url(f"/ok-par{i}") for i in range(40)))
    assert len({port for _, port, _ in server.log[before:]}) <= fetcher.config.threads


# --- config and constants -----------------------------------------------------

def test_retryable_kinds():
    assert RETRYABLE <= set(ERROR_KINDS)
    assert is_retryable("timeout") and is_retryable("http_error", 503) and is_retryable("http_error", 429)
    assert not is_retryable("http_error", 404) and not is_retryable("blocked_address")
    assert not is_retryable(None)


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"retries": -1}, {"threads": 0}, {"max_bytes": 0}])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        FetchConfig(**kwargs)


# --- HTTPS through the guarded connection ----------------------------------------

@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """HTTPS server on 127.0.0.1 with a throwaway self-signed certificate for localhost."""
    x509 = pytest.importorskip("cryptography.x509")
    import datetime
    import ipaddress
    import ssl

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    srv = _Server()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "cert.pem", d / "key.pem")
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv, str(d / "cert.pem")
    srv.shutdown()
    srv.server_close()


def test_https_through_guard_verifies_certificate(tls_server, monkeypatch):
    srv, ca = tls_server
    url = f"https://localhost:{srv.server_address[1]}/ok-tls.jpg"
    monkeypatch.setattr(guard, "is_public_address", lambda a: a == "127.0.0.1")
    with Fetcher(FetchConfig(retries=0)) as f:  # default CA bundle: our certificate is unknown
        untrusted = f.fetch(url)
    monkeypatch.setattr(fetch_mod.certifi, "where", lambda: ca)
    with Fetcher(FetchConfig(retries=0)) as f:
        trusted = f.fetch(url)
        again = f.fetch(url)
    assert untrusted.error_kind == "connection_error" and "TLS" in untrusted.error_message
    assert trusted.data == JPEG and again.data == JPEG  # SNI/hostname checked for "localhost"
    assert len({port for path, port, _ in srv.log if path == "/ok-tls.jpg"}) == 1  # kept alive
