"""An interleaved version built from the sample crawl (a WARC made with warcio in a
fixture): it validates, every page record is one document or one recorded drop with
its reason, every page URL appears at most once, the documents are the ones a reader
of the pages expects, and the Parquet loads with pyarrow, polars and HF datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.interleave.conftest import interleave_recipe
from vlcurate.validate import validate_version


def rows(version: Path, stage: str) -> list[dict]:
    return [r for p in sorted((version / stage).glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def page_records(warc: Path) -> list[tuple[int, str, str]]:
    """(offset, type, url) of every capture record, read with warcio here, not with the stage's reader."""
    from warcio.archiveiterator import ArchiveIterator

    found = []
    with open(warc, "rb") as f:
        it = ArchiveIterator(f)
        for record in it:
            record.content_stream().read()
            if record.rec_type in ("response", "resource", "revisit"):
                found.append((it.get_record_offset(), record.rec_type,
                              record.rec_headers.get_header("WARC-Target-URI")))
    return found


def test_version_validates_and_accounts_for_every_page(interleaved_version, crawl_warc, crawl_server):
    assert validate_version(interleaved_version) == []
    pages = rows(interleaved_version, "interleave.pages")
    docs = rows(interleaved_version, "interleave")
    captured = page_records(crawl_warc)
    # every capture record is exactly one page row (plus one for the cut-off tail)
    assert sorted((p["offset"], p["record_type"]) for p in pages if p["record_type"] != "unreadable") == \
        sorted((o, t) for o, t, _ in captured)
    tail = [p for p in pages if p["record_type"] == "unreadable"]
    assert len(tail) == 1 and tail[0]["reason"] == "unreadable_record" and "truncated" in tail[0]["detail"]
    assert all(p["status"] == "document" or p["reason"] for p in pages)
    assert {p["key"] for p in pages if p["status"] == "document"} == {d["key"] for d in docs}
    urls = [json.loads(d["general_metadata"])["url"] for d in docs]
    assert len(urls) == len(set(urls))
    base = crawl_server.base_url
    reason = {}
    for p in pages:
        reason.setdefault(p["url"] and p["url"].removeprefix(base), []).append(p["reason"] or "document")
    assert reason["/report.pdf"] == ["not_html"]
    assert reason["/server-error.html"] == ["http_error"] and reason["/not-found.html"] == ["http_error"]
    assert reason["/lazy.html"] == ["document", "duplicate_url", "revisit"]
    assert reason["/no-images.html"] == ["too_few_images"]
    assert reason["/noai.html"] == ["opted_out"]
    assert reason["/noimageai.html"] == ["too_few_images"]  # its images opted out, the text alone is no document
    assert reason["/huge.html"] == ["too_large"]
    for path in ("/shapes.html", "/broken.html", "/cafe-1252.html", "/kyoto-sjis.html", "/market-utf8.html",
                 "/missing-images.html", "/articles/bread.html"):
        assert reason[path] == ["document"], path
    manifest = json.loads((interleaved_version / "manifest.json").read_text())
    counts = manifest["stages"][0]["counts"]
    assert counts["pages"] == len(pages) and counts["kept"] == len(docs)
    assert counts["records.request"] == 1 and counts["records.metadata"] == 1


def test_image_rows_give_a_reason_for_every_image_not_kept(interleaved_version, crawl_server):
    images = rows(interleaved_version, "interleave.images")
    base = crawl_server.base_url
    by_url: dict[str, set] = {}
    for r in images:
        by_url.setdefault(r["url"].removeprefix(base), set()).add(r["reason"] or "kept")
    assert by_url["/static/pixel.gif"] == {"tracking_image", "opted_out"}
    assert by_url["/static/logo.png"] == {"icon_image", "opted_out"}
    assert by_url["/static/icons/share-twitter.png"] == {"icon_image"}
    noimage = [r for r in images if r["document_key"] and "opted_out" == r["reason"]]
    assert noimage and all(r["detail"] == "noimageai" for r in noimage)
    docs = rows(interleaved_version, "interleave")
    kept = sorted(m["image_key"] for d in docs for m in json.loads(d["metadata"]) if m)
    assert kept == sorted(r["key"] for r in images if r["keep"])


