"""Filters as plain Python on a hand-made shard, without Beam."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlcurate.filters.base import Decision
from vlcurate.filters.dedup import ExactDedup, ExactDedupConfig
from vlcurate.filters.text import CaptionFilter, CaptionFilterConfig
from vlcurate.io import storage
from vlcurate.io.parquet import write_parquet
from vlcurate.pipelines.keyed import findings_by_shard
from vlcurate.pipelines.samples import alive_samples
from vlcurate.pipelines.stage import Layout
from vlcurate.schemas import get_schema


def write_shard(layout, shard, rows):
    full = []
    for i, (caption, sha, status) in enumerate(rows):
        ok = status == "ok"
        full.append({"key": f"{shard:05d}_{i:06d}", "url": f"http://h/{shard}/{i}", "caption": caption,
                     "status": status, "error_kind": None if ok else "http_error", "error_message": None,
                     "http_status": 200 if ok else 404, "width": 8 if ok else None, "height": 8 if ok else None, "original_width": None,
                     "original_height": None, "sha256": sha if ok else None, "phash": None})
    write_parquet(pa.Table.from_pylist(full, schema=get_schema("sample").schema), layout.samples_parquet(shard), "sample")


def test_caption_filter_then_dedup_funnel(tmp_path):
    layout = Layout.for_stages(tmp_path, ["download", "caption_filter", "exact_dedup"])
    write_shard(layout, 0, [("a red square", "h1", "ok"), ("", "h2", "ok"), ("x", "h3", "ok"),
                            ("a blue circle", "h1", "ok"), ("failed row", None, "failed")])
    write_shard(layout, 1, [("a red square again", "h1", "ok"), ("short", "h2", "ok"), ("a cat", "h4", "ok")])
    caption = CaptionFilter(CaptionFilterConfig(min_chars=5), layout)
    s0, s1 = caption.run_shard(0), caption.run_shard(1)
    assert s0.counts == {"kept": 2, "dropped.no_caption": 1, "dropped.caption_too_short": 1}
    assert s0.rows == 4  # the failed download is not a sample
    assert s1.counts == {"kept": 3}

    dedup = ExactDedup(ExactDedupConfig(), layout)
    found = findings_by_shard(dedup, [0, 1])
    # the copy of h1 in shard 0 and the one in shard 1 point at the first; h2 in shard 0 was
    # dropped by the caption filter, so shard 1's h2 is an original
    assert found == {0: [("00000_000003", "00000_000000")], 1: [("00001_000000", "00000_000000")]}
    d0, d1 = dedup.run_shard(0, found[0]), dedup.run_shard(1, found[1])
    assert d0.counts == {"kept": 1, "dropped.duplicate": 1}
    assert d1.counts == {"kept": 2, "dropped.duplicate": 1}
    dropped = pq.read_table(layout.sidecar("exact_dedup", 1)).to_pylist()[0]
    assert dropped["keep"] is False and dropped["detail"] == "00000_000000"
    assert alive_samples(layout, 0, ["key"]).column("key").to_pylist() == ["00000_000000"]


def test_drop_needs_reason():
    with pytest.raises(ValueError, match="reason"):
        Decision(False)


def test_a_filter_rerun_after_a_kill_ignores_its_own_earlier_decisions(tmp_path):
    """Killed after writing its decision file but before its stats file, a filter
    runs on the shard again; its new file must be the same, not miss its own drops."""
    layout = Layout.for_stages(tmp_path, ["download", "caption_filter", "exact_dedup"])
    write_shard(layout, 0, [("a red square", "h1", "ok"), ("", "h2", "ok"), ("x", "h3", "ok")])
    caption = CaptionFilter(CaptionFilterConfig(min_chars=5), layout)
    first = caption.run_shard(0)
    before = storage.read_bytes(layout.sidecar("caption_filter", 0))
    again = caption.run_shard(0)
    assert again.counts == first.counts == {"kept": 1, "dropped.no_caption": 1, "dropped.caption_too_short": 1}
    assert storage.read_bytes(layout.sidecar("caption_filter", 0)) == before
    dedup = ExactDedup(ExactDedupConfig(), layout)
    dedup.run_shard(0, [])
    assert [key for _, key in dedup.signatures(0)] == ["00000_000000"]
