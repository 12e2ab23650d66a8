"""The ``interleave`` stage: a first stage that reads pages (WARC or HTML) instead of a
URL list and writes, per shard:

- ``interleave/NNNNN.parquet``: the documents, OBELICS layout (record kind
  ``interleaved_document``);
- ``interleave.pages/NNNNN.parquet``: one row per page record, ``document`` or
  ``dropped`` with its reason (record kind ``page``);
- ``interleave.images/NNNNN.parquet``: one row per image of every page that was
  parsed, kept or dropped with its reason (record kind ``page_image``).

Duplicate captures of one URL (in any shard) are resolved by the keyed primitive: each
shard emits ``(url, page key)`` for its successful captures, each URL's group keeps its
smallest key (the first capture in input order) and the others are dropped as
``duplicate_url``; so a page URL appears at most once in a version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Iterator, Literal

import pyarrow as pa

from vlcurate.interleave.charset import decode_page
from vlcurate.interleave.documents import DocumentRules, document_problem, obelics_row, select_nodes
from vlcurate.interleave.extract import extract
from vlcurate.interleave.pages import PageRecord, iter_pages, split_pages
from vlcurate.io.inputs import InputSpec
from vlcurate.io.parquet import read_parquet, write_parquet
from vlcurate.io.stats import ShardStats
from vlcurate.pipelines.keyed import KeyedStage, shard_of
from vlcurate.pipelines.stage import StageInfo, register_stage
from vlcurate.schemas import get_schema
from vlcurate.typed import bounded, check_bounds

HTML_TYPES = ("text/html", "application/xhtml+xml", "application/xml", "text/xml")
from vlcurate.schemas.interleaved import DOCUMENT_KIND  # noqa: E402
PAGES_SUFFIX, IMAGES_SUFFIX = ".pages", ".images"


def page_key(shard: int, offset: int) -> str:
    return f"{shard:05d}_{offset:012d}"


def image_key(document_key: str, index: int) -> str:
    return f"{document_key}_{index:03d}"


@dataclass(frozen=True)
class InterleaveConfig:
    parser: Literal["selectolax", "resiliparse"] = "selectolax"
    records_per_shard: int = bounded(0, ge=0)  # 0: one shard per input file
    html_path_col: str = "path"  # format html: the URL list's column naming each HTML file
    max_page_bytes: int = bounded(5_000_000, ge=1)  # a larger page is dropped as too_large
    honour_opt_outs: bool = True  # noai in <meta name=robots> / X-Robots-Tag drops the page, noimageai its images
    rules: DocumentRules = field(default_factory=DocumentRules)

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass
class _Page:
    """The outcome of one page record, as rows to write."""

    page: dict
    document: dict | None = None
    images: list[dict] = field(default_factory=list)


def _directives(*values: str | None) -> set[str]:
    found: set[str] = set()
    for value in values:
        for part in (value or "").lower().replace(";", ",").split(","):
            found.add(part.split(":")[-1].strip())  # "otherbot: noai" -> "noai"
    return found


@register_stage
class InterleaveStage(KeyedStage):
    name = "interleave"
    Config = InterleaveConfig
    record_kind = DOCUMENT_KIND
    reads_input = True

    @staticmethod
    def split_input(config: InterleaveConfig, spec: InputSpec) -> list[pa.Table]:
        """The build's input shards (page ranges); InputError names a bad input."""
        return split_pages(spec, config.records_per_shard, config.html_path_col)

    @staticmethod
    def input_problem(config: InterleaveConfig, spec: InputSpec) -> str | None:
        if spec.format not in ("warc", "html"):
            return f"input.format: the interleave stage reads pages: set input.format to warc or html, " \
                   f"got {spec.format!r}"
        return None

    def info(self) -> StageInfo:
        from importlib.metadata import version

        lib = {"selectolax": "selectolax", "resiliparse": "resiliparse"}[self.config.parser]
        return StageInfo(libraries={"parser": f"{lib}=={version(lib)}", "warcio": version("warcio")})

    # --- corpus-wide: one document per URL ------------------------------------------

    def _records(self, shard: int) -> Iterator[PageRecord]:
        return iter_pages(read_parquet(self.layout.input_shard(shard)), self.config.max_page_bytes)

    def signatures(self, shard: int) -> Iterable[tuple[Hashable, Any]]:
        for record in self._records(shard):
            if record.url and record.error is None and record.body is not None \
                    and record.http_status is not None and 200 <= record.http_status < 300:
                yield record.url, page_key(shard, record.offset)

    def resolve(self, group_key: Hashable, values: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        keys = sorted(set(values))
        for key in keys[1:]:
            yield shard_of(key), (key, keys[0])

    # --- per shard ------------------------------------------------------------------

    def run_shard(self, shard: int, findings: list | None = None) -> ShardStats:
        duplicate_of = dict(findings or [])
        stats = self.new_stats(shard, 0)
        pages, documents, images = [], [], []
        counts: dict[str, int] = {}
        for record in self._records(shard):
            if record.rec_type not in ("response", "resource", "revisit", "html", "unreadable"):
                stats.add(f"records.{record.rec_type}")
                continue
            stats.rows += 1
            out = self.process_page(shard, record, duplicate_of.get(page_key(shard, record.offset)), counts)
            pages.append(out.page)
            images += out.images
            stats.add("pages")
            if out.document is not None:
                documents.append(out.document)
                stats.add("kept")  # documents: the funnel's kept count
            else:
                stats.add(f"dropped.{out.page['reason']}")
        for row in images:
            stats.add("images.kept" if row["keep"] else f"images.dropped.{row['reason']}")
        for name, n in counts.items():
            stats.add(name, n)
        self._write(shard, stats, documents, pages, images)
        return stats

    def _write(self, shard: int, stats: ShardStats, documents: list[dict], pages: list[dict],
               images: list[dict]) -> None:
        def table(rows: list[dict], kind: str) -> pa.Table:  # by column: a third of from_pylist's time
            schema = get_schema(kind).schema
            return pa.table({name: [r.get(name) for r in rows] for name in schema.names}, schema=schema)

        stats.add_file(write_parquet(table(documents, DOCUMENT_KIND), self.layout.sidecar(self.name, shard),
                                     DOCUMENT_KIND))
        stats.add_file(write_parquet(table(pages, "page"), self.layout.sidecar(self.name + PAGES_SUFFIX, shard),
                                     "page"))
        stats.add_file(write_parquet(table(images, "page_image"),
                                     self.layout.sidecar(self.name + IMAGES_SUFFIX, shard), "page_image"))

    def process_page(self, shard: int, record: PageRecord, duplicate_of: str | None,
                     counts: dict[str, int]) -> _Page:
        """One page record -> its page row, and its document and image rows when parsed."""
        key = page_key(shard, record.offset)
        page = {"key": key, "url": record.url, "source": record.source, "offset": record.offset,
                "record_type": record.rec_type, "http_status": record.http_status,
                "content_type": record.content_type, "status": "dropped", "images": 0, "words": 0}

        def drop(reason: str, detail: str | None = None) -> _Page:
            page.update(reason=reason, detail=detail)
            return _Page(page)

        if record.error is not None:
            return drop("unreadable_record", record.error)
        if record.rec_type == "revisit":
            return drop("revisit", "a revisit record carries no payload")
        if not record.url:
            return drop("no_url")
        if record.http_status is None or not 200 <= record.http_status < 300:
            return drop("http_error", f"HTTP {record.http_status}")
        if duplicate_of is not None:
            return drop("duplicate_url", f"first capture: {duplicate_of}")
        body = record.body or b""
        if len(body) > self.config.max_page_bytes:
            return drop("too_large", f"more than {self.config.max_page_bytes} bytes")
        mime = (record.content_type or "").split(";")[0].strip().lower()
        if (mime and mime not in HTML_TYPES) or body.lstrip()[:5] == b"%PDF-":
            return drop("not_html", mime or "no content type")
        if not body.strip():
            return drop("empty_page")
        decoded = decode_page(body, record.content_type)
        page.update(charset=decoded.charset, charset_source=decoded.source)
        if self.config.honour_opt_outs and "noai" in _directives(record.robots_header):
            return drop("opted_out", f"X-Robots-Tag: {record.robots_header}")
        try:
            extracted = extract(decoded.text, record.url, self.config.parser)
        except Exception as e:  # noqa: BLE001 - a page the parser cannot take is a row, the shard goes on
            return drop("extraction_error", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
        directives = _directives(record.robots_header, extracted.robots)
        if self.config.honour_opt_outs and "noai" in directives:
            return drop("opted_out", f"<meta name=robots content={extracted.robots!r}>")
        images_out = "noimageai" if self.config.honour_opt_outs and "noimageai" in directives else None
        doc, outcomes = select_nodes(extracted.nodes, self.config.rules, images_out, counts)
        image_rows = [{"key": image_key(key, o.index), "document_key": key, "index": o.index, "url": o.url,
                       "src": o.src, "alt": o.alt, "keep": o.keep, "reason": o.reason, "detail": o.detail}
                      for o in outcomes]
        page.update(images=doc.image_count, words=doc.words)
        if problem := document_problem(doc, self.config.rules):
            page.update(reason=problem[0], detail=problem[1])
            return _Page(page, None, image_rows)
        page.update(status="document", reason=None, detail=None)
        general = {"url": record.url, "title": extracted.title, "source": record.source,
                   "warc_record_offset": record.offset, "charset": decoded.charset,
                   "charset_source": decoded.source}
        kept_keys = [image_key(key, o.index) for o in outcomes if o.keep]
        return _Page(page, obelics_row(key, doc, general, kept_keys), image_rows)

