"""OBELICS's image-URL rule through the keyed primitive: an image on more than
``max_pages`` documents is dropped from all of them, whichever shards they are in."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from tests.interleave.conftest import interleave_recipe
from vlcurate.demo.pages import CrawlRecord, write_warc
from vlcurate.pipelines.build import build
from vlcurate.recipe import load_recipe
from vlcurate.validate import validate_version

WORDS = "a paragraph of words long enough to count as one text node here"


def article(i: int, shared: list[str]) -> bytes:
    own = f'<img src="/img/own-{i}.png" width="300" height="200" alt="own {i}">'
    extra = "".join(f'<p>{WORDS} {j}</p><img src="{u}" width="300" height="200">' for j, u in enumerate(shared))
    return f"<html><body><p>{WORDS} {i}</p>{own}{extra}<p>{WORDS} end</p></body></html>".encode()


def test_an_image_on_more_than_ten_documents_is_dropped_everywhere(tmp_path):
    records = []
    for i in range(14):
        shared = ["/img/banner.png"] if i < 11 else []  # 11 documents: over the limit
        shared += ["/img/ten.png"] if i < 10 else []  # 10 documents: kept
        records.append(CrawlRecord(f"/p{i}.html", article(i, shared)))
    # a page whose only image is the banner: once it is gone, the document is too
    records.append(CrawlRecord("/only-banner.html",
                               f'<html><body><p>{WORDS}</p><img src="/img/banner.png" width="300" height="200">'
                               f'<p>{WORDS}</p></body></html>'.encode()))
    warc = tmp_path / "c.warc.gz"
    warc.write_bytes(write_warc(records, "https://example.org"))
    recipe = interleave_recipe(tmp_path, warc, stages=[{"interleave": {"records_per_shard": 4}},
                                                       {"image_url_boilerplate": {}}])
    version = build(load_recipe(recipe), log=lambda s: None).version_dir
    assert validate_version(version) == []
    docs = [r for p in sorted((version / "image_url_boilerplate").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    before = [r for p in sorted((version / "interleave").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(before) == 15 and len({d["key"][:5] for d in before}) == 4  # spread over 4 shards
    urls = {u for d in docs for u in d["images"] if u}
    assert "https://example.org/img/banner.png" not in urls
    assert "https://example.org/img/ten.png" in urls
    assert len(docs) == 14  # /only-banner.html lost its only image
    pages = [r for p in sorted((version / "image_url_boilerplate.pages").glob("*.parquet"))
             for r in pq.read_table(p).to_pylist()]
    dropped = [p for p in pages if p["status"] == "dropped"]
    assert [(p["url"], p["reason"]) for p in dropped] == [("https://example.org/only-banner.html", "too_few_images")]
    removed = [r for p in sorted((version / "image_url_boilerplate.images").glob("*.parquet"))
               for r in pq.read_table(p).to_pylist()]
    assert len(removed) == 12 and {r["reason"] for r in removed} == {"boilerplate_url"}
    assert {r["detail"] for r in removed} == {"on 12 documents"}
    # the text around a removed image joins up; every kept image's key is still named
    d0 = [d for d in docs if json.loads(d["general_metadata"])["url"].endswith("/p0.html")][0]
    assert all((t is None) != (i is None) for t, i in zip(d0["texts"], d0["images"]))
    assert [i.rsplit("/", 1)[1] for i in d0["images"] if i] == ["own-0.png", "ten.png"]
    manifest = json.loads((version / "manifest.json").read_text())
    counts = {s["name"]: s["counts"] for s in manifest["stages"]}["image_url_boilerplate"]
    assert counts == {"kept": 14, "dropped.too_few_images": 1, "images.dropped.boilerplate_url": 12}
