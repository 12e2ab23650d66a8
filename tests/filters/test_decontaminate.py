"""Eval-set decontamination on the hash path: precision and recall of the drops
against ground truth (the measurement behind the default ``max_hash_distance``), the
match report's eval ids, and the decision rows of every sample."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.filters.test_near_dedup import transformed, write_hashes as write_samples
from vlcurate.demo.corpus import draw_scene
from vlcurate.download.images import ImageProcessor
from vlcurate.evalsets.build import FOLDER_IMAGES, add_evalset
from vlcurate.filters.decontaminate import Decontaminate, DecontaminateConfig, EvalSetSettings
from vlcurate.pipelines.stage import Layout
from vlcurate.schemas import validate

EVAL, COPIES, NEGATIVES = 300, 500, 500
SIZE = (128, 96)


def colour_shift(img: Image.Image, rng: random.Random) -> Image.Image:
    """Per-channel gain (0.85-1.15) and offset (-15..15): a colour-graded copy."""
    a = np.asarray(img, np.float32) * np.array([rng.uniform(0.85, 1.15) for _ in range(3)])
    a += np.array([rng.uniform(-15, 15) for _ in range(3)])
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def stored_phash(img: Image.Image) -> str:
    """The pHash the download stage would store for this image."""
    return ImageProcessor(FOLDER_IMAGES)(png(img)).phash


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """300 eval images in a folder, indexed as eval set ``gen``; 500 transformed copies
    (resized 0.4-1.6x, cropped up to 10%, colour-graded, brightness/contrast, JPEG/WebP
    35-95) and 500 hard negatives (new scenes, same generator and palette), hashed as
    the download stage hashes them."""
    tmp = tmp_path_factory.mktemp("decon")
    rng = random.Random(13)
    originals = [draw_scene(rng, size=SIZE) for _ in range(EVAL)]
    folder = tmp / "eval"
    folder.mkdir()
    for i, img in enumerate(originals):
        (folder / f"img{i:04d}.png").write_bytes(png(img))
    add_evalset(str(tmp / "root"), "gen", str(folder))
    source = [i % EVAL for i in range(COPIES)]
    copies = [stored_phash(transformed(colour_shift(originals[i], rng), rng)) for i in source]
    negatives = [stored_phash(draw_scene(rng, size=SIZE)) for _ in range(NEGATIVES)]
    return tmp, source, copies, negatives


def run_stage(layout: Layout, shards: list[int], root: Path, tag_only: bool = False, **settings) -> tuple[dict, dict]:
    config = DecontaminateConfig(root=str(root), evalsets=(EvalSetSettings("gen", **settings),), tag_only=tag_only)
    stage = Decontaminate(config, layout)
    decisions, matches = {}, {}
    for shard in shards:
        stage.run_shard(shard)
        table = pq.read_table(layout.sidecar("decontaminate", shard))
        assert validate(table, "decision", raise_error=False) == []
        decisions.update({r["key"]: r for r in table.to_pylist()})
        report = pq.read_table(layout.sidecar("decontaminate", shard, "matches.parquet"))
        assert validate(report, "eval_match", raise_error=False) == []
        matches.update({r["key"]: r for r in report.to_pylist()})
    return decisions, matches


def test_hash_path_precision_and_recall_on_transformed_copies_and_hard_negatives(generated):
    tmp, source, copies, negatives = generated
    layout = Layout.for_stages(tmp / "v", ["download", "decontaminate"])
    # copies and negatives interleaved over two shards
    mixed = [h for pair in zip(copies, negatives) for h in pair]
    keys = write_samples(layout, 0, mixed[:500]) + write_samples(layout, 1, mixed[500:])
    truth = {keys[2 * i]: f"img{s:04d}.png" for i, s in enumerate(source)}  # copy key -> its eval id
    default = EvalSetSettings("gen").max_hash_distance
    print(f"\n{EVAL} eval images, {COPIES} transformed copies, {NEGATIVES} hard negatives")
    for distance in (10, 12, default, 16, 18):
        decisions, matches = run_stage(layout, [0, 1], tmp / "root", max_hash_distance=distance)
        dropped = {k for k, d in decisions.items() if not d["keep"]}
        assert dropped == set(matches) and all(d["reason"] == "eval_contamination" for k, d in decisions.items()
                                                if k in dropped)
        right = {k for k in dropped if k in truth and matches[k]["eval_id"] == truth[k]}
        precision, recall = len(right) / max(len(dropped), 1), len(right) / COPIES
        print(f"max_hash_distance {distance:2d}: dropped {len(dropped):4d} (copies {len(dropped & set(truth))}, "
              f"negatives {len(dropped - set(truth))}), precision {precision:.3f}, recall {recall:.3f}"
              + ("  <- default" if distance == default else ""))
        if distance == default:
            assert precision >= 0.95 and recall >= 0.95, (precision, recall)
            # the match report names the right eval image for every dropped copy
            assert all(matches[k]["eval_id"] == truth[k] for k in dropped & set(truth))
            assert all(matches[k]["hash_distance"] <= distance and matches[k]["matched_by"] == "hash"
                       for k in dropped)
            # every sample's decision row records its nearest eval item
            for k, d in decisions.items():
                nearest = json.loads(d["detail"])["gen"]["hash"]
                assert nearest[0].startswith("img") and 0 <= nearest[1] <= 64
                assert (nearest[1] <= distance) == (not d["keep"])


def test_tag_only_drops_nothing_and_still_writes_the_match_report(generated):
    tmp, source, copies, negatives = generated
    layout = Layout.for_stages(tmp / "tag", ["download", "decontaminate"])
    write_samples(layout, 0, copies[:40] + negatives[:40])
    dropping, report = run_stage(layout, [0], tmp / "root")
    tagged, tagged_report = run_stage(layout, [0], tmp / "root", tag_only=True)
    assert all(d["keep"] for d in tagged.values()) and report and tagged_report == report
    assert {k for k, d in tagged.items() if d["reason"] == "would_drop:eval_contamination"} == \
        {k for k, d in dropping.items() if not d["keep"]}