# What a reader of each page sees as its content, written by hand: text blocks of 4+
# words (consecutive ones joined by a blank line), images where they stand, and no
# menus, cookie banners, footers, asides, scripts, comments, pixels or icons.
EXPECTED = {
    "/articles/bread.html": [
        "Baking bread at home\n\nGood bread needs flour, water, salt and a lot of patience from the baker.",
        ("/img/bread.png", "A round loaf"),
        "A round loaf cooling on the rack.\n\nKnead the dough for ten minutes until it feels smooth and elastic.",
        ("/img/oven.png", "The oven"),
        "Bake it in a very hot oven for about forty minutes."],
    "/articles/garden.html": [
        "Growing tomatoes in a small garden\n\nTomatoes love sun, warm soil and regular watering through the summer.",
        ("/img/garden.png", "The garden"),  # data-src behind a data: placeholder
        "Stake the plants early so that the stems do not break under the fruit.",
        ("/img/tomato.png", "Ripe tomatoes"),  # data-srcset behind a placeholder src
        "Pick the fruit when it is deep red and slightly soft to the touch.",
        ("/img/big-loaf.png", "A loaf"),  # srcset's largest candidate
        "Share the harvest with your neighbours, they will thank you for it."],
    "/travel/bridges/index.html": [  # <base href="/img/"> for relative sources
        "The old stone bridge crosses the river just below the town walls.",
        ("/img/bridge.png", "Stone bridge"),
        "Boats pass under its arches every morning on their way to the market.",
        ("/img/boat.png", "A boat")],
    "/broken.html": [
        "This page has broken markup with tags that never close\n\n"
        "A second paragraph starts before the first one closed bold and italic text",
        ("/img/river.png", "River"),
        "Deeply nested text that still reads fine here. stray closing tags do not stop the parser from going on."
        "\n\nThe end of the page comes without any closing html tag at all"],
    "/cafe-1252.html": [
        "Le caf\u00e9 \u201cchez Andr\u00e9\u201d sert des cr\u00eapes d\u00e9licieuses chaque matin.",
        ("/img/cafe.png", "Caf\u00e9 terrace"),
        "On y parle fran\u00e7ais, et les g\u00e2teaux sont faits maison."],
    "/kyoto-sjis.html": [
        "\u4eac\u90fd\u306e\u53e4\u3044\u5bfa\u3092\u8a2a\u306d\u307e\u3057\u305f \u6625\u306e\u685c\u304c\u3068\u3066"
        "\u3082\u7f8e\u3057\u304b\u3063\u305f\u3067\u3059 \u307e\u305f\u884c\u304d\u305f\u3044 \u3068\u601d\u3044"
        "\u307e\u3059",
        ("/img/kyoto.png", "\u4eac\u90fd\u306e\u5bfa"),
        "\u304a\u8336 \u3068 \u548c\u83d3\u5b50 \u3092 \u3044\u305f\u3060\u304d \u307e\u3057\u305f \u3068\u3066"
        "\u3082 \u304a\u3044\u3057\u304b\u3063\u305f"],
    "/market-utf8.html": [
        "The market sells jam\u00f3n, cr\u00e8me fra\u00eeche and \u00e5kerb\u00e6r every Saturday morning.",
        ("/img/market.png", "Market stalls")],
    "/lazy.html": [
        "A page captured twice by the crawler: only its first capture becomes a document.",
        ("/img/lazy1.png", "First lazy image"),
        "Lazy loading puts the real address in a data attribute instead of the source.",
        ("/img/lazy2.png", "Second lazy image")],
}


def test_documents_are_what_a_reader_of_the_pages_sees(interleaved_version, crawl_server):
    base = crawl_server.base_url
    got = {}
    for d in rows(interleaved_version, "interleave"):
        meta = json.loads(d["metadata"])
        nodes = [t if t is not None else (im.removeprefix(base), m["alt_text"])
                 for t, im, m in zip(d["texts"], d["images"], meta)]
        got[json.loads(d["general_metadata"])["url"].removeprefix(base)] = nodes
    for path, expected in EXPECTED.items():
        assert got[path] == expected, path
    leaked = ("cookies", "Copyright", "Related stories", "tracker", "comment", "World news", "newsletter", "color")
    for nodes in got.values():
        for node in nodes:
            if isinstance(node, str):
                assert not any(word in node for word in leaked), node


