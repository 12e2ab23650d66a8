"""Document images through the download stage (derived keys, status rows), back into
the documents, MMC4-like WebDataset shards, and MMC4's CLIP assignment with the
shipped demo-domain CLIP."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from tests.interleave.conftest import interleave_recipe
from vlcurate.pipelines.build import build
from vlcurate.recipe import load_recipe
from vlcurate.validate import validate_version

DOWNLOAD = {"download": {"document_images": True, "image_size": 64, "allow_networks": ["127.0.0.0/8"],
                         "retries": 0, "timeout": 5.0}}


def rows(version, stage):
    return [r for p in sorted((version / stage).glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_images_are_fetched_with_derived_keys_and_shards_load_with_webdataset(crawl_warc, crawl_server, tmp_path):
    import webdataset as wds

    recipe = interleave_recipe(tmp_path, crawl_warc, stages=[{"interleave": {}}, DOWNLOAD, {"attach_images": {}}])
    version = build(load_recipe(recipe), log=lambda s: None).version_dir
    assert validate_version(version) == []
    docs = rows(version, "interleave")
    samples = pq.read_table(version / "samples" / "00000.parquet").to_pylist()
    wanted = [m["image_key"] for d in docs for m in json.loads(d["metadata"]) if m]
    assert [s["key"] for s in samples] == wanted  # one sample row per document image, derived keys
    assert all(s["key"].startswith(s["document_key"] + "_") for s in samples)
    failed = {s["url"].rsplit("/", 1)[1]: s["error_kind"] for s in samples if s["status"] == "failed"}
    assert failed == {"gone-1.png": "http_error", "gone-2.png": "http_error"}
    attached = rows(version, "attach_images")
    pages = {p["url"].rsplit("/", 1)[1]: p for p in rows(version, "attach_images.pages")}
    assert pages["missing-images.html"]["reason"] == "too_few_images"  # both its images 404
    assert len(attached) == len(docs) - 1
    removed = rows(version, "attach_images.images")
    assert sorted(r["reason"] for r in removed) == ["download.http_error"] * 2
    ds = list(wds.WebDataset(str(version / "attach_images" / "00000.tar"), shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in ds] == [d["key"] for d in attached]
    for sample, doc in zip(ds, attached):
        info = sample["json"]
        assert info["url"] == json.loads(doc["general_metadata"])["url"]
        assert len(info["image_info"]) == len([i for i in doc["images"] if i])
        for i, entry in enumerate(info["image_info"]):
            assert sample[entry["image_name"]].size[0] > 0  # the image itself, decoded
            assert entry["image_name"].startswith(f"{i}.")
            assert 0 <= entry["matched_text_index"] < len(info["text_list"])
    bread = [s for s in ds if s["json"]["url"].endswith("/articles/bread.html")][0]["json"]
    # reading order: each image goes with the sentence right after it
    assert [bread["text_list"][e["matched_text_index"]] for e in bread["image_info"]] == \
        ["A round loaf cooling on the rack.", "Bake it in a very hot oven for about forty minutes."]


def test_mmc4_assignment_with_the_shipped_clip(crawl_warc, crawl_server, tmp_path):
    from vlcurate.demo.pages import shape_images
    from vlcurate.demo.shipped import card, model_path

    clip = card()["clip"]
    attach = {"attach_images": {"assign": True, "model": clip["model"], "weights": str(model_path("clip")),
                                "min_similarity": clip["threshold"]}}
    recipe = interleave_recipe(tmp_path, crawl_warc, stages=[{"interleave": {}}, DOWNLOAD, attach])
    version = build(load_recipe(recipe), log=lambda s: None).version_dir
    assert validate_version(version) == []
    import webdataset as wds

    ds = {s["__key__"]: s for s in wds.WebDataset(str(version / "attach_images" / "00000.tar"), shardshuffle=False)}
    shapes = [json.loads(s["json"]) for s in ds.values() if b"/shapes.html" in s["json"]][0]
    captions = [s.caption for s in shape_images()]
    matched = {e["raw_url"].rsplit("/", 1)[1].split(".")[0]: shapes["text_list"][e["matched_text_index"]]
               for e in shapes["image_info"]}
    # each described image goes to the sentence that describes it, wherever it stands
    assert matched == {f"shape-{i}": captions[i][0].upper() + captions[i][1:] + "." for i in range(3)}
    for e in shapes["image_info"]:
        assert e["matched_sim"] >= clip["threshold"] and len(e["similarity"]) == len(shapes["text_list"])
        assert e["matched_sim"] == max(e["similarity"])
    removed = {r["url"].rsplit("/", 1)[1].split(".")[0]: r["reason"] for r in rows(version, "attach_images.images")}
    assert removed["shape-3"] == "low_similarity"  # described nowhere on its page
    manifest = json.loads((version / "manifest.json").read_text())
    entry = {s["name"]: s for s in manifest["stages"]}["attach_images"]
    assert entry["weights"]["weights"] == str(model_path("clip"))


def test_retry_failed_refetches_only_the_retryable_images(crawl, tmp_path):
    from vlcurate.cli import main
    from vlcurate.demo.corpus import Served
    from vlcurate.demo.pages import served_files, write_warc
    from vlcurate.demo.server import serve

    files = served_files(crawl)
    oven = files["/img/oven.png"]
    files["/img/oven.png"] = Served(503, "text/plain", b"busy")  # retryable, for now
    with serve(files, port=0) as server:
        warc = tmp_path / "c.warc.gz"
        warc.write_bytes(write_warc(crawl.records, server.base_url))
        recipe = interleave_recipe(tmp_path, warc, stages=[{"interleave": {}}, DOWNLOAD, {"attach_images": {}}])
        version = build(load_recipe(recipe), log=lambda s: None).version_dir
        first = {s["url"].rsplit("/", 1)[1]: s for s in pq.read_table(version / "samples" / "00000.parquet").to_pylist()}
        assert first["oven.png"]["error_kind"] == "http_error" and first["oven.png"]["http_status"] == 503
        files["/img/oven.png"] = oven
        before = dict(server.requests)
        assert main(["download", "--retry-failed", str(version), "--workers", "1"]) == 0
        fetched = {p: n - before.get(p, 0) for p, n in server.requests.items() if n - before.get(p, 0)}
    assert fetched == {"/img/oven.png": 1}  # the 404s are not retryable; the rest were ok
    retry = version.parent / "v1-retry1"
    assert validate_version(retry) == []
    again = {s["url"].rsplit("/", 1)[1]: s for s in pq.read_table(retry / "samples" / "00000.parquet").to_pylist()}
    assert again["oven.png"]["status"] == "ok" and again["oven.png"]["first_http_status"] == 503
    bread = [d for d in rows(retry, "attach_images") if "/articles/bread.html" in d["general_metadata"]][0]
    assert [i.rsplit("/", 1)[1] for i in bread["images"] if i] == ["bread.png", "oven.png"]


def test_image_filters_run_on_document_images(crawl_warc, crawl_server, tmp_path):
    stages = [{"interleave": {}}, DOWNLOAD, {"caption_filter": {"min_chars": 10}}, {"attach_images": {}}]
    version = build(load_recipe(interleave_recipe(tmp_path, crawl_warc, stages=stages)), log=lambda s: None).version_dir
    assert validate_version(version) == []
    decisions = {r["key"]: r for r in rows(version, "caption_filter")}
    removed = {r["key"]: r["reason"] for r in rows(version, "attach_images.images")}
    dropped = {k for k, r in decisions.items() if not r["keep"]}
    assert dropped and {k for k, reason in removed.items() if reason == "filtered"} == dropped
    kept_keys = {m["image_key"] for d in rows(version, "attach_images") for m in json.loads(d["metadata"]) if m}
    assert not kept_keys & dropped
