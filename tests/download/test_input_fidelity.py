"""Inputs carried unchanged: every input column reaches the sample row as it was (a
null URL stays null), while odd URLs are fetched the way a browser would fetch them."""

from __future__ import annotations

import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.download.conftest import write_recipe
from tests.download.fetch_server import running_server
from vlcurate.cli import main
from vlcurate.download.urls import InvalidURL, browser_url


@pytest.mark.parametrize(
    ("raw", "sent"),
    [
        ("  http://example.com/a.jpg \n", "http://example.com/a.jpg"),  # surrounding whitespace
        ("http://exam\nple.com/a\t.jpg", "http://example.com/a.jpg"),  # tabs/newlines pasted inside
        ("http://example.com/a b/c d.jpg?q=x y", "http://example.com/a%20b/c%20d.jpg?q=x%20y"),
        ("http://example.com/ü.jpg?ä=1", "http://example.com/%C3%BC.jpg?%C3%A4=1"),
        ("http://example.com/a%20b%2Fc.jpg", "http://example.com/a%20b%2Fc.jpg"),  # kept, not re-encoded
        ("http://example.com/100%.jpg", "http://example.com/100%25.jpg"),  # a lone '%'
        ("http://Bücher.Example/a.jpg", "http://xn--bcher-kva.example/a.jpg"),  # IDN host: UTS 46 + Punycode
        ("http://faß.de/a.jpg", "http://xn--fa-hia.de/a.jpg"),  # non-transitional, as browsers do
        ("HTTP://EXAMPLE.com:80/a.jpg#frag", "http://example.com/a.jpg"),
        ("https:\\\\example.com\\a\\b.jpg", "https://example.com/a/b.jpg"),
        ("http://example.com/a/./b/../c.jpg", "http://example.com/a/c.jpg"),
        ("http://0x7f.1/a.jpg", "http://127.0.0.1/a.jpg"),  # numeric hosts as the browser reads them
        ("http://2130706433/a.jpg", "http://127.0.0.1/a.jpg"),
        ("http://[::FFFF:10.0.0.1]/a.jpg", "http://[::ffff:a00:1]/a.jpg"),
    ],
)
def test_browser_url(raw, sent):
    assert browser_url(raw) == sent
    assert browser_url(sent) == sent  # idempotent: a redirect to it is sent the same


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("", "empty"), (" \t", "empty"), ("example.com/a.jpg", "no scheme"), ("ftp://x/a", "scheme"),
     ("http://", "no host"), ("http://exa mple.com/", "contains"), ("http://a:99999/", "port"),
     ("http://256.0.0.1/", "IPv4"), ("http://[::1/", "IPv6")],
)
def test_browser_url_refuses(raw, reason):
    with pytest.raises(InvalidURL, match=reason):
        browser_url(raw)


@pytest.fixture(scope="module")
def server():
    with running_server() as srv:
        yield srv


def test_every_input_column_is_carried_unchanged(server, tmp_path, monkeypatch, capsys):
    port = server.server_address[1]
    base = f"http://127.0.0.1:{port}"
    jailed = socket.getaddrinfo  # the network jail's lookup: only loopback names resolve

    def resolve(host, *args, **kwargs):  # the IDN host's Punycode name lives on loopback
        return jailed("127.0.0.1" if host == "xn--bcher-kva.example" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    urls = [
        None,
        "",
        f"  {base}/ok-ws.jpg \n",
        f"{base}/ok dir/ä b.jpg",
        f"http://Bücher.example:{port}/ok-idn.jpg",
        f"{base}/ok%2Dpct%20x.jpg",
        f"{base}/ok-frag.jpg#part",
    ]
    source = pa.table({
        "url": pa.array(urls, pa.string()),
        "caption": pa.array([" padded ", None, "", "x", "ü", "\ttab", "y"], pa.string()),
        "kind": pa.array(["null", "empty", "ws", "space", "idn", "pct", "frag"]),
        "n": pa.array([1, None, 3, 4, 5, 6, 2**40], pa.int64()),
        "score": pa.array([0.5, None, float("inf"), -0.0, 1e-300, 2.5, 3.0], pa.float64()),
        "tags": pa.array([["a"], [], None, ["b", "c"], ["d"], ["e"], ["f"]], pa.list_(pa.string())),
    })
    pq.write_table(source, tmp_path / "urls.parquet")
    recipe = write_recipe(tmp_path, [str(tmp_path / "urls.parquet")], {"allow_networks": ["127.0.0.0/8"]},
                          input_extra={"extra_cols": ["kind", "n", "score", "tags"]})
    assert main(["build", str(recipe)]) == 0, capsys.readouterr().err
    out = pq.read_table(tmp_path / "out" / "faults" / "v1" / "samples" / "00000.parquet")
    for name in source.schema.names:  # value for value, type for type, nulls included
        assert out.schema.field(name).type == source.schema.field(name).type, name
        assert out.column(name).to_pylist() == source.column(name).to_pylist(), name
    rows = {r["kind"]: r for r in out.to_pylist()}
    assert (rows["null"]["status"], rows["null"]["error_kind"]) == ("failed", "invalid_url")
    assert (rows["empty"]["status"], rows["empty"]["error_kind"]) == ("failed", "invalid_url")
    assert {rows[k]["status"] for k in ("ws", "space", "idn", "pct", "frag")} == {"ok"}
    seen = {(path, host) for path, _, host in server.log}
    assert ("/ok-ws.jpg", f"127.0.0.1:{port}") in seen
    assert ("/ok%20dir/%C3%A4%20b.jpg", f"127.0.0.1:{port}") in seen
    assert ("/ok-idn.jpg", f"xn--bcher-kva.example:{port}") in seen  # the Host header in Punycode
    assert ("/ok%2Dpct%20x.jpg", f"127.0.0.1:{port}") in seen  # not re-encoded
    assert ("/ok-frag.jpg", f"127.0.0.1:{port}") in seen  # the fragment is never sent
