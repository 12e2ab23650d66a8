"""``attach_images``: the documents with the images that were fetched, and MMC4-like
WebDataset shards.

Runs after a ``download: {document_images: true}`` stage (and any image filters after
it): an image stays in its document when its sample is alive (downloaded, and dropped
by no filter); otherwise it leaves with the reason (``download.<error kind>``, or
``filtered``: the filter's decision row says why), and the document is checked against the document rules again.
Writes, per shard:

- ``<name>/NNNNN.parquet``: the documents, OBELICS layout, each image's stored
  ``sha256`` and size added to its metadata;
- ``<name>.pages`` / ``<name>.images``: a row per document and per image it removed;
- ``<name>/NNNNN.tar``: WebDataset, one sample per document keyed by its key: the
  MMC4-like ``json`` (``url``, ``text_list`` = the document's sentences,
  ``image_info`` = one entry per image with ``image_name``, ``raw_url``,
  ``matched_text_index``, ``matched_sim``, and, when assigned, ``similarity``: the
  image's row of the image x sentence similarity matrix)
  and each image as ``<i>.<ext>`` in document order.

Image-to-text assignment (``assign: true``, MMC4): the CLIP similarity of each image
with each sentence; images whose best similarity is below ``min_similarity`` (MMC4:
0.15) leave as ``low_similarity``; the rest are assigned to sentences by linear
assignment (scipy's ``linear_sum_assignment``, most total similarity, at most one image
per sentence); an image left without a sentence leaves as ``no_sentence``. Without
it, each image is matched to the sentence that follows it in reading order (the one
before it at the end of the document), ``matched_sim`` null.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from vlcurate.interleave.boilerplate import check_documents_before, documents_before
from vlcurate.interleave.documents import DocumentRules, document_from_row, document_page, obelics_row
from vlcurate.interleave.extract import ImageRef, TextBlock
from vlcurate.io.parquet import read_parquet, write_parquet
from vlcurate.io.stats import ShardStats
from vlcurate.io.tar import TarSample, encode_json, iter_tar_files, write_tar
from vlcurate.pipelines.samples import alive_samples, dropped_keys
from vlcurate.pipelines.stage import Stage, StageInfo, register_stage
from vlcurate.schemas import get_schema
from vlcurate.typed import bounded, check_bounds, local_path

_SENTENCE_END = re.compile(r"(?<=[.!?\u3002])\s+")
IMAGE_EXTS = ("jpg", "png", "webp")


def sentences(texts: list[str | None]) -> list[tuple[int, str]]:
    """``(position, sentence)`` of every sentence of a document's texts, in order."""
    out = []
    for position, text in enumerate(texts):
        if text is None:
            continue
        for paragraph in text.split("\n\n"):
            out += [(position, s.strip()) for s in _SENTENCE_END.split(paragraph) if s.strip()]
    return out


@dataclass(frozen=True)
class AttachImagesConfig:
    assign: bool = False  # MMC4's CLIP image-sentence assignment
    model: str = "ViT-L-14"  # open_clip model for the assignment (MMC4: ViT-L/14)
    weights: str | None = local_path(None)  # a local weights file or directory (needed when assign)
    min_similarity: float = bounded(0.15, ge=-1.0, le=1.0)  # MMC4's threshold
    rules: DocumentRules = field(default_factory=DocumentRules)

    def __post_init__(self) -> None:
        check_bounds(self)

    def check_earlier_stages(self, earlier: list[tuple[str, str]]) -> None:
        check_documents_before(earlier)
        if not any(kind == "download" for _, kind in earlier):
            raise ValueError("order: needs an earlier download stage with document_images: true")


def assign_images(sim: np.ndarray, min_similarity: float) -> list[tuple[int | None, str | None]]:
    """Per image (row of ``sim``, images x sentences): its sentence, or None with the
    reason. Images below ``min_similarity`` everywhere are out; the rest are matched
    by linear assignment, at most one image per sentence."""
    from scipy.optimize import linear_sum_assignment

    out: list[tuple[int | None, str | None]] = [(None, "low_similarity")] * sim.shape[0]
    candidates = [i for i in range(sim.shape[0]) if sim.shape[1] and sim[i].max() >= min_similarity]
    if candidates:
        rows, cols = linear_sum_assignment(sim[candidates], maximize=True)
        assigned = {candidates[r]: int(c) for r, c in zip(rows, cols)}
        for i in candidates:
            out[i] = (assigned[i], None) if i in assigned else (None, "no_sentence")
    return out


