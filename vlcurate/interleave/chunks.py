"""``flamingo_chunks``: Flamingo's M3W training samples, stored.

A document becomes one token sequence: its texts tokenized, an ``<image>`` token at
each image, an ``<|endofchunk|>`` token where the text after an image ends (before the
next image, and at the end). Per document, up to ``chunks_per_doc`` windows of
``max_tokens`` tokens (256) are drawn at seeded random offsets; a window keeps at
most ``max_images`` (5) images, ending before the next ``<image>``, and ends with
``<|endofchunk|>``; every token counts toward ``max_tokens``, markers included. The
draw depends only on ``seed`` and the document key, so a rebuild gives the same
chunks.

The tokenizer is open_clip's bundled CLIP BPE by default (its vocabulary ships inside
the package, so it works offline), or any local Hugging Face tokenizer directory. The
two markers get the ids right after the tokenizer's vocabulary; the file's metadata
names them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from vlcurate.interleave.boilerplate import check_documents_before, documents_before
from vlcurate.io.parquet import write_parquet
from vlcurate.io.stats import ShardStats
from vlcurate.pipelines.stage import Stage, StageInfo, register_stage
from vlcurate.schemas import get_schema
from vlcurate.typed import FieldError, bounded, check_bounds, local_path

IMAGE_MARKER, END_MARKER = "<image>", "<|endofchunk|>"
OPEN_CLIP = "open_clip"


@dataclass(frozen=True)
class FlamingoChunksConfig:
    chunks_per_doc: int = bounded(1, ge=1)
    max_tokens: int = bounded(256, ge=2)
    max_images: int = bounded(5, ge=1)
    seed: int = 0
    tokenizer: str = local_path(OPEN_CLIP)  # open_clip, or a local Hugging Face tokenizer directory

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.tokenizer != OPEN_CLIP:
            import os

            if not os.path.isdir(self.tokenizer):
                raise FieldError("tokenizer", f"{self.tokenizer}: not 'open_clip' nor a tokenizer directory")

    def check_earlier_stages(self, earlier: list[tuple[str, str]]) -> None:
        check_documents_before(earlier)


class Tokenizer:
    """Text <-> ids, and the two marker ids after the vocabulary."""

    def __init__(self, name: str):
        self.name = name
        if name == OPEN_CLIP:
            from open_clip.tokenizer import SimpleTokenizer

            tok = SimpleTokenizer()
            self._encode, self._decode, size = tok.encode, tok.decode, len(tok.encoder)
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
            self._encode = lambda text: tok.encode(text, add_special_tokens=False)
            self._decode, size = tok.decode, len(tok)
        self.image_id, self.end_id = size, size + 1

    def encode(self, text: str) -> list[int]:
        return list(self._encode(text))

    def decode(self, ids: list[int]) -> str:
        out, run = [], []
        for t in ids + [-1]:
            if t in (self.image_id, self.end_id, -1):
                if run:
                    out.append(self._decode(run).strip())
                    run = []
                if t != -1:
                    out.append(IMAGE_MARKER if t == self.image_id else END_MARKER)
            else:
                run.append(t)
        return " ".join(out)


def document_tokens(texts: list[str | None], image_keys: list[str | None], tok: Tokenizer) -> tuple[list[int], list[str]]:
    """A document's token sequence, and the image key of each ``<image>`` in it."""
    seq: list[int] = []
    images: list[str] = []
    for text, key in zip(texts, image_keys):
        if text is not None:
            seq += tok.encode(text)
        else:
            if seq and seq[-1] != tok.end_id and images:
                seq.append(tok.end_id)  # the text after the previous image ends here
            seq.append(tok.image_id)
            images.append(key)  # type: ignore[arg-type]
    if seq and seq[-1] != tok.end_id:
        seq.append(tok.end_id)
    return seq, images


def window(seq: list[int], start: int, max_tokens: int, max_images: int, tok: Tokenizer) -> list[int]:
    """``seq`` from ``start``: at most ``max_images`` images (cut before the next one) and
    ``max_tokens`` tokens, ending with the end-of-chunk marker."""
    out: list[int] = []
    images = 0
    for t in seq[start:start + max_tokens]:
        if t == tok.image_id:
            if images == max_images:
                break
            images += 1
        out.append(t)
    if not out or out[-1] != tok.end_id:
        out = out[:max_tokens - 1] + [tok.end_id]
    return out


def chunk_starts(doc_key: str, length: int, config: FlamingoChunksConfig) -> list[int]:
    """Seeded, distinct window offsets for one document (one offset, 0, when it fits)."""
    if length <= config.max_tokens:
        return [0]
    digest = int(hashlib.sha256(doc_key.encode()).hexdigest()[:16], 16)
    rng = np.random.default_rng([config.seed, digest])
    span = length - config.max_tokens + 1
    n = min(config.chunks_per_doc, span)
    return sorted(int(s) for s in rng.choice(span, size=n, replace=False))


@register_stage
class FlamingoChunks(Stage):
    name = "flamingo_chunks"
    Config = FlamingoChunksConfig
    record_kind = "flamingo_chunk"

    def setup(self) -> None:
        self.tok = Tokenizer(self.config.tokenizer)

    def info(self) -> StageInfo:
        from importlib.metadata import version

        lib = f"open_clip_torch=={version('open_clip_torch')}" if self.config.tokenizer == OPEN_CLIP \
            else f"transformers=={version('transformers')}"
        return StageInfo(libraries={"tokenizer": lib})

    def run_shard(self, shard: int, findings: list | None = None) -> ShardStats:
        if not hasattr(self, "tok"):
            self.setup()
        import json

        table = documents_before(self, shard)
        stats = self.new_stats(shard, table.num_rows)
        rows: list[dict[str, Any]] = []
        for doc in table.to_pylist():
            meta = json.loads(doc["metadata"])
            keys = [m["image_key"] if m else None for m in meta]
            urls = {m["image_key"]: m["src"] for m in meta if m}
            seq, image_keys = document_tokens(doc["texts"], keys, self.tok)
            positions = [i for i, t in enumerate(seq) if t == self.tok.image_id]
            for n, start in enumerate(chunk_starts(doc["key"], len(seq), self.config)):
                ids = window(seq, start, self.config.max_tokens, self.config.max_images, self.tok)
                first = sum(1 for p in positions if p < start)
                chunk_images = image_keys[first:first + sum(1 for t in ids if t == self.tok.image_id)]
                rows.append({"key": f"{doc['key']}_c{n}", "document_key": doc["key"], "chunk": n, "start": start,
                             "token_ids": ids, "images": chunk_images, "image_urls": [urls[k] for k in chunk_images],
                             "text": self.tok.decode(ids)})
                stats.add("chunks")
                stats.add("chunk_images", len(chunk_images))
        meta = {"vlcurate.tokenizer": self.config.tokenizer, "vlcurate.image_token_id": str(self.tok.image_id),
                "vlcurate.end_of_chunk_token_id": str(self.tok.end_id),
                "vlcurate.max_tokens": str(self.config.max_tokens), "vlcurate.max_images": str(self.config.max_images)}
        out = pa.Table.from_pylist(rows, schema=get_schema("flamingo_chunk").schema)
        stats.add_file(write_parquet(out, self.layout.sidecar(self.name, shard), "flamingo_chunk", metadata=meta))
        return stats