def test_the_parquet_loads_with_pyarrow_polars_and_datasets(interleaved_version):
    import polars as pl
    from datasets import load_dataset

    files = sorted(str(p) for p in (interleaved_version / "interleave").glob("*.parquet"))
    table = pq.read_table(files[0])
    assert table.num_rows == 10
    frame = pl.read_parquet(files)
    assert frame.columns == ["key", "images", "metadata", "general_metadata", "texts"]
    ds = load_dataset("parquet", data_files=files, split="train")
    assert len(ds) == 10
    for row in ds:
        assert len(row["texts"]) == len(row["images"]) >= 2
        assert all((t is None) != (i is None) for t, i in zip(row["texts"], row["images"]))
    for texts, images in zip(frame["texts"].to_list(), frame["images"].to_list()):
        assert all((t is None) != (i is None) for t, i in zip(texts, images))


def test_record_count_shards_give_the_same_documents_and_dedup_across_shards(crawl_warc, interleaved_version,
                                                                            tmp_path):
    from vlcurate.pipelines.build import build
    from vlcurate.recipe import load_recipe

    recipe = interleave_recipe(tmp_path, crawl_warc, stages=[{"interleave": {"records_per_shard": 3}}])
    version = build(load_recipe(recipe), log=lambda s: None).version_dir
    assert validate_version(version) == []
    assert len(list((version / "interleave").glob("*.parquet"))) == 8  # 22 whole records, 3 a shard
    one = {json.loads(d["general_metadata"])["url"]: (d["texts"], d["images"])
           for d in rows(interleaved_version, "interleave")}
    many = {json.loads(d["general_metadata"])["url"]: (d["texts"], d["images"]) for d in rows(version, "interleave")}
    assert one == many
    # keys carry the record's byte offset, whatever the shard
    offsets = sorted(p["offset"] for p in rows(version, "interleave.pages"))
    assert offsets == sorted(p["offset"] for p in rows(interleaved_version, "interleave.pages"))
    lazy = [p for p in rows(version, "interleave.pages") if p["url"] and p["url"].endswith("/lazy.html")]
    assert len({p["key"][:5] for p in lazy}) > 1  # the captures sit in different shards
    assert sorted(p["reason"] or "document" for p in lazy) == ["document", "duplicate_url", "revisit"]


def test_html_files_with_a_url_list(tmp_path, crawl, capsys):
    from vlcurate.cli import main

    pages = tmp_path / "pages"
    pages.mkdir()
    lines = ["url,path"]
    for i, rec in enumerate(r for r in crawl.records if r.path in ("/articles/bread.html", "/kyoto-sjis.html",
                                                                   "/no-images.html")):
        (pages / f"p{i}.html").write_bytes(rec.body)
        lines.append(f"https://example.org{rec.path},p{i}.html")
    lines.append("https://example.org/gone.html,missing.html")
    (pages / "urls.csv").write_text("\n".join(lines) + "\n")
    recipe = interleave_recipe(tmp_path, pages / "urls.csv", input={"paths": [str(pages / "urls.csv")],
                                                                     "format": "html"})
    assert main(["build", str(recipe)]) == 0  # through the CLI: documents count as success
    version = tmp_path / "out" / "pages" / "v1"
    assert validate_version(version) == []
    status = {p["url"]: p["reason"] or p["status"] for p in rows(version, "interleave.pages")}
    assert status == {"https://example.org/articles/bread.html": "document",
                      "https://example.org/kyoto-sjis.html": "document",  # no header: the <meta> decides
                      "https://example.org/no-images.html": "too_few_images",
                      "https://example.org/gone.html": "unreadable_record"}
    doc = [d for d in rows(version, "interleave") if "bread" in d["general_metadata"]][0]
    assert [i for i in doc["images"] if i] == ["https://example.org/img/bread.png", "https://example.org/img/oven.png"]


