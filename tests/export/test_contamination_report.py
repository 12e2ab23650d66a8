"""The report of a decontaminated version: each sampled dropped sample beside the eval
image it matched (from the eval set's stored 64-px thumbnail), with the eval set, eval
id, hash distance and similarity of its match report row; an eval set from before
thumbnails (manifest format 1) still decontaminates and shows "no thumbnail"."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.export.test_html_report import (Page, _section_elements, decode_data_uri, external_references,
                                           needs_chromium, open_in_chromium)
from vlcurate.cli import main
from vlcurate.export.html_report import SECTIONS, ReportOptions, write_report

NEW = ("a", "b", "c", "d")  # eval ids of the set with thumbnails
OLD = ("e", "f")  # of the set made to look as it did before thumbnails


def downgrade(evalset: Path) -> None:
    """Make ``evalset`` what `evalsets add` wrote before format 2: no thumbnail column,
    format 1, and the manifest's checksum of items.parquet to match."""
    items = evalset / "items.parquet"
    manifest_path = evalset / "evalset.json"
    for p in (items, manifest_path):
        p.chmod(0o644)
    table = pq.read_table(items).drop_columns(["thumbnail"])
    pq.write_table(table, items)
    manifest = json.loads(manifest_path.read_text())
    data = items.read_bytes()
    for f in manifest["files"]:
        if f["path"] == "items.parquet":
            f.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    manifest["format"] = "vlcurate.evalset/1"
    del manifest["thumbnails"]
    manifest_path.write_text(json.dumps(manifest, indent=1))


@pytest.fixture(scope="module")
def decontaminated(demo_corpus, demo_urls, tmp_path_factory):
    """40 demo rows, decontaminated by pHash against two eval sets holding the served
    originals of six of them (ids a..f); returns the version, and each chosen URL's id."""
    from vlcurate.pipelines.build import build
    from vlcurate.recipe import recipe_from_dict

    tmp = tmp_path_factory.mktemp("decontaminated")
    rows = pq.read_table(demo_urls).to_pylist()[:40]
    pq.write_table(pa.Table.from_pylist(rows), tmp / "train.parquet")
    ok = [r for r in demo_corpus.rows[:40] if r["kind"] == "ok"]
    bodies = {}
    for r in ok:  # distinct images only, so that each chosen URL has one nearest eval item
        bodies.setdefault(demo_corpus.files[r["url"]].body, r["url"])
    chosen = list(bodies.values())[:6]
    expected = {}
    for ids, folder in ((NEW, "new"), (OLD, "old")):
        (tmp / folder).mkdir()
        for eval_id, path in zip(ids, chosen[:len(ids)] if folder == "new" else chosen[len(NEW):]):
            (tmp / folder / f"{eval_id}.{path.rsplit('.', 1)[1]}").write_bytes(demo_corpus.files[path].body)
            expected[path] = f"{eval_id}.{path.rsplit('.', 1)[1]}"
    root = tmp / "root"
    for name in ("new", "old"):
        assert main(["evalsets", "add", name, str(tmp / name), "--root", str(root)]) == 0
    downgrade(root / "_evalsets" / "old")
    recipe = recipe_from_dict({
        "input": {"paths": [str(tmp / "train.parquet")], "extra_cols": ["kind"]},
        "output": {"root": str(tmp / "out"), "name": "d", "version": "v1"}, "samples_per_shard": 20,
        "stages": [{"download": {"image_size": 128, "resize_mode": "keep_ratio", "allow_networks": ["127.0.0.0/8"],
                                 "retries": 0}},
                   {"decontaminate": {"root": str(root), "evalsets": [{"name": "new"}, {"name": "old"}]}}],
        "runner": {"workers": 1}}, tmp)
    version = Path(build(recipe, log=lambda s: None).version_dir)
    return version, expected, root


def match_rows(version: Path) -> dict[str, dict]:
    return {r["key"]: r for p in sorted((version / "decontaminate").glob("*.matches.parquet"))
            for r in pq.read_table(p).to_pylist()}


def test_pairs_show_the_matched_eval_image_with_its_facts(decontaminated, tmp_path, capsys):
    version, expected, root = decontaminated
    urls = {r["key"]: r["url"] for p in (version / "samples").glob("*.parquet") for r in pq.read_table(p).to_pylist()}
    report = match_rows(version)
    # the match report names the right eval item for every chosen image (resized to 256
    # px in the eval set, 128 px in the version: a small distance, not 0)
    by_path = {"/" + urls[k].split("/", 3)[3]: r for k, r in report.items()}
    for path, eval_id in expected.items():
        assert by_path[path]["eval_id"] == eval_id and by_path[path]["hash_distance"] <= 8, path
    right = {k for k, r in report.items() if expected.get("/" + urls[k].split("/", 3)[3]) == r["eval_id"]}

    text = Path(write_report(version, tmp_path / "r.html")).read_text()
    page = Page(text)
    assert external_references(text) == []
    assert [s for s in SECTIONS if page.find("section", id=s)] == list(SECTIONS)
    pairs = page.find("div", **{"class": "pair match"})
    assert 6 <= len(pairs) <= ReportOptions().matches and len(pairs) == min(len(report), ReportOptions().matches)
    seen_sets = set()
    for pair in pairs:
        row = report[pair["data-key"]]
        assert (pair["data-evalset"], pair["data-eval-id"], pair["data-hash-distance"]) == (
            row["evalset"], row["eval_id"], str(row["hash_distance"]))
        seen_sets.add(row["evalset"])
    assert seen_sets == {"new", "old"}
    # images: the dropped sample's thumbnail and the eval set's stored one, which look alike
    images, current = {}, None
    for tag, attrs in _section_elements(page, "contamination"):
        if tag == "figure":
            current = attrs.get("data-key") or ("eval", attrs["data-eval-id"])
        elif tag == "img":
            images[current] = decode_data_uri(attrs["src"])
    eval_items = {r["id"]: r["thumbnail"] for r in pq.read_table(root / "_evalsets" / "new" / "items.parquet").to_pylist()}
    checked = 0
    for pair in pairs:
        assert pair["data-key"] in images  # every dropped sample has its image
        if pair["data-evalset"] == "new":
            shown = images[("eval", pair["data-eval-id"])]
            assert max(shown.size) <= 64 and eval_items[pair["data-eval-id"]] is not None
            if pair["data-key"] in right:
                train = images[pair["data-key"]].convert("RGB").resize(shown.size)
                diff = np.abs(np.asarray(train, np.float32) - np.asarray(shown.convert("RGB"), np.float32)).mean()
                assert diff < 12, (pair, diff)  # the same picture, twice JPEG-compressed
                checked += 1
    assert checked >= 1
    # the eval set from before thumbnails: its pairs say so (and it still decontaminated)
    old = [p for p in pairs if p["data-evalset"] == "old"]
    assert old and text.count('<div class="noimg">no thumbnail</div>') == len(old)
    assert main(["evalsets", "show", str(root), "old"]) == 0
    assert "thumbnails   none" in capsys.readouterr().out


def test_a_version_without_decontamination_says_so(demo_version, tmp_path):
    text = Path(write_report(demo_version, tmp_path / "r.html")).read_text()
    assert "No decontaminate stage in this version." in text


@needs_chromium
def test_contamination_report_opens_in_chromium(decontaminated, tmp_path):
    version, _, _ = decontaminated
    report = Path(write_report(version, tmp_path / "r.html"))
    dom, console = open_in_chromium(report, tmp_path / "profile")
    assert console == []
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-broken-images="0"' in body and '<section id="contamination">' in dom