@register_stage
class AttachImages(Stage):
    name = "attach_images"
    Config = AttachImagesConfig
    record_kind = "interleaved_document"

    def _clip_config(self):
        from vlcurate.extractors.clip_models import ClipModelConfig

        return ClipModelConfig(self.config.model, self.config.weights)

    def setup(self) -> None:
        self.clip = None
        if self.config.assign:
            from vlcurate.extractors.clip_models import load_clip

            self.clip = load_clip(self._clip_config().clip_config())

    def info(self) -> StageInfo:
        # the manifest's weights entry as other CLIP stages write it (source, sha256, label)
        return StageInfo(weights=self._clip_config().provenance()) if self.config.assign else StageInfo()

    def _images(self, shard: int) -> tuple[dict[str, dict], dict[str, str], dict[str, tuple[str, bytes]]]:
        """The samples of the shard: alive rows by key, why the others left, and the
        stored image files of the alive ones."""
        samples = read_parquet(self.layout.samples_parquet(shard))
        alive = {r["key"]: r for r in alive_samples(self.layout, shard, before=self.name).to_pylist()}
        filtered = dropped_keys(self.layout, shard, before=self.name)
        gone = {}
        for r in samples.select(["key", "status", "error_kind"]).to_pylist():
            if r["key"] not in alive:
                gone[r["key"]] = "filtered" if r["key"] in filtered else f"download.{r['error_kind']}"
        files = {key: (ext, data) for key, ext, data in iter_tar_files(self.layout.samples_tar(shard), IMAGE_EXTS,
                                                                     set(alive))}
        return alive, gone, files

    def run_shard(self, shard: int, findings: list | None = None) -> ShardStats:
        if not hasattr(self, "clip"):
            self.setup()
        table = documents_before(self, shard)
        alive, gone, files = self._images(shard)
        stats = self.new_stats(shard, table.num_rows)
        documents, pages, removed, samples = [], [], [], []
        for row in table.to_pylist():
            doc, metas = document_from_row(row)
            general = json.loads(row["general_metadata"])
            kept: list[tuple[ImageRef, dict]] = []
            nodes: list[TextBlock | ImageRef] = []
            image_metas = iter(metas)
            for node in doc.nodes:
                if isinstance(node, ImageRef):
                    meta = next(image_metas)
                    key = meta["image_key"]
                    if key not in alive:
                        removed.append(self._removed(row["key"], node, key, gone.get(key, "download.missing")))
                        continue
                    sample = alive[key]
                    meta = {**meta, "sha256": sample["sha256"], "width": sample["width"], "height": sample["height"]}
                    kept.append((node, meta))
                nodes.append(node)
            doc.nodes = nodes
            info, text_list, drop = self._match(doc, [m for _, m in kept], files)
            if drop:
                doc.nodes = [n for n in doc.nodes if not (isinstance(n, ImageRef) and n.url in drop)]
                for node, meta in kept:
                    if node.url in drop:
                        removed.append(self._removed(row["key"], node, meta["image_key"], drop[node.url]))
                info = [i for i in info if i["raw_url"] not in drop]
                kept = [(n, m) for n, m in kept if n.url not in drop]
            page = document_page(row["key"], doc, general, self.config.rules)
            pages.append(page)
            if page["status"] == "dropped":
                stats.add(f"dropped.{page['reason']}")
                continue
            stats.add("kept")  # documents: the funnel's kept count
            out = obelics_row(row["key"], doc, general, [m["image_key"] for _, m in kept])
            by_key = {m["image_key"]: m for _, m in kept}
            out["metadata"] = json.dumps([None if m is None else {**m, **by_key[m["image_key"]]}
                                          for m in json.loads(out["metadata"])], ensure_ascii=False, sort_keys=True)
            documents.append(out)
            payload = {"json": encode_json({"key": row["key"], "url": general.get("url"), "text_list": text_list,
                                            "image_info": info})}
            for i, (_, meta) in enumerate(kept):
                ext, data = files[meta["image_key"]]
                payload[f"{i}.{ext}"] = data
            samples.append(TarSample(row["key"], payload))
        for r in removed:
            stats.add(f"images.dropped.{r['reason']}")
        stats.add("images.kept", sum(len(s.files) - 1 for s in samples))
        for rows, kind, where in ((documents, "interleaved_document", self.name),
                                  (pages, "page", self.name + ".pages"), (removed, "page_image", self.name + ".images")):
            stats.add_file(write_parquet(pa.Table.from_pylist(rows, schema=get_schema(kind).schema),
                                         self.layout.sidecar(where, shard), kind))
        stats.add_file(write_tar(self.layout.sidecar(self.name, shard, "tar"), samples))
        return stats

    @staticmethod
    def _removed(document_key: str, node: ImageRef, key: str, reason: str) -> dict:
        return {"key": key, "document_key": document_key, "index": int(key.rsplit("_", 1)[1]), "url": node.url,
                "src": node.src, "alt": node.alt, "keep": False, "reason": reason, "detail": None}

    def _match(self, doc, metas: list[dict], files: dict) -> tuple[list[dict], list[str], dict[str, str]]:
        """MMC4 ``image_info`` and ``text_list`` of a document, and the images (by URL)
        that the assignment leaves out, with their reasons."""
        texts = [n.text if isinstance(n, TextBlock) else None for n in doc.nodes]
        found = sentences(texts)
        text_list = [s for _, s in found]
        info = [{"image_name": f"{i}.{files[m['image_key']][0]}", "raw_url": m["src"], "image_key": m["image_key"],
                 "matched_text_index": None, "matched_sim": None} for i, m in enumerate(metas)]
        if not metas:
            return info, text_list, {}
        if self.clip is None:  # reading order: the next sentence, else the last one
            positions = [i for i, n in enumerate(doc.nodes) if isinstance(n, ImageRef)]
            for entry, position in zip(info, positions):
                after = [k for k, (p, _) in enumerate(found) if p > position]
                entry["matched_text_index"] = after[0] if after else (len(found) - 1 if found else None)
            return info, text_list, {}
        sim = self._similarities([files[m["image_key"]][1] for m in metas], text_list)
        drop = {}
        for entry, (match, reason), row, meta in zip(info, assign_images(sim, self.config.min_similarity), sim, metas):
            if match is None:
                drop[meta["src"]] = reason
            else:
                entry["matched_text_index"], entry["matched_sim"] = match, round(float(row[match]), 6)
        for entry, row in zip(info, sim):
            entry["similarity"] = [round(float(v), 6) for v in row]  # this image's row of the matrix
        return info, text_list, drop

    def _similarities(self, images: list[bytes], text_list: list[str]) -> np.ndarray:
        import torch
        from PIL import Image

        assert self.clip is not None
        if not text_list:
            return np.zeros((len(images), 0), np.float32)
        batch = torch.stack([self.clip.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
        image_emb = self.clip.encode_images(batch).embedding
        text_emb = self.clip.encode_texts(text_list)
        return (image_emb @ text_emb.T).cpu().numpy()

