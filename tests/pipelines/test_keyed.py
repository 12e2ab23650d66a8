"""Keyed corpus-wide steps: exact dedup decides the same on every runner and worker
count, with each copy pointing at the smallest key of its group, and the manifest is
assembled from the stats markers without reading a data file back."""

from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import local_dask_cluster, make_recipe
from vlcurate.io import storage
from vlcurate.pipelines.build import build
from vlcurate.recipe import load_recipe

STAGES = [{"download": {"image_size": 64, "allow_networks": ["127.0.0.0/8"]}},
          {"caption_filter": {"min_chars": 5}},
          {"exact_dedup": {"column": "sha256"}}]


def expected_dedup(version: Path) -> dict[str, str]:
    """Computed here from the sample rows and the caption filter's decisions, without
    the stage's code: every sha256 group's later keys -> its smallest key."""
    dropped = set()
    for path in sorted((version / "caption_filter").glob("*.parquet")):
        t = pq.read_table(path).to_pylist()
        dropped |= {r["key"] for r in t if not r["keep"]}
    groups = defaultdict(list)
    for path in sorted((version / "samples").glob("*.parquet")):
        for r in pq.read_table(path).to_pylist():
            if r["status"] == "ok" and r["key"] not in dropped:
                groups[r["sha256"]].append(r["key"])
    return {k: min(keys) for keys in groups.values() for k in keys if k != min(keys)}


def dedup_decisions(version: Path) -> dict[str, str]:
    rows = [r for p in sorted((version / "exact_dedup").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert all(r["reason"] == "duplicate" for r in rows if not r["keep"])
    return {r["key"]: r["detail"] for r in rows if not r["keep"]}


def checksums(manifest):
    return {f["path"]: f["sha256"] for f in manifest["files"] if f["path"].startswith(("exact_dedup/", "samples/"))}


def test_demo_dedup_points_every_copy_at_the_smallest_key(demo_version):
    found = dedup_decisions(demo_version)
    assert len(found) == 14
    assert found == expected_dedup(demo_version)


@pytest.mark.slow
def test_twenty_shards_same_decisions_on_one_and_two_workers_and_dask(tmp_path, demo_urls):
    pytest.importorskip("distributed")
    builds = {}
    for workers in (1, 2):
        recipe = make_recipe(tmp_path, demo_urls, root=f"w{workers}", samples_per_shard=12, stages=STAGES,
                             runner={"name": "local", "workers": workers})
        builds[f"local-{workers}"] = build(load_recipe(recipe), log=lambda s: None)
    with local_dask_cluster() as (cluster, client):
        recipe = make_recipe(tmp_path, demo_urls, root="dask", samples_per_shard=12, stages=STAGES, runner={
            "name": "DaskRunner", "options": [f"--dask_client_address={cluster.scheduler_address}"]})
        builds["dask"] = build(load_recipe(recipe), log=lambda s: None)
    first = Path(builds["local-1"].version_dir)
    assert builds["local-1"].manifest["stages"][0]["shards"] == 20
    decisions = dedup_decisions(first)
    assert len(decisions) == 14 and decisions == expected_dedup(first)
    # copies across shards: a representative in another shard than some of its copies
    assert any(k.split("_")[0] != v.split("_")[0] for k, v in decisions.items())
    for name, result in builds.items():
        assert dedup_decisions(Path(result.version_dir)) == decisions, name
        assert checksums(result.manifest) == checksums(builds["local-1"].manifest), name


def test_manifest_is_assembled_without_reading_data_files(tmp_path, demo_urls, monkeypatch):
    """Every read through the storage layer while the manifest is written is a stats
    marker; and what the markers say equals the files on disk."""
    import vlcurate.pipelines.build as build_module
    import vlcurate.versions as versions

    reads: list[str] = []
    real_open_read = storage.open_read

    def counting_open_read(loc):
        reads.append(str(loc))
        return real_open_read(loc)

    def counted(fn):
        def wrapper(*args, **kwargs):
            monkeypatch.setattr(storage, "open_read", counting_open_read)
            try:
                return fn(*args, **kwargs)
            finally:
                monkeypatch.setattr(storage, "open_read", real_open_read)
        return wrapper

    monkeypatch.setattr(build_module, "write_manifest", counted(versions.write_manifest))
    monkeypatch.setattr(build_module, "read_markers", counted(versions.read_markers))
    recipe = make_recipe(tmp_path, demo_urls, samples_per_shard=60, stages=STAGES)
    result = build(load_recipe(recipe), log=lambda s: None)
    assert reads and all("/stats/" in r and r.endswith(".json") for r in reads), reads
    assert len(reads) == 3 * 4  # one marker per stage and shard
    version = Path(result.version_dir)
    for entry in result.manifest["files"]:
        data = (version / entry["path"]).read_bytes()
        assert (storage.sha256(version / entry["path"]), len(data)) == (entry["sha256"], entry["bytes"])
    rows = {e["path"]: e["rows"] for e in result.manifest["files"]}
    assert rows["samples/00000.parquet"] == 60 == pq.ParquetFile(version / "samples/00000.parquet").metadata.num_rows


class _Pairs:
    """A keyed stage's three roles on in-memory rows: group by value, the smallest key
    of a group is its representative (exact_dedup's rule)."""

    def __init__(self, rows_by_shard):
        self.rows = rows_by_shard

    def signatures(self, shard):
        return [(value, key) for key, value in self.rows[shard]]

    def resolve(self, value, keys):
        first, *copies = sorted(keys)
        for key in copies:
            yield int(key.split("_")[0]), (key, first)


def test_packed_buckets_give_the_groups_unpacked_records_give():
    """Packing records into buckets (what crosses the runner's shuffle) changes nothing:
    every group is resolved whole, whatever the bucket count, and each shard gets exactly
    its own findings, sorted."""
    import random

    from vlcurate.pipelines.keyed import bucket_of, findings_by_shard, packed_signatures, resolve_bucket, \
        unpack_findings

    rng = random.Random(4)
    rows = {s: [(f"{s:05d}_{i:06d}", rng.randrange(300)) for i in range(200)] for s in range(7)}
    stage = _Pairs(rows)
    expected = defaultdict(list)
    groups = defaultdict(list)
    for shard, pairs in rows.items():
        for key, value in pairs:
            groups[value].append(key)
    for value, keys in groups.items():
        for shard, finding in stage.resolve(value, keys):
            expected[shard].append(finding)
    expected = {s: sorted(expected[s]) for s in rows}
    assert sum(map(len, expected.values())) > 500  # many copies, most across shards

    assert findings_by_shard(stage, rows) == expected
    for buckets in (1, 3, 64):
        by_bucket = defaultdict(list)
        for shard in rows:
            for bucket, blob in packed_signatures(stage, shard, buckets):
                assert 0 <= bucket < buckets
                by_bucket[bucket].append(blob)
        found = defaultdict(list)
        for blobs in by_bucket.values():
            for shard, blob in resolve_bucket(stage, reversed(blobs)):  # arrival order must not matter
                found[shard].append(blob)
        assert {s: unpack_findings(found[s]) for s in rows} == expected
    assert len({bucket_of(v, 64) for v in range(300)}) > 32  # values spread over the buckets


def test_a_group_key_lands_in_the_same_bucket_in_every_process():
    """String hashing is salted per process; a bucket must not be (workers pack, others resolve)."""
    import subprocess
    import sys

    from vlcurate.pipelines.keyed import bucket_of

    code = "from vlcurate.pipelines.keyed import bucket_of; print([bucket_of(k, 97) for k in ('a', 'b:1f', ('x', 3))])"
    here = [bucket_of(k, 97) for k in ("a", "b:1f", ("x", 3))]
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**__import__("os").environ, "PYTHONHASHSEED": seed})
        assert out.stdout.strip() == str(here)