def test_bad_page_inputs_are_one_line_errors(tmp_path, crawl_warc, capsys):
    from vlcurate.cli import main

    cases = [
        (interleave_recipe(tmp_path, tmp_path / "nope.warc.gz", version="v2"), "nope.warc.gz: no such file"),
        (interleave_recipe(tmp_path, crawl_warc, version="v3", input={"paths": [str(crawl_warc)], "format": "csv"}),
         "set input.format to warc or html"),
        (interleave_recipe(tmp_path, crawl_warc, version="v4", stages=[{"download": {}}]),
         "warc inputs are pages: the first stage reading them is interleave"),
        (interleave_recipe(tmp_path, crawl_warc, version="v5", stages=[{"interleave": {}}, {"attach_images": {}}]),
         "stages[1].attach_images.order: needs an earlier download stage with document_images: true"),
        (interleave_recipe(tmp_path, crawl_warc, version="v6",
                           stages=[{"interleave": {}}, {"download": {"document_images": True}},
                                   {"flamingo_chunks": {"tokenizer": str(tmp_path / "nope")}}]),
         "stages[2].flamingo_chunks.tokenizer: "),
    ]
    for recipe, message in cases:
        assert main(["build", str(recipe)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_stage_rows_are_read_without_beam(crawl_warc, tmp_path):
    """The stage as plain Python (no Beam): a WARC with a record broken mid-file keeps its shard."""
    from vlcurate.interleave.stage import InterleaveConfig, InterleaveStage
    from vlcurate.io.inputs import InputSpec
    from vlcurate.io.parquet import read_parquet, write_work_parquet
    from vlcurate.pipelines.keyed import findings_by_shard
    from vlcurate.pipelines.stage import Layout

    from vlcurate.interleave.pages import record_offsets

    data = bytearray(crawl_warc.read_bytes())
    offsets = record_offsets(str(crawl_warc))
    start, end = offsets[8], offsets[9]  # the gzip member of the 8th page record
    middle = (start + end) // 2
    data[middle:middle + 16] = b"garbage!" * 2  # its deflate stream is broken from here
    warc = tmp_path / "damaged.warc.gz"
    warc.write_bytes(bytes(data))
    config = InterleaveConfig()
    shards = InterleaveStage.split_input(config, InputSpec(paths=(str(warc),), format="warc"))
    layout = Layout.for_stages(tmp_path / "v", ["interleave"])
    for i, t in enumerate(shards):
        write_work_parquet(t, layout.input_shard(i))
    stage = InterleaveStage(config, layout)
    stats = stage.run_shard(0, findings_by_shard(stage, [0])[0])
    assert stats.counts["kept"] >= 5  # the pages before the damage
    pages = read_parquet(layout.sidecar("interleave.pages", 0)).to_pylist()
    broken = [p for p in pages if p["reason"] == "unreadable_record"]
    assert [p["offset"] for p in broken] == [start]  # named at the damaged record
    assert stats.counts["pages"] == len(pages)


def test_validate_names_a_document_that_breaks_the_layout(interleaved_version, tmp_path):
    import shutil
    import stat

    copy = tmp_path / "v"
    shutil.copytree(interleaved_version, copy)
    for p in copy.rglob("*"):
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    path = copy / "interleave" / "00000.parquet"
    table = pq.read_table(path)
    images = table.column("images").to_pylist()
    images[0][0] = "https://example.org/both.png"  # position 0 now has a text and an image
    general = table.column("general_metadata").to_pylist()
    general[2] = general[1]  # and two documents share a page URL
    broken = table.set_column(1, "images", pa.array(images, table.schema.field("images").type))
    broken = broken.set_column(3, "general_metadata", pa.array(general, pa.string()))
    pq.write_table(broken.replace_schema_metadata(table.schema.metadata), path)
    problems = validate_version(copy)
    assert "interleave/00000.parquet: sha256 differs from the manifest" in problems
    assert any("row 0: position 0: exactly one of texts/images must be non-null" in p for p in problems)
    assert any("row 2: page url also in row 1" in p for p in problems)


def test_where_the_warc_lies_does_not_change_the_version(crawl_warc, interleaved_version, tmp_path):
    import shutil

    from vlcurate.pipelines.build import build
    from vlcurate.recipe import load_recipe

    moved = tmp_path / "elsewhere" / "deeper" / crawl_warc.name
    moved.parent.mkdir(parents=True)
    shutil.copy(crawl_warc, moved)
    version = build(load_recipe(interleave_recipe(tmp_path, moved)), log=lambda s: None).version_dir
    for rel in ("interleave/00000.parquet", "interleave.pages/00000.parquet", "interleave.images/00000.parquet"):
        assert (version / rel).read_bytes() == (interleaved_version / rel).read_bytes(), rel
    sources = {p["source"] for p in rows(version, "interleave.pages")}
    assert sources == {crawl_warc.name}
