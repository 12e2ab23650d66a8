"""Caption filters that need no model (LAION drops alt-text under 5 characters)."""

from __future__ import annotations

from dataclasses import dataclass

from vlcurate.filters.base import KEEP, Decision, FilterConfig, FilterStage
from vlcurate.pipelines.samples import SampleRow
from vlcurate.pipelines.stage import register_stage
from vlcurate.typed import bounded, check_bounds


@dataclass(frozen=True)
class CaptionFilterConfig(FilterConfig):
    min_chars: int = bounded(5, ge=0)
    max_chars: int = bounded(10_000, ge=0)
    min_words: int = bounded(1, ge=0)

    def __post_init__(self) -> None:
        check_bounds(self)


@register_stage
class CaptionFilter(FilterStage):
    """Drops samples whose caption is missing, too short or too long."""

    name = "caption_filter"
    Config = CaptionFilterConfig

    def decide(self, row: SampleRow) -> Decision:
        caption = (row.get("caption") or "").strip()
        cfg = self.config
        if not caption:
            return Decision(False, "no_caption")
        if len(caption) < cfg.min_chars or len(caption.split()) < cfg.min_words:
            return Decision(False, "caption_too_short", detail=f"{len(caption)} chars")
        if len(caption) > cfg.max_chars:
            return Decision(False, "caption_too_long", detail=f"{len(caption)} chars")
        return KEEP
