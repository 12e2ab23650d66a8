"""``image_url_boilerplate``: images whose URL appears on more than ``max_pages``
documents of the corpus are page furniture (logos, banners, share buttons), not
content (OBELICS's rule, 10 pages). Counted with the keyed primitive: each shard
emits ``(image URL, document key)`` for its documents' images, each URL's group is
counted on its own, and each shard gets back only the findings about its documents;
no worker gathers the corpus.

Writes, per shard, the documents without those images (``<name>/NNNNN.parquet``,
OBELICS layout; a document left outside the document rules is dropped), a row per
document (``<name>.pages``: ``document`` or ``dropped`` with its reason) and a row per
image it removed (``<name>.images``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Iterator

import pyarrow as pa

from vlcurate.interleave.documents import DocumentRules, document_from_row, document_page, obelics_row
from vlcurate.interleave.extract import ImageRef
from vlcurate.io.parquet import read_parquet, write_parquet
from vlcurate.io.stats import ShardStats
from vlcurate.pipelines.keyed import KeyedStage, shard_of
from vlcurate.pipelines.stage import register_stage, stage_class
from vlcurate.schemas import get_schema
from vlcurate.typed import bounded, check_bounds

from vlcurate.schemas.interleaved import DOCUMENT_KIND  # noqa: E402


@dataclass(frozen=True)
class ImageUrlBoilerplateConfig:
    max_pages: int = bounded(10, ge=1)  # an image URL on more documents than this is dropped everywhere
    rules: DocumentRules = field(default_factory=DocumentRules)  # re-checked on documents that lost images

    def __post_init__(self) -> None:
        check_bounds(self)

    def check_earlier_stages(self, earlier: list[tuple[str, str]]) -> None:
        check_documents_before(earlier)


def check_documents_before(earlier: list[tuple[str, str]]) -> None:
    """For a config's ``check_earlier_stages``: a stage that writes documents must run before."""
    if not any(stage_class(kind).record_kind == DOCUMENT_KIND for _, kind in earlier):
        raise ValueError("order: needs an earlier stage that writes documents (interleave)")


def documents_before(stage: Any, shard: int) -> pa.Table:
    """The documents of ``shard`` as the last document-writing stage before ``stage`` left them."""
    found = stage.layout.sidecars(shard, DOCUMENT_KIND, before=stage.name)
    if not found:
        raise ValueError(f"stage {stage.name} needs an earlier stage that writes documents (interleave)")
    return read_parquet(found[-1])


@register_stage
class ImageUrlBoilerplate(KeyedStage):
    name = "image_url_boilerplate"
    Config = ImageUrlBoilerplateConfig
    record_kind = DOCUMENT_KIND

    def signatures(self, shard: int) -> Iterable[tuple[Hashable, Any]]:
        table = documents_before(self, shard)
        for key, images in zip(table.column("key").to_pylist(), table.column("images").to_pylist()):
            for url in sorted({u for u in images if u is not None}):
                yield url, key

    def resolve(self, group_key: Hashable, values: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        keys = sorted(set(values))
        if len(keys) > self.config.max_pages:
            for key in keys:
                yield shard_of(key), (key, group_key, len(keys))

    def run_shard(self, shard: int, findings: list | None = None) -> ShardStats:
        drop: dict[str, dict[str, int]] = {}
        for key, url, pages in findings or []:
            drop.setdefault(key, {})[url] = pages
        table = documents_before(self, shard)
        stats = self.new_stats(shard, table.num_rows)
        documents, pages, images = [], [], []
        for row in table.to_pylist():
            doc, metas = document_from_row(row)
            gone = drop.get(row["key"], {})
            kept_keys = []
            nodes = []
            image_metas = iter(metas)
            for node in doc.nodes:
                if isinstance(node, ImageRef):
                    meta = next(image_metas)
                    if node.url in gone:
                        images.append({"key": meta["image_key"], "document_key": row["key"],
                                       "index": int(meta["image_key"].rsplit("_", 1)[1]), "url": node.url,
                                       "src": node.src, "alt": node.alt, "keep": False, "reason": "boilerplate_url",
                                       "detail": f"on {gone[node.url]} documents"})
                        stats.add("images.dropped.boilerplate_url")
                        continue
                    kept_keys.append(meta["image_key"])
                nodes.append(node)
            doc.nodes = nodes
            general = json.loads(row["general_metadata"])
            page = document_page(row["key"], doc, general, self.config.rules)
            if page["status"] == "dropped":
                stats.add(f"dropped.{page['reason']}")
            else:
                documents.append(obelics_row(row["key"], doc, general, kept_keys))
                stats.add("kept")  # documents: the funnel's kept count
            pages.append(page)
        for rows, kind, where in ((documents, DOCUMENT_KIND, self.name), (pages, "page", self.name + ".pages"),
                                  (images, "page_image", self.name + ".images")):
            stats.add_file(write_parquet(pa.Table.from_pylist(rows, schema=get_schema(kind).schema),
                                         self.layout.sidecar(where, shard), kind))
        return stats
