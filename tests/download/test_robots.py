"""robots.txt against a loopback server: fetched once per host and cached, checked
before the image is requested, a disallowed URL recorded as opted_out with the rule."""

from __future__ import annotations


import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.download.conftest import write_recipe
from tests.download.fetch_server import JPEG, running_server
from vlcurate.cli import main
from vlcurate.download.fetch import FetchConfig, Fetcher
from vlcurate.download.robots import parse_robots

ROBOTS = b"""# comments and unknown lines are ignored
User-agent: googlebot
Disallow: /

User-agent: *
Disallow: /ok-private/
Allow: /ok-private/public*.jpg$
Disallow: /*.gif$
"""
LOOPBACK = ("127.0.0.0/8",)


@pytest.fixture
def server():
    with running_server() as srv:
        yield srv


def test_disallowed_url_is_opted_out_with_the_rule_and_never_requested(server):
    server.robots_txt = (200, ROBOTS)
    with Fetcher(FetchConfig(allow_networks=LOOPBACK, robots_txt=True, retries=0)) as f:
        refused = f.fetch(server.url("/ok-private/a.jpg"))
        allowed = f.fetch(server.url("/ok-private/public-1.jpg"))  # longer Allow wins
        gif = f.fetch(server.url("/ok-x.gif"))
        fine = f.fetch(server.url("/ok-fine.jpg"))
    assert (refused.error_kind, refused.data) == ("opted_out", None)
    assert "'Disallow: /ok-private/'" in refused.error_message and "user-agent: *" in refused.error_message
    assert gif.error_kind == "opted_out" and "'Disallow: /*.gif$'" in gif.error_message
    assert allowed.data == JPEG and fine.data == JPEG
    assert server.hits["/ok-private/a.jpg"] == 0 and server.hits["/ok-x.gif"] == 0  # checked first
    assert server.hits["/robots.txt"] == 1  # once per host, cached


def test_fetched_once_per_host_under_concurrency(server):
    server.robots_txt, server.robots_delay = (200, ROBOTS), 0.3
    urls = [server.url(f"/ok-c{i}.jpg") for i in range(12)] + [server.url("/ok-private/b.jpg")]
    with Fetcher(FetchConfig(allow_networks=LOOPBACK, robots_txt=True, threads=8)) as f:
        results = dict(f.fetch_many(urls))
    assert server.hits["/robots.txt"] == 1
    assert [results[i].error_kind for i in range(len(urls))] == [None] * 12 + ["opted_out"]


def test_our_token_group_wins_over_star(server):
    server.robots_txt = (200, b"User-agent: *\nDisallow: /\n\nUser-agent: acme-research\nAllow: /\n")
    cfg = FetchConfig(allow_networks=LOOPBACK, robots_txt=True, user_agent_token="acme-research")
    with Fetcher(cfg) as f:
        assert f.fetch(server.url("/ok-token.jpg")).data == JPEG
    with Fetcher(FetchConfig(allow_networks=LOOPBACK, robots_txt=True)) as f:
        r = f.fetch(server.url("/ok-token.jpg"))
    assert r.error_kind == "opted_out" and "'Disallow: /'" in r.error_message


def test_missing_robots_allows_and_unreachable_fails_retryably(server):
    with Fetcher(FetchConfig(allow_networks=LOOPBACK, robots_txt=True)) as f:
        assert f.fetch(server.url("/ok-404robots.jpg")).data == JPEG  # 404: no rules
    server.robots_txt = (503, b"busy")
    with Fetcher(FetchConfig(allow_networks=LOOPBACK, robots_txt=True, retries=0)) as f:
        r = f.fetch(server.url("/ok-503robots.jpg"))
    assert (r.error_kind, r.http_status) == ("http_error", 503)
    assert "robots.txt of" in r.error_message and "unreachable" in r.error_message
    assert server.hits["/ok-503robots.jpg"] == 0


def test_off_by_default(server):
    server.robots_txt = (200, b"User-agent: *\nDisallow: /\n")
    with Fetcher(FetchConfig(allow_networks=LOOPBACK)) as f:
        assert f.fetch(server.url("/ok-default.jpg")).data == JPEG
    assert server.hits["/robots.txt"] == 0


def test_robots_through_the_build(server, tmp_path, capsys):
    server.robots_txt = (200, ROBOTS)
    paths = ["/ok-b1.jpg", "/ok-private/x.jpg", "/ok-b2.jpg", "/ok-private/public-2.jpg"]
    pq.write_table(pa.table({"url": [server.url(p) for p in paths], "caption": ["c"] * 4,
                             "kind": ["ok", "private", "ok", "public"]}), tmp_path / "urls.parquet")
    recipe = write_recipe(tmp_path, [str(tmp_path / "urls.parquet")],
                          {"allow_networks": list(LOOPBACK), "robots_txt": True})
    assert main(["build", str(recipe)]) == 0, capsys.readouterr().err
    rows = pq.read_table(tmp_path / "out/faults/v1/samples/00000.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "failed", "ok", "ok"]
    assert rows[1]["error_kind"] == "opted_out" and "Disallow: /ok-private/" in rows[1]["error_message"]
    assert server.hits["/robots.txt"] == 1


@pytest.mark.parametrize(
    ("path", "blocked_by"),
    [("/a", None), ("/private/x", "Disallow: /private/"), ("/private/ok.jpg", None),
     ("/private/ok.jpgx", "Disallow: /private/"), ("/x?session=1", "Disallow: /*?session="),
     ("/robots.txt", None)],
)
def test_parse_longest_match_and_wildcards(path, blocked_by):
    rules = parse_robots("User-agent: *\nDisallow: /private/\nAllow: /private/*.jpg$\n"
                         "Disallow: /*?session=\n", ("vlcurate",))
    rule = rules.blocking_rule(path)
    assert (rule.line if rule else None) == blocked_by
