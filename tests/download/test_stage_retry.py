"""``vlcurate download --retry-failed``: a new version that re-fetches only the rows that
failed with a retryable error (counted at the server), copies every other row and its
stored files from the parent, keeps the keys, and re-runs the later stages."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from pathlib import Path

import polars as pl
import pytest

from tests.download.conftest import write_recipe, write_urls
from tests.download.faults import serve_faults
from vlcurate.cli import main
from vlcurate.download.retry import next_retry_version
from vlcurate.validate import validate_version

FILTERS = [{"caption_filter": {"min_chars": 5}}, {"exact_dedup": {"column": "sha256"}}]


def tar_members(version: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted((version / "samples").glob("*.tar")):
        with tarfile.open(path) as tf:
            out.update({m.name: tf.extractfile(m).read() for m in tf if m.isfile()})
    return out


def rows_of(version: Path) -> pl.DataFrame:
    return pl.read_parquet(str(version / "samples" / "*.parquet"))


def decisions(version: Path, stage: str) -> dict[str, tuple]:
    table = pl.read_parquet(str(version / stage / "*.parquet"))
    return {k: (keep, reason, detail) for k, keep, reason, detail
            in zip(table["key"], table["keep"], table["reason"], table["detail"])}


def retry_rows(fault_corpus) -> list[dict]:
    """ok, 404 and html rows (not retryable), 503-once rows (retryable, succeed on a
    retry), a 500 and a cut-off body (retryable, fail again); the last ok row serves
    the same file as the first flaky row, so it becomes a duplicate once that succeeds."""
    names = [r["path"].split("/")[2] for r in fault_corpus.rows if r["kind"] == "ok"]

    def row(kind: str, name: str) -> dict:
        return {"path": f"/{kind}/{name}", "caption": f"a {kind} picture {name}", "kind": kind}

    return [row("ok", names[0]), row("flaky", names[1]), row("404", names[2]), row("ok", names[3]),
            row("html", names[4]), row("flaky", names[5]), row("500", names[6]), row("ok", names[7]),
            row("trunc", names[8]), row("flaky", names[9]), row("404", names[10]), row("ok", names[1])]


@pytest.fixture(scope="module")
def retried(fault_corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retry")
    rows = retry_rows(fault_corpus)
    with serve_faults(fault_corpus.files) as server:
        urls = write_urls(tmp / "urls.parquet", server.base_url, rows)
        recipe = write_recipe(tmp, [str(urls)], {"allow_networks": ["127.0.0.0/8"], "retries": 0},
                              samples_per_shard=5, filters=FILTERS)
        assert main(["build", str(recipe)]) == 0
        after_build = dict(server.requests)
        parent = tmp / "out" / "faults" / "v1"
        assert main(["download", "--retry-failed", str(parent), "--workers", "1"]) == 0
        after_retry = dict(server.requests)
        child = tmp / "out" / "faults" / "v1-retry1"
        with _captured() as second:  # a retry of the retry: the 500 and the cut-off body fail again
            second["code"] = main(["download", "--retry-failed", str(child)])
        after_second = dict(server.requests)
    grandchild = tmp / "out" / "faults" / "v1-retry2"
    with _captured() as dead:  # the server is gone: every refetch is a connection error
        dead["code"] = main(["download", "--retry-failed", str(grandchild)])
    return {"rows": rows, "parent": parent, "child": child, "grandchild": grandchild,
            "dead": tmp / "out" / "faults" / "v1-retry3", "second_run": second, "dead_run": dead,
            "requests": (after_build, after_retry, after_second), "tmp": tmp}


@contextlib.contextmanager
def _captured():
    """What the CLI prints (stdout and stderr) into a dict, for module-scoped fixtures."""
    out, err, result = io.StringIO(), io.StringIO(), {}
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield result
    result["out"], result["err"] = out.getvalue(), err.getvalue()


def new_requests(before: dict, after: dict) -> dict:
    return {p: n - before.get(p, 0) for p, n in after.items() if n != before.get(p, 0)}


def test_only_retryable_failures_are_requested_again(retried):
    after_build, after_retry, after_second = retried["requests"]
    retryable = [r["path"] for r in retried["rows"] if r["kind"] in ("flaky", "500", "trunc")]
    assert new_requests(after_build, after_retry) == {p: 1 for p in retryable}
    # in the second retry the flaky rows are ok (copied); 500 and trunc failed again
    still = [r["path"] for r in retried["rows"] if r["kind"] in ("500", "trunc")]
    assert new_requests(after_retry, after_second) == {p: 1 for p in still}


def test_new_version_keeps_keys_and_every_other_row_exactly(retried):
    parent, child = rows_of(retried["parent"]), rows_of(retried["child"])
    assert child["key"].to_list() == parent["key"].to_list()
    assert child["url"].to_list() == parent["url"].to_list()
    refetched = parent["kind"].is_in(["flaky", "500", "trunc"])
    assert child.filter(~refetched).to_dicts() == parent.filter(~refetched).to_dicts()
    flaky = child.filter(pl.col("kind") == "flaky")
    assert set(flaky["status"]) == {"ok"} and set(flaky["http_status"]) == {200}
    assert set(child.filter(pl.col("kind") == "500")["error_kind"]) == {"http_error"}
    assert set(child.filter(pl.col("kind") == "trunc")["error_kind"]) == {"transfer_error"}
    # ok rows: the parent's stored bytes, copied (not re-downloaded: see the request counts)
    before, after = tar_members(retried["parent"]), tar_members(retried["child"])
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {f"{k}.{e}" for k in flaky["key"] for e in ("jpg", "json", "txt")}


def test_manifest_lineage_counts_and_validity(retried):
    manifest = json.loads((retried["child"] / "manifest.json").read_text())
    assert manifest["parent"] == str(retried["parent"])
    download = manifest["stages"][0]
    assert download["counts"]["refetched"] == 5 and download["counts"]["reused"] == 7
    assert download["counts"]["ok"] == 7  # 4 ok + 3 flaky that now succeed
    assert manifest["recipe"]["stages"][0]["download"]["reuse"] == str(retried["parent"])
    grand = json.loads((retried["grandchild"] / "manifest.json").read_text())
    assert grand["parent"] == str(retried["child"])
    for version in (retried["child"], retried["grandchild"]):
        assert validate_version(version) == []


def test_summary_counts_recovered_rows_and_exit_code(retried):
    second, dead = retried["second_run"], retried["dead_run"]
    assert second["code"] == 1, second
    assert "refetched 2 rows: 0 of 2 recovered; 2 failed again" in second["out"]
    assert f"vlcurate: warning: 0 of 2 recovered; version kept for inspection: {retried['grandchild']}" in second["err"]
    assert dead["code"] == 1 and "refetched 2 rows: 0 of 2 recovered" in dead["out"], dead
    assert (retried["dead"] / "manifest.json").is_file()  # kept for inspection
    child = json.loads((retried["child"] / "manifest.json").read_text())["stages"][0]["counts"]
    assert (child["refetched"], child["recovered"]) == (5, 3)


def test_a_row_failing_again_keeps_its_first_error(retried):
    def row(version, kind):
        (found,) = rows_of(version).filter(pl.col("kind") == kind).to_dicts()
        return found

    # the 500 row, refetched twice more: once against the live server, once against none
    parent_row = row(retried["parent"], "500")
    assert (parent_row["error_kind"], parent_row["http_status"], parent_row["first_error_kind"]) == \
        ("http_error", 500, None)
    dead_row = row(retried["dead"], "500")
    assert (dead_row["error_kind"], dead_row["http_status"]) == ("connection_error", None)
    assert (dead_row["first_error_kind"], dead_row["first_http_status"]) == ("http_error", 500)
    assert dead_row["first_error_message"] == parent_row["error_message"]
    trunc = row(retried["grandchild"], "trunc")
    assert trunc["first_error_kind"] == "transfer_error" and trunc["status"] == "failed"
    # a recovered row keeps the error it was recovered from; a row fetched once has none
    flaky = rows_of(retried["child"]).filter(pl.col("kind") == "flaky")
    assert set(flaky["status"]) == {"ok"} and set(flaky["first_http_status"]) == {503}
    assert set(rows_of(retried["child"]).filter(pl.col("kind") == "ok")["first_error_kind"]) == {None}


def test_later_stages_rerun_over_the_new_samples(retried):
    rows = retried["rows"]
    keys = rows_of(retried["child"])["key"].to_list()
    first_flaky, twin = keys[1], keys[len(rows) - 1]  # the last ok row serves the first flaky file
    before, after = decisions(retried["parent"], "exact_dedup"), decisions(retried["child"], "exact_dedup")
    assert before[twin][0] is True and first_flaky not in before
    assert after[first_flaky][0] is True
    assert after[twin] == (False, "duplicate", first_flaky)
    assert decisions(retried["child"], "caption_filter").keys() >= {keys[1], keys[5], keys[9]}


def test_nothing_to_retry_writes_no_version(retried, fault_corpus, tmp_path, capsys):
    # a version whose failures are all final (404): nothing is fetched, nothing written
    ok = [r for r in retried["rows"] if r["kind"] in ("ok", "404")]
    with serve_faults(fault_corpus.files) as server:
        urls = write_urls(tmp_path / "urls.parquet", server.base_url, ok)
        assert main(["build", str(write_recipe(tmp_path, [str(urls)], {"allow_networks": ["127.0.0.0/8"]}))]) == 0
        capsys.readouterr()
        clean = tmp_path / "out" / "faults" / "v1"
        assert main(["download", "--retry-failed", str(clean)]) == 0
        assert sum(server.requests.values()) == len(ok)
    assert "nothing to retry" in capsys.readouterr().err
    assert sorted(p.name for p in clean.parent.iterdir()) == ["v1"]


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    err = err.strip()
    assert code == 2 and err.startswith("vlcurate: error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_bad_input_is_a_one_line_error(retried, tmp_path, capsys):
    assert_one_line_error(main(["download", "--retry-failed", str(tmp_path)]), capsys.readouterr().err,
                          str(tmp_path), "not a version directory")
    parent = retried["parent"]
    listing = sorted(p.name for p in parent.parent.iterdir())
    assert_one_line_error(main(["download", "--retry-failed", str(parent), "--version", "v1-retry1"]),
                          capsys.readouterr().err, "v1-retry1", "already exists")
    assert_one_line_error(main(["download", "--retry-failed", str(parent), "--version", "bad/name"]),
                          capsys.readouterr().err, "bad/name")
    assert sorted(p.name for p in parent.parent.iterdir()) == listing


def test_next_retry_version_names(tmp_path):
    assert next_retry_version(tmp_path, "v1") == "v1-retry1"
    (tmp_path / "v1-retry1").mkdir()
    assert next_retry_version(tmp_path, "v1") == "v1-retry2"
    assert next_retry_version(tmp_path, "v1-retry1") == "v1-retry2"
    assert next_retry_version(tmp_path, "2024.06") == "2024.06-retry1"
