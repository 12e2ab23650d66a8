"""Caption language (LAION-5B split its pool by CLD3's language of the alt-text):
language and confidence per sample, kept when the language is one of ``languages``
and the confidence is at least ``min_confidence``.

The model is langid.py's naive Bayes over byte n-grams (97 languages), from the
``py3langid`` wheel, which ships the model file inside the package: it works
offline, nothing is downloaded. Its confidence is the normalised probability of the
language. Compared with CLD3 (``cld3-py``, what LAION-5B used) on the hand-labelled
short captions of ``tests/filters/data/caption_languages.tsv``, it was more accurate
(0.95 against 0.90; 0.76 against 0.48 on captions of 1-3 words) and its confidence
means something (CLD3 gave "ciel bleu" Catalan at 1.0), at about a sixth of CLD3's
speed, still more than a thousand captions a second per core (``benchmarks/README.md``,
Caption language).

Every decision row has the language (ISO 639-1: ``en``, ``de``, ``zh``, ...) in
``detail`` and the confidence in ``score``, kept or not. Drops: ``no_caption``,
``wrong_language`` and ``low_language_confidence``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vlcurate.filters.base import Decision, FilterConfig, FilterStage
from vlcurate.pipelines.samples import SampleRow
from vlcurate.pipelines.stage import register_stage
from vlcurate.typed import FieldError, bounded, check_bounds

# Scripts written without spaces between words: a caption in them has one "word".
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\u0e00-\u0e7f]")
_CODE = re.compile(r"^[a-z]{2,3}$")


def word_count(text: str) -> int:
    """Words of a caption: whitespace-separated, except in scripts without spaces
    (Chinese, Japanese, Thai), where every two characters count as one word."""
    unspaced = len(_UNSPACED.findall(text))
    return len(_UNSPACED.sub(" ", text).split()) + unspaced // 2


def is_long(text: str) -> bool:
    """A caption of 4+ words (:func:`word_count`): short text is where language
    identification is unreliable."""
    return word_count(text) >= 4


@dataclass(frozen=True)
class CaptionLanguageConfig(FilterConfig):
    languages: tuple[str, ...] = ("en",)  # ISO 639-1 codes to keep
    min_confidence: float = bounded(0.5, ge=0.0, le=1.0)  # the model's probability of the language

    def __post_init__(self) -> None:
        check_bounds(self)
        if not self.languages:
            raise FieldError("languages", "must name at least one language")
        bad = [code for code in self.languages if not _CODE.match(code)]
        if bad:
            raise FieldError("languages", f"expected lower-case ISO 639-1 codes like 'en', got {bad[0]!r}")


class LanguageIdentifier:
    """langid.py's model with normalised probabilities, loaded once per process."""

    def __init__(self) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier as Model

        self._model = Model.from_model_file(MODEL_FILE, norm_probs=True)

    def __call__(self, text: str) -> tuple[str, float]:
        language, probability = self._model.classify(text)
        return language, float(probability)


@register_stage
class CaptionLanguage(FilterStage):
    """Drops samples whose caption is not in one of ``languages`` with ``min_confidence``."""

    name = "caption_language"
    Config = CaptionLanguageConfig

    def setup(self) -> None:
        self.identify = LanguageIdentifier()

    def decide(self, row: SampleRow) -> Decision:
        if not hasattr(self, "identify"):
            self.setup()
        caption = " ".join((row.get("caption") or "").split())
        if not caption:
            return Decision(False, "no_caption")
        language, confidence = self.identify(caption)
        if language not in self.config.languages:
            return Decision(False, "wrong_language", score=confidence, detail=language)
        if confidence < self.config.min_confidence:
            return Decision(False, "low_language_confidence", score=confidence, detail=language)
        return Decision(True, score=confidence, detail=language)
