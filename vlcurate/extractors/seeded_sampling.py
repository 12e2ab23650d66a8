"""Nucleus sampling whose random draws belong to the sample, not to the batch.

``generate(do_sample=True)`` draws every token of every sequence in a batch from one
global torch RNG, so a sample's captions change with whatever else is in its batch,
and so with the shard size, the worker count and the runner. Here each caption (sample,
caption index) gets its own stream of uniforms, derived from the sample's identity
(:func:`sample_identity`) and the recipe seed by hashing (:func:`caption_uniforms`),
and :class:`SeededNucleus` draws token ``t`` of that caption by inverse-CDF sampling with uniform ``t`` from the
top-p nucleus of the model's distribution, leaving ``generate`` a distribution with
that one token, which its sampling step then takes. The draws then depend only on the sample, the seed and
the model's probabilities; a caption can still change with the batch when batched
arithmetic rounds the probabilities differently and a uniform falls right at a
boundary of the cumulative distribution (the benchmark measures how often).

The nucleus is what transformers' ``TopPLogitsWarper`` keeps (the most probable
tokens up to and including the one that brings their mass to ``top_p``; ties at the
boundary may be cut differently); other processors ``generate`` applies first (a
minimum length, a repetition penalty from the model's generation config) shape the
distribution sampled from.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np


def sample_identity(url: str, caption: str | None) -> str:
    """What names a sample independently of where it lands: its input pair. (Keys are
    ``<shard>_<index>``, so they change with the shard size.)"""
    return f"{url}\0{caption or ''}"


def caption_seed(identity: str, seed: int, index: int) -> int:
    """A 64-bit seed for caption ``index`` of a sample under recipe ``seed``."""
    digest = hashlib.sha256(f"capfilt\0{seed}\0{identity}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def caption_uniforms(ids: Sequence[str], seed: int, per_sample: int, steps: int) -> np.ndarray:
    """``[len(ids) * per_sample, steps]`` uniforms in [0, 1), row ``i * per_sample + k``
    for caption ``k`` of sample ``ids[i]`` (the order of ``generate``'s
    ``num_return_sequences`` rows)."""
    rows = [np.random.default_rng(caption_seed(i, seed, k)).random(steps)
            for i in ids for k in range(per_sample)]
    return np.stack(rows) if rows else np.zeros((0, steps))


class SeededNucleus:
    """A transformers logits processor: for each row, all logits ``-inf`` but the
    token drawn from the row's top-``top_p`` nucleus with the row's next uniform.

    ``start_len``: the length of the ids ``generate`` starts from (the prompt), so
    the ``t``-th generated token uses column ``t`` of ``uniforms``.
    """

    def __init__(self, uniforms: np.ndarray, top_p: float, start_len: int, device: Any):
        import torch

        self._torch = torch
        self.uniforms = torch.as_tensor(uniforms, dtype=torch.float64, device=device)
        self.top_p, self.start_len = top_p, start_len

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        torch = self._torch
        step = input_ids.shape[1] - self.start_len
        if input_ids.shape[0] != self.uniforms.shape[0] or not 0 <= step < self.uniforms.shape[1]:
            raise RuntimeError(f"sampling step {step} of {input_ids.shape[0]} rows, uniforms are "
                               f"{list(self.uniforms.shape)}")
        probs = torch.softmax(scores.double(), dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of the more probable tokens
        kept = torch.where(before < self.top_p, sorted_p, torch.zeros_like(sorted_p))
        cdf = kept.cumsum(dim=-1)
        target = self.uniforms[:, step:step + 1] * cdf[:, -1:]
        pos = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[1] - 1)
        token = order.gather(1, pos)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, token, 0.0)
