"""DataComp's basic filtering preset at its boundaries: words and characters, the
original (not the stored) image size, aspect ratio, English."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from vlcurate.filters.basic import BasicFiltering, BasicFilteringConfig
from vlcurate.io.parquet import write_parquet
from vlcurate.pipelines.stage import Layout
from vlcurate.schemas import get_schema

# caption, original (w, h), expected (keep, reason, detail)
CASES = [
    ("a dog on grass", (640, 480), (True, None, "en")),
    ("two dogs", (640, 480), (False, "caption_too_short", "2 words, 8 chars")),
    ("a b c", (640, 480), (False, "caption_too_short", "3 words, 5 chars")),
    ("a b cd", (640, 480), None),  # 3 words, 6 characters: long enough; language decides
    ("", (640, 480), (False, "no_caption", None)),
    ("a red car parked outside", (199, 640), (False, "image_too_small", "199x640")),
    ("a red car parked outside", (200, 600), (True, None, "en")),  # shorter side 200, ratio exactly 3
    ("a red car parked outside", (200, 601), (False, "bad_aspect_ratio", "200x601")),
    ("a red car parked outside", (1000, 250), (False, "bad_aspect_ratio", "1000x250")),
    ("a red car parked outside", (None, None), (False, "no_original_size", None)),
    ("ein roter Wagen parkt vor dem Haus", (640, 480), (False, "wrong_language", "de")),
    ("une voiture rouge garée devant la maison", (640, 480), (False, "wrong_language", "fr")),
]


def test_basic_filtering_boundaries_use_the_original_size(tmp_path):
    layout = Layout.for_stages(tmp_path, ["download", "datacomp_basic"])
    rows = [{"key": f"00000_{i:06d}", "url": f"http://h/{i}", "caption": c, "status": "ok", "error_kind": None,
             "error_message": None, "http_status": 200, "width": 64, "height": 48,  # stored: small, resized
             "original_width": w, "original_height": h, "sha256": str(i), "phash": None}
            for i, (c, (w, h), _) in enumerate(CASES)]
    write_parquet(pa.Table.from_pylist(rows, schema=get_schema("sample").schema), layout.samples_parquet(0), "sample")
    stats = BasicFiltering(BasicFilteringConfig(), layout).run_shard(0)
    decisions = pq.read_table(layout.sidecar("datacomp_basic", 0)).to_pylist()
    for (caption, size, expected), d in zip(CASES, decisions):
        if expected is not None:
            assert (d["keep"], d["reason"], d["detail"]) == expected, caption
        if d["reason"] == "wrong_language" or d["keep"]:
            assert 0.0 <= d["score"] <= 1.0
    assert decisions[3]["reason"] != "caption_too_short"
    assert stats.counts["dropped.bad_aspect_ratio"] == 2 and stats.counts["dropped.wrong_language"] >= 2
