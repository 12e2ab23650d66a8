"""BLIP's CapFilt filter: an image-text matching head removes captions that do not match.

``caption_itm`` scores every candidate caption of a sample (its web caption and its
synthetic ones, :mod:`vlcurate.filters.captions`) with ``BlipForImageTextRetrieval``'s
ITM head: the softmax probability of "matched". Captions below ``threshold`` are
removed; the rest, best first (at most ``top_n`` when set), are the sample's
``selected`` training captions in the ``caption_scores`` record, which also holds
every caption's probability. A sample left with none is dropped as
``no_matching_caption`` (its best probability in the decision's ``score``); one with
no candidate as ``no_caption``; one whose image cannot be decoded or scored as
``image_error``.

BLIP's filter drops a caption the ITM head calls unmatched, i.e. a probability below
0.5, the default threshold. Each image goes through the vision tower once; its
output is shared by all its captions (the model's own ``forward`` would encode the
image once per caption). Images are read from the shard's tar and preprocessed on
decode threads by the feature stages' machinery (:func:`encode_images`).

Recipe block::

    - caption_itm: {model: vlc-tiny-blip, weights: /models/blip-itm-large-coco,  # or hf-hub:org/name
                    threshold: 0.5, top_n: null, include_web: true,
                    captions_from: synthetic_captions, max_text_length: 35,
                    batch_size: 8, device: auto, precision: fp16, decode_threads: 0}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vlcurate.extractors.encoding import Encoded, SampleFailure, encode_images
from vlcurate.extractors.hf_models import HfModel, HfModelConfig, load_hf_model, pixel_values
from vlcurate.filters.base import Decision, FilterStage
from vlcurate.filters.captions import caption_decision, candidate_captions, write_caption_scores
from vlcurate.io.stats import ShardStats
from vlcurate.pipelines.samples import SampleRow
from vlcurate.pipelines.stage import StageInfo, register_stage


@dataclass(frozen=True)
class CaptionItmConfig(HfModelConfig):
    threshold: float = 0.5  # BLIP: drop what the ITM head calls unmatched
    top_n: int | None = None  # keep at most this many matching captions; null: all
    include_web: bool = True
    captions_from: str = "synthetic_captions"
    max_text_length: int = 35  # tokens per caption, as BLIP's ITM
    batch_size: int = 8  # images per vision pass (with all their captions)
    decode_threads: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if (self.top_n is not None and self.top_n < 1) or self.batch_size < 1 or self.decode_threads < 0:
            raise ValueError(f"top_n (or null) and batch_size must be >= 1 and decode_threads >= 0, got "
                             f"{self.top_n}, {self.batch_size} and {self.decode_threads}")


def itm_probabilities(hf: HfModel, pixels: Any, captions: list[list[str]], max_length: int) -> list[np.ndarray]:
    """P(matched) of every caption of every image: ``pixels`` ``[B, 3, H, W]``,
    ``captions[i]`` the captions of image ``i``. One vision pass per image."""
    import torch

    model, owner = hf.model, [i for i, caps in enumerate(captions) for _ in caps]
    flat = [c for caps in captions for c in caps]
    if not flat:
        return [np.zeros(0) for _ in captions]
    text = hf.processor.tokenizer(flat, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.inference_mode(), hf.autocast():
        image = model.vision_model(pixel_values=pixels.to(hf.device)).last_hidden_state
        image = image[torch.as_tensor(owner, device=hf.device)]
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=hf.device)
        hidden = model.text_encoder(input_ids=text.input_ids.to(hf.device),
                                    attention_mask=text.attention_mask.to(hf.device),
                                    encoder_hidden_states=image, encoder_attention_mask=image_mask).last_hidden_state
        probs = torch.softmax(model.itm_head(hidden[:, 0, :]).float(), dim=-1)[:, 1].cpu().double().numpy()
    bounds = np.cumsum([0] + [len(c) for c in captions])
    return [probs[bounds[i]:bounds[i + 1]] for i in range(len(captions))]


@register_stage
class CaptionItmFilter(FilterStage):
    """Removes captions the ITM head scores below ``threshold``; drops samples left with none."""

    name = "caption_itm"
    Config = CaptionItmConfig

    def info(self) -> StageInfo:
        return StageInfo(weights=self.config.provenance())

    def setup(self) -> None:
        import torch

        self._torch = torch
        self.hf = load_hf_model(self.config, "itm")

    def _prepare(self, image: Any) -> Any:
        return pixel_values(self.hf.processor, image)

    def _score(self, batch: list[tuple[str, Any]]) -> list[Encoded]:
        pixels = self._torch.from_numpy(np.stack([im for _, im in batch]))
        probs = itm_probabilities(self.hf, pixels, [self._cands[k].captions for k, _ in batch],
                                  self.config.max_text_length)
        return [{"scores": p.tolist()} for p in probs]

    def decide_shard(self, shard: int, rows: list[SampleRow]) -> list[Decision]:
        if not hasattr(self, "hf"):
            self.setup()
        cfg = self.config
        self._cands = cands = candidate_captions(self.layout, shard, rows, cfg.captions_from, cfg.include_web)
        keys = [r["key"] for r in rows if cands[r["key"]].captions]
        failures: dict[str, SampleFailure] = {}
        for key, result in encode_images(self.layout.samples_tar(shard), keys, self._prepare, self._score,
                                         cfg.batch_size, decode_threads=cfg.decode_threads, keyed=True):
            if isinstance(result, SampleFailure):
                failures[key] = result
                continue
            c = cands[key]
            c.scores = result["scores"]
            passing = [i for i in c.ranked() if c.scores[i] >= cfg.threshold]
            c.selected = [c.captions[i] for i in passing[:cfg.top_n]]
        self._scored = cands
        return [caption_decision(cands[r["key"]], failures.get(r["key"]),
                                 f"all {len(cands[r['key']].captions)} captions below {cfg.threshold}") for r in rows]

    def run_shard(self, shard: int, findings: list | None = None) -> ShardStats:
        stats = super().run_shard(shard, findings)
        removed = sum(s < self.config.threshold for c in self._scored.values() for s in c.scores)
        if removed:
            stats.add("captions.below_threshold", int(removed))
        stats.add_file(write_caption_scores(self.layout, self.name, shard, list(self._scored), self._scored,
                                            {**self.config.provenance(), "threshold": self.config.threshold,
                                             "top_n": self.config.top_n, "include_web": self.config.include_web,
                                             "captions_from": self.config.captions_from}))
        return stats
