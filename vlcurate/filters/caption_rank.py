"""BLIP-2's caption ranking: keep a sample's ``top_n`` captions by CLIP similarity.

BLIP-2 sampled 10 captions per image with BLIP-large, ranked them together with the
web caption by CLIP ViT-L/14 image-text similarity and kept the top 2 as the image's
training captions. ``caption_rank`` does that per sample over the candidates of
:mod:`vlcurate.filters.captions`: every candidate's cosine goes to the
``caption_scores`` record, the best ``top_n`` (best first) to its ``selected``
column, and the decision row keeps the sample with the best caption's score. A
sample with no candidate is dropped as ``no_caption``, one whose image cannot be
decoded or encoded as ``image_error``.

Image embeddings are those of the ``clip_score`` filter (:class:`ClipScoreFilter`,
whose machinery this reuses): taken from a ``vit_features`` sidecar of this shard
written by the same model when one exists, so no image is encoded twice; only the
samples it lacks run the image tower (stats ``embedding.reused`` /
``embedding.encoded``). Embeddings are rounded to fp16 either way, as in
``clip_score``. (``clip_score`` itself stores scores, not embeddings.)

Recipe block::

    - caption_rank: {model: ViT-L-14, weights: /models/vit-l-14.safetensors, quick_gelu: true,
                     top_n: 2, include_web: true, captions_from: synthetic_captions,
                     batch_size: 64, device: auto, precision: fp16}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlcurate.extractors.encoding import SampleFailure
from vlcurate.extractors.clip_models import ClipModelConfig
from vlcurate.filters.base import Decision
from vlcurate.filters.captions import caption_decision, candidate_captions, write_caption_scores
from vlcurate.filters.clip_score import ClipScoreFilter
from vlcurate.io.stats import ShardStats
from vlcurate.pipelines.samples import SampleRow
from vlcurate.pipelines.stage import register_stage


@dataclass(frozen=True)
class CaptionRankConfig(ClipModelConfig):
    top_n: int = 2  # BLIP-2 kept the top 2
    include_web: bool = True  # rank the web caption with the synthetic ones
    captions_from: str = "synthetic_captions"  # the captioner stage whose captions are ranked
    batch_size: int = 64  # images (when not reused) and captions per forward pass
    decode_threads: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_n < 1 or self.batch_size < 1 or self.decode_threads < 0:
            raise ValueError(f"top_n and batch_size must be >= 1 and decode_threads >= 0, got "
                             f"{self.top_n}, {self.batch_size} and {self.decode_threads}")


@register_stage
class CaptionRankFilter(ClipScoreFilter):
    """Selects each sample's ``top_n`` captions by CLIP cosine (BLIP-2)."""

    name = "caption_rank"
    Config = CaptionRankConfig

    def decide_shard(self, shard: int, rows: list[SampleRow]) -> list[Decision]:
        if not hasattr(self, "clip"):
            self.setup()
        cfg = self.config
        cands = candidate_captions(self.layout, shard, rows, cfg.captions_from, cfg.include_web)
        keys = [r["key"] for r in rows if cands[r["key"]].captions]
        images = self.image_embeddings(shard, keys)
        scorable = [k for k in keys if not isinstance(images[k], SampleFailure)]
        if scorable:
            from vlcurate.extractors.clip import score

            torch = self._torch
            owner = [i for i, k in enumerate(scorable) for _ in cands[k].captions]
            texts = self._text_embeddings([c for k in scorable for c in cands[k].captions])
            img = np.stack([images[k] for k in scorable]).astype(np.float16).astype(np.float32)[owner]
            values = score(torch.from_numpy(img), torch.from_numpy(texts)).cpu().tolist()
            at = 0
            for k in scorable:
                c = cands[k]
                c.scores = values[at:at + len(c.captions)]
                at += len(c.captions)
                c.selected = [c.captions[i] for i in c.ranked()[:cfg.top_n]]
        self._scored = cands
        return [caption_decision(cands[r["key"]], images.get(r["key"]) if isinstance(
            images.get(r["key"]), SampleFailure) else None) for r in rows]

    def run_shard(self, shard: int, findings: list | None = None) -> ShardStats:
        stats = super().run_shard(shard, findings)
        stats.add_file(write_caption_scores(self.layout, self.name, shard, list(self._scored), self._scored,
                             {**self.config.provenance(), "top_n": self.config.top_n,
                              "include_web": self.config.include_web, "captions_from": self.config.captions_from}))
        return stats
