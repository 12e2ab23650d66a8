"""DataComp's "basic filtering" baseline as a named preset (Gadre et al. 2023, sec. 3.4):
English captions, captions of more than 2 words and more than 5 characters, images
whose original shorter side is at least 200 pixels and whose aspect ratio is at most
3. The sizes are the image's as downloaded (``original_width``/``original_height``),
not the stored, resized ones. DataComp detected English with fastText; this preset
uses the ``caption_language`` model (py3langid), so a sample is English when that is
its most likely language with at least ``min_language_confidence``.

Checks run cheapest first and the first failure is the reason: ``no_caption``,
``caption_too_short`` (detail: words and characters), ``no_original_size``,
``image_too_small`` and ``bad_aspect_ratio`` (detail: the original size),
``wrong_language`` (detail: the language, score: its confidence). A kept row has the
language in ``detail`` and its confidence in ``score``, as ``caption_language`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlcurate.filters.base import Decision, FilterConfig, FilterStage
from vlcurate.filters.language import LanguageIdentifier
from vlcurate.pipelines.samples import SampleRow
from vlcurate.pipelines.stage import register_stage
from vlcurate.typed import bounded, check_bounds


@dataclass(frozen=True)
class BasicFilteringConfig(FilterConfig):
    language: str = "en"
    min_language_confidence: float = bounded(0.0, ge=0.0, le=1.0)
    min_words: int = bounded(3, ge=0)  # "more than 2 words"
    min_chars: int = bounded(6, ge=0)  # "more than 5 characters"
    min_side: int = bounded(200, ge=0)  # of the original image, in pixels
    max_aspect_ratio: float = bounded(3.0, ge=1.0)  # longer side / shorter side of the original

    def __post_init__(self) -> None:
        check_bounds(self)


@register_stage
class BasicFiltering(FilterStage):
    """DataComp's basic filtering: language, caption length, original image size and shape."""

    name = "datacomp_basic"
    Config = BasicFilteringConfig

    def setup(self) -> None:
        self.identify = LanguageIdentifier()

    def decide(self, row: SampleRow) -> Decision:
        cfg = self.config
        caption = " ".join((row.get("caption") or "").split())
        if not caption:
            return Decision(False, "no_caption")
        words = len(caption.split())
        if words < cfg.min_words or len(caption) < cfg.min_chars:
            return Decision(False, "caption_too_short", detail=f"{words} words, {len(caption)} chars")
        width, height = row.get("original_width"), row.get("original_height")
        if not width or not height:
            return Decision(False, "no_original_size")
        size = f"{width}x{height}"
        if min(width, height) < cfg.min_side:
            return Decision(False, "image_too_small", detail=size)
        if max(width, height) / min(width, height) > cfg.max_aspect_ratio:
            return Decision(False, "bad_aspect_ratio", detail=size)
        if not hasattr(self, "identify"):
            self.setup()
        language, confidence = self.identify(caption)
        if language != cfg.language or confidence < cfg.min_language_confidence:
            return Decision(False, "wrong_language", score=confidence, detail=language)
        return Decision(True, score=confidence, detail=language)