def test_keyed_files_give_each_shard_its_findings_and_resume(tmp_path):
    """The storage-layer shuffle of the build's keyed step: signatures files per shard,
    findings files per bucket, each shard's findings read back from its sections, equal
    to the in-memory step's. Files that exist (a resumed build) are not rewritten, and a
    file of another shard count is refused by name."""
    import random

    from vlcurate.pipelines.keyed import KeyedFiles, findings_by_shard, read_section
    from vlcurate.pipelines.stage import Layout

    rng = random.Random(5)
    rows = {s: [(f"{s:05d}_{i:06d}", rng.randrange(150)) for i in range(100)] for s in range(5)}
    rows[3] = []  # a shard with no records: empty sections
    stage = _Pairs(rows)
    files = KeyedFiles(Layout(str(tmp_path)), "dedup", len(rows))
    for shard in reversed(range(5)):  # the order phases run in must not matter
        files.write_signatures(stage, shard)
    for bucket in (2, 0, 4, 1, 3):
        files.resolve(stage, bucket)
    expected = findings_by_shard(stage, rows)
    assert sum(map(len, expected.values())) > 100
    assert {s: files.findings(s) for s in rows} == expected

    written = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.bin")}
    assert len(written) == 10 and all("_work/keyed/dedup/" in str(p) for p in written)
    files.write_signatures(_Pairs({s: [] for s in rows}), 0)  # exists: kept as written
    files.resolve(_Pairs({}), 0)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.bin")} == written
    assert {s: files.findings(s) for s in rows} == expected

    with pytest.raises(ValueError, match=r"00000\.bin: not a keyed-step file of 7 sections"):
        read_section(files.signatures_file(0), 0, 7)
