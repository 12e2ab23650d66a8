"""The network allowlist: allow_networks lets named ranges through the SSRF guard and
nothing else, redirects included; allow_private is the private ranges, never
link-local. The socket layer is patched (``network_jail``, tests/download/conftest.py)
so a connect to any non-loopback address is recorded and refused, never sent."""

from __future__ import annotations


import pytest

from vlcurate.cli import main
from vlcurate.download.fetch import FetchConfig, Fetcher, address_policy
from vlcurate.download import guard
from vlcurate.download.guard import AddressPolicy, parse_networks
from tests.download.conftest import write_recipe
from tests.download.fetch_server import JPEG, _Server, running_server

FORBIDDEN = ["http://10.0.0.1/a.jpg", "http://169.254.169.254/latest/meta-data/",
             "http://[::ffff:10.0.0.1]/a.jpg", "http://[fe80::1]/a.jpg", "http://0.0.0.0/a.jpg"]


@pytest.fixture(scope="module")
def server():
    with running_server() as srv:
        yield srv


def _redirect(server: _Server, target: str) -> str:
    return server.url(f"/to?u={target}")


@pytest.mark.parametrize("target", FORBIDDEN)
def test_redirect_out_of_the_allowed_network_is_refused_unattempted(server, network_jail, target):
    with Fetcher(FetchConfig(allow_networks=("127.0.0.0/8",), retries=2, backoff=0.0)) as f:
        ok = f.fetch(server.url("/ok-allowed.jpg"))
        r = f.fetch(_redirect(server, target))
    assert ok.data == JPEG  # the allowed network is reachable
    assert (r.error_kind, r.attempts) == ("blocked_address", 1)
    assert "non-public address" in r.error_message
    assert network_jail.refused == []  # the guard refused before any connect


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/a.jpg",
                                    "http://224.0.0.1/a.jpg", "http://100.64.0.1/a.jpg"])
def test_allow_private_never_opens_link_local_multicast_or_cgnat(server, network_jail, target):
    with Fetcher(FetchConfig(allow_private=True, retries=0)) as f:
        assert f.fetch(server.url("/ok-private.jpg")).data == JPEG  # 127/8 is in the shorthand
        r = f.fetch(_redirect(server, target))
    assert r.error_kind == "blocked_address"
    assert network_jail.refused == []


def test_the_jail_sees_what_the_guard_lets_through(server, network_jail):
    # With 10/8 allowed the guard lets 10.0.0.1 through, so a connect is attempted: the
    # jail must record and refuse it. This is what makes the empty records above mean
    # something.
    with Fetcher(FetchConfig(allow_private=True, retries=0, timeout=1.0)) as f:
        r = f.fetch(_redirect(server, "http://10.0.0.1/a.jpg"))
    assert r.error_kind == "connection_error"
    assert network_jail.refused == ["10.0.0.1"]


def test_only_the_named_network(server, network_jail):
    port = server.server_address[1]
    with Fetcher(FetchConfig(allow_networks=("127.0.0.1/32",), retries=0)) as f:
        ok = f.fetch(server.url("/ok-narrow.jpg"))
        other = f.fetch(_redirect(server, f"http://127.0.0.2:{port}/ok-other.jpg"))
    assert ok.data == JPEG
    assert other.error_kind == "blocked_address" and "127.0.0.2" in other.error_message
    assert server.hits["/ok-other.jpg"] == 0


@pytest.mark.parametrize(
    ("address", "networks", "private", "permitted"),
    [("127.0.0.1", ("127.0.0.0/8",), False, True), ("10.1.2.3", ("127.0.0.0/8",), False, False),
     ("::ffff:127.0.0.1", ("127.0.0.0/8",), False, True), ("::ffff:10.0.0.1", ("127.0.0.0/8",), False, False),
     ("10.1.2.3", ("10.1.0.0/16",), False, True), ("10.2.0.1", ("10.1.0.0/16",), False, False),
     ("192.168.1.1", (), True, True), ("172.31.255.255", (), True, True), ("fd12::1", (), True, True),
     ("::1", (), True, True), ("169.254.169.254", (), True, False), ("fe80::1%eth0", (), True, False),
     ("8.8.8.8", (), False, True), ("10.0.0.1", (), False, False)],
)
def test_policy(address, networks, private, permitted):
    config = FetchConfig(allow_networks=networks, allow_private=private)
    assert address_policy(config).permits(address) is permitted


def test_policy_empty_by_default():
    assert AddressPolicy().permits("127.0.0.1") is False
    assert FetchConfig().allow_networks == () and FetchConfig().allow_private is False


@pytest.mark.parametrize("cidr", ["10.0.0.1/8", "banana", "10.0.0.0/33"])
def test_bad_cidr_refused(cidr):
    with pytest.raises(ValueError, match="allow_networks"):
        parse_networks([cidr])


def test_bad_cidr_in_a_recipe_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "urls.csv").write_text("url,caption,kind\nhttp://127.0.0.1:9/a.jpg,a,ok\n")
    recipe = write_recipe(tmp_path, [str(tmp_path / "urls.csv")], {"allow_networks": ["10.0.0.1/8"]})
    assert main(["build", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "allow_networks" in err and "10.0.0.1/8" in err
    assert not (tmp_path / "out").exists()


def test_an_ip_address_is_vetted_without_the_resolver_threads(server, monkeypatch):
    # An address needs no lookup: no hand-off to the resolver pool (the timeout it
    # exists for cannot arise), and the address is still vetted and connected to.
    monkeypatch.setattr(guard._RESOLVER, "submit", lambda *a, **k: pytest.fail("sent to the resolver"))
    with Fetcher(FetchConfig(retries=0, allow_networks=["127.0.0.0/8"])) as f:
        assert f.fetch(server.url("/ok-literal.jpg")).data == JPEG
    with Fetcher(FetchConfig(retries=0)) as f:  # loopback not allowed: refused before any connect
        assert f.fetch(server.url("/ok-literal.jpg")).error_kind == "blocked_address"
    assert guard.resolve("127.0.0.1", 80, 5.0)[0][4] == ("127.0.0.1", 80)
    assert not guard._is_ip_literal("localhost") and guard._is_ip_literal("::ffff:10.0.0.1")
