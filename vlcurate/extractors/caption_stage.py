"""The ``synthetic_captions`` stage: BLIP's captioner (CapFilt) as a pipeline stage.

For every alive sample, ``captions_per_image`` captions by nucleus sampling from a
transformers image-to-text model (BLIP's recipe: ``top_p`` 0.9, the prompt
``"a picture of "``, which is not part of the stored caption), written to
``synthetic_captions/<shard>.parquet`` (record kind ``synthetic_captions``, layout in
:mod:`vlcurate.schemas.captions`). It runs on :class:`FeatureStage`'s machinery:
images are read from the shard's tar and preprocessed on decode threads, batches of
``batch_size`` images go through one ``generate`` call each, and a sample whose image
cannot be decoded or whose generation fails is a ``failed`` row with the reason.

Sampling is seeded per caption from the sample's identity and ``seed``
(:mod:`vlcurate.extractors.seeded_sampling`). The identity is the sample's input
pair, its URL and web caption, not its key: keys number samples by shard and
position, so they change with ``samples_per_shard``. With ``batch_size: 1`` a
sample's captions are the same whatever shard, worker or runner produced it; larger batches
give the same captions except where batched arithmetic rounds a probability across a
sampling boundary (rate measured in benchmarks/README.md).

Recipe block (every key optional)::

    - synthetic_captions: {model: vlc-tiny-blip, weights: /models/blip-large,  # or hf-hub:org/name
                           captions_per_image: 10, top_p: 0.9, max_length: 30, min_length: 5,
                           prompt: "a picture of ", seed: 0, batch_size: 8,
                           device: auto, precision: fp16, decode_threads: 0}

``prompt`` is used with BLIP models (``null``: none); other models (those that caption
from ``pixel_values`` alone, e.g. GIT or a VisionEncoderDecoder) run without one.
``max_length``/``min_length`` count tokens including the prompt, as BLIP's
``generate`` did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from vlcurate.extractors.encoding import Encoded
from vlcurate.extractors.hf_models import HfModelConfig, load_hf_model, pixel_values
from vlcurate.extractors.seeded_sampling import SeededNucleus, caption_uniforms, sample_identity
from vlcurate.extractors.stage import FeatureStage
from vlcurate.pipelines.samples import alive_samples
from vlcurate.io.stats import ShardStats
from vlcurate.pipelines.stage import StageInfo, register_stage
from vlcurate.schemas.features import MODEL_META

BLIP_PROMPT = "a picture of "


@dataclass(frozen=True)
class SyntheticCaptionsConfig(HfModelConfig):
    captions_per_image: int = 10  # BLIP-2 sampled 10 per image
    top_p: float = 0.9
    max_length: int = 30
    min_length: int = 5
    prompt: str | None = BLIP_PROMPT  # used with BLIP models only; null: no prompt
    batch_size: int = 8
    decode_threads: int = 0  # threads decoding/preprocessing images; 0 = one per core, at most 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.captions_per_image < 1 or self.batch_size < 1 or self.decode_threads < 0:
            raise ValueError("captions_per_image and batch_size must be >= 1 and decode_threads >= 0, got "
                             f"{self.captions_per_image}, {self.batch_size} and {self.decode_threads}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_length < self.max_length:
            raise ValueError(f"need 0 <= min_length < max_length, got {self.min_length} and {self.max_length}")


class Captioner:
    """A loaded image-to-text model that writes seeded nucleus-sampled captions."""

    def __init__(self, config: SyntheticCaptionsConfig):
        import torch

        self._torch, self.config = torch, config
        self.hf = load_hf_model(config, "captioner")
        self.tokenizer = self.hf.processor.tokenizer
        self.is_blip = self.hf.model.config.model_type == "blip"
        self._rng_devices = [self.hf.device] if self.hf.device.type == "cuda" else []
        self.prompt_ids = None
        if self.is_blip and config.prompt:
            # BLIP's generate drops the last id (the [SEP] the tokenizer appends)
            self.prompt_ids = self.tokenizer(config.prompt, return_tensors="pt").input_ids

    def prepare(self, image: Any) -> Any:
        return pixel_values(self.hf.processor, image)

    def captions(self, ids: list[str], images: list[Any]) -> list[list[str]]:
        """``captions_per_image`` captions for each image (prepared by :meth:`prepare`),
        sampled with the draws of the sample identities ``ids``."""
        import numpy as np

        torch, cfg, hf = self._torch, self.config, self.hf

        pixels = torch.from_numpy(np.stack(images)).to(hf.device)
        kwargs: dict[str, Any] = {"pixel_values": pixels}
        start = 1  # generate starts from one bos / decoder-start token without a prompt
        if self.prompt_ids is not None:
            kwargs["input_ids"] = self.prompt_ids.repeat(len(images), 1).to(hf.device)
            start = self.prompt_ids.shape[1] - 1
        uniforms = caption_uniforms(ids, cfg.seed, cfg.captions_per_image, cfg.max_length)
        sampler = SeededNucleus(uniforms, cfg.top_p, start, hf.device)
        # Sampling mode only so that generate expands each image's encoding to K rows
        # (greedy refuses num_return_sequences); its own warpers are off, and its draw
        # from our one-token distribution is that token. Its RNG is forked, not consumed.
        with torch.inference_mode(), hf.autocast(), torch.random.fork_rng(devices=self._rng_devices):
            out = hf.model.generate(**kwargs, do_sample=True, num_beams=1, top_k=0, top_p=1.0, temperature=1.0,
                                    num_return_sequences=cfg.captions_per_image,
                                    max_length=cfg.max_length, min_length=cfg.min_length,
                                    logits_processor=[sampler])
        texts = [t.strip() for t in self.tokenizer.batch_decode(out[:, start:], skip_special_tokens=True)]
        k = cfg.captions_per_image
        return [texts[i * k:(i + 1) * k] for i in range(len(images))]


@register_stage
class SyntheticCaptionStage(FeatureStage):
    """Stores ``captions`` (K sampled captions) for every alive sample."""

    name = "synthetic_captions"
    Config = SyntheticCaptionsConfig
    record_kind = "synthetic_captions"
    keyed_batches = True  # sampling is seeded per sample

    def info(self) -> StageInfo:
        return StageInfo(weights=self.config.provenance())

    def load(self) -> None:
        self.captioner = Captioner(self.config)

    def prepare(self, image: Any) -> Any:
        return self.captioner.prepare(image)

    def feature_fields(self) -> list[pa.Field]:
        return [pa.field("captions", pa.list_(pa.string()))]

    def sidecar_metadata(self) -> dict[str, str]:
        cfg = self.config
        model = {**cfg.provenance(), "captions_per_image": cfg.captions_per_image, "top_p": cfg.top_p,
                 "max_length": cfg.max_length, "min_length": cfg.min_length,
                 "prompt": cfg.prompt if self.captioner.is_blip else None,
                 "batch_size": cfg.batch_size}
        return {MODEL_META.decode(): json.dumps(model, sort_keys=True)}

    def run_shard(self, shard: int, findings: list | None = None) -> ShardStats:
        rows = alive_samples(self.layout, shard, ["key", "url", "caption"], before=self.name).to_pylist()
        self._identity = {r["key"]: sample_identity(r["url"], r["caption"]) for r in rows}
        return super().run_shard(shard, findings)

    def encode_batch(self, images: list[tuple[str, Any]]) -> list[Encoded]:
        ids = [self._identity[k] for k, _ in images]
        return [{"captions": c} for c in self.captioner.captions(ids, [im for _, im in images])]
