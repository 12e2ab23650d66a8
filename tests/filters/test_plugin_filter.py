"""A filter from another package registers through the ``vlcurate.stages`` entry point,
without editing vlcurate, and runs like a built-in one (README: Adding a filter)."""

import sys
import textwrap

import pyarrow.parquet as pq

import vlcurate.pipelines.stage as stage_module
from tests.filters.test_filters import write_shard
from vlcurate.pipelines.stage import Layout, stage_class

PLUGIN = '''
from dataclasses import dataclass
from vlcurate.filters.base import KEEP, Decision, FilterStage
from vlcurate.pipelines.samples import SampleRow
from vlcurate.pipelines.stage import register_stage

@dataclass(frozen=True)
class ShortCaptionConfig:
    min_words: int = 3

@register_stage
class ShortCaption(FilterStage):
    name = "short_caption"
    Config = ShortCaptionConfig

    def decide(self, row: SampleRow) -> Decision:
        words = len((row["caption"] or "").split())
        if words < self.config.min_words:
            self.count("short.words", words)
            return Decision(False, "too_few_words", score=words)
        return KEEP
'''


def test_a_third_party_filter_registers_by_entry_point_and_runs(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "vlc_plugin_demo-0.1.dist-info").mkdir(parents=True)
    (site / "vlc_plugin_demo.py").write_text(PLUGIN)
    (site / "vlc_plugin_demo-0.1.dist-info" / "METADATA").write_text("Name: vlc-plugin-demo\nVersion: 0.1\n")
    (site / "vlc_plugin_demo-0.1.dist-info" / "entry_points.txt").write_text(textwrap.dedent("""
        [vlcurate.stages]
        demo = vlc_plugin_demo
    """))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(stage_module, "_LOADED", False)
    monkeypatch.setattr(stage_module, "_STAGES", dict(stage_module._STAGES))
    try:
        cls = stage_class("short_caption")
        layout = Layout.for_stages(tmp_path / "v", ["download", "short_caption"])
        write_shard(layout, 0, [("a red square", "h1", "ok"), ("two words", "h2", "ok"), ("gone", None, "failed")])
        stats = cls(cls.Config(), layout).run_shard(0)
        assert stats.counts == {"kept": 1, "dropped.too_few_words": 1, "short.words": 2}
        rows = pq.read_table(layout.sidecar("short_caption", 0)).to_pylist()
        assert [(r["key"], r["keep"], r["reason"], r["score"]) for r in rows] == [
            ("00000_000000", True, None, None), ("00000_000001", False, "too_few_words", 2.0)]
        assert [f.path for f in stats.files] == [layout.sidecar("short_caption", 0)]
    finally:
        sys.modules.pop("vlc_plugin_demo", None)
