"""Eval-set indexes: ``vlcurate evalsets add/list/show``, the bad inputs (one line,
exit 2, nothing written), the approximate index's build-time recall, and the
decontaminate stage giving the same decisions on every runner and sharding."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import local_dask_cluster, tree
from vlcurate.cli import main
from vlcurate.demo.corpus import draw_scene
from vlcurate.demo.shipped import card, model_path
from vlcurate.io import storage
from vlcurate.errors import UserError
from vlcurate.evalsets.build import add_evalset
from vlcurate.extractors.clip_models import ClipModelConfig
from vlcurate.typed import from_dict
from vlcurate.filters.eval_index import EvalSetIndex, build_embedding_index, load_evalset, perturbed_queries, recall_at_1


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def clip_args() -> list[str]:
    return ["--model", card()["clip"]["model"], "--weights", str(model_path("clip"))]


def image_folder(path: Path, n: int, seed: int = 1) -> Path:
    path.mkdir(parents=True)
    rng = random.Random(seed)
    for i in range(n):
        buf = io.BytesIO()
        draw_scene(rng, size=(96, 72)).save(buf, "PNG")
        (path / f"{i:03d}.png").write_bytes(buf.getvalue())
    return path


def test_add_list_show_a_folder_with_embeddings(tmp_path, capsys):
    folder = image_folder(tmp_path / "imgs", 10)
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image file name: skipped")
    root = tmp_path / "root"
    code, out, _ = run(capsys, "evalsets", "add", "tiny", folder, "--root", root, *clip_args())
    assert code == 0 and "10 of 11 images indexed (hash + flat embedding index)" in out
    items = pq.read_table(root / "_evalsets" / "tiny" / "items.parquet").to_pylist()
    assert [r["id"] for r in items] == ["000.png", "001.png", "002.png", "003.png", "004.png", "005.png",
                                        "006.png", "007.png", "008.png", "009.png", "broken.jpg"]
    assert items[-1]["status"] == "failed" and "not_an_image" in items[-1]["error_message"]
    index = load_evalset(str(root), "tiny")
    assert load_evalset(str(root), "tiny") is index  # once per process
    assert index.ids == [r["id"] for r in items[:10]] and index.vectors.shape[0] == 10
    # an eval image against the index: distance 0 and itself as the nearest
    assert index.nearest_hash([items[3]["phash"]])[0].eval_id == "003.png"
    assert index.nearest_embedding(index.vectors[5:6])[0].eval_id == "005.png"
    # immutable: a changed file is refused when the set is loaded
    damaged = root / "_evalsets" / "tiny" / "hash.faiss"
    damaged.chmod(0o644)
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x00")
    with pytest.raises(UserError, match=r"hash.faiss differs from its manifest's sha256"):
        EvalSetIndex.load(str(root), "tiny")
    code, out, _ = run(capsys, "evalsets", "list", root)
    assert code == 0 and out.splitlines()[1].split()[:5] == ["tiny", "11", "10", "vlc-tiny-resnet", "flat"]
    code, out, _ = run(capsys, "evalsets", "show", root, "tiny")
    assert code == 0 and "10 ok, 1 failed" in out and "flat index, 64-d" in out
    # above exact_max items the embedding index is IVF, its nprobe measured and shown
    ivf = add_evalset(str(root), "tiny_ivf", str(folder), model=from_dict(ClipModelConfig, {
        "model": "vlc-tiny-resnet", "weights": str(model_path("clip"))}), exact_max=5)
    emb = ivf.manifest["embedding_index"]
    assert emb["kind"] == "ivf" and emb["recall_at_1"] >= 0.99 and emb["calibration_queries"] == 10
    code, out, _ = run(capsys, "evalsets", "show", root, "tiny_ivf")
    assert f"ivf index, 64-d, nlist {emb['nlist']}, nprobe {emb['nprobe']}: recall@1" in out
    assert load_evalset(str(root), "tiny_ivf").nearest_embedding(index.vectors[2:3])[0].eval_id == "002.png"
    # stored beside the datasets, not a dataset version
    code, _, err = run(capsys, "versions", "list", root)
    assert code == 2 and "no versions under it" in err


def test_bad_inputs_one_line_exit_2_nothing_written(tmp_path, capsys):
    root = tmp_path / "root"
    run(capsys, "evalsets", "add", "hashonly", image_folder(tmp_path / "imgs", 4), "--root", root)
    before = tree(tmp_path)

    code, _, err = run(capsys, "evalsets", "add", "hashonly", tmp_path / "imgs", "--root", root)
    assert (code, err) == (2, f"vlcurate: error: eval set hashonly: already exists under {root} "
                              "(eval sets are immutable; choose another name)")
    (tmp_path / "empty").mkdir()
    before = tree(tmp_path)
    code, _, err = run(capsys, "evalsets", "add", "e", tmp_path / "empty", "--root", root)
    assert (code, err) == (2, f"vlcurate: error: source {tmp_path / 'empty'}: no images found")
    code, _, err = run(capsys, "evalsets", "add", "e", tmp_path / "nope", "--root", root)
    assert (code, err) == (2, f"vlcurate: error: source {tmp_path / 'nope'}: no such file or directory")
    assert tree(tmp_path) == before

    # an index built with another model than the stage asks for, refused before the build
    run(capsys, "evalsets", "add", "withclip", tmp_path / "imgs", "--root", root, *clip_args())
    before = tree(tmp_path)
    for stage, expected in (
        ({"model": "vlc-tiny-resnet", "weights": None,
          "evalsets": [{"name": "withclip", "min_similarity": 0.9}]},
         "eval set withclip: built with model vlc-tiny-resnet (weights_sha256="
         f"{storage.sha256(model_path('clip'))}), but the stage asks for vlc-tiny-resnet (seed=0)"),
        ({"model": "vlc-tiny-resnet", "weights": str(model_path("clip")),
          "evalsets": [{"name": "hashonly", "min_similarity": 0.9}]},
         "eval set hashonly: built without a CLIP model (hash index only), but the stage asks for vlc-tiny-resnet"),
        ({"evalsets": [{"name": "coco"}]}, "eval set coco: not found under"),
    ):
        body = {"input": {"paths": [str(tmp_path / "u.parquet")]}, "output": {"root": str(root), "name": "d",
                                                                          "version": "v1"},
                "stages": [{"download": {}}, {"decontaminate": {"root": str(root), **stage}}]}
        recipe = tmp_path / "r.yaml"
        recipe.write_text(yaml.safe_dump(body))
        code, _, err = run(capsys, "build", recipe)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith(f"vlcurate: error: {recipe}.stages[1].decontaminate.evalsets: {expected}"), err
        recipe.unlink()
    assert tree(tmp_path) == before


def test_approximate_index_reaches_the_target_recall_chosen_at_build_time():
    """Clustered vectors above ``exact_max``: an IVF index whose stored nprobe gives
    recall@1 >= 0.99 against exact search on fresh perturbed queries too."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 64))
    x = centres[rng.integers(0, 40, 6000)] + 0.35 * rng.standard_normal((6000, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    index, info = build_embedding_index(x, exact_max=1000)
    assert info.kind == "ivf" and info.recall_at_1 >= 0.99 and info.nprobe < info.nlist
    exact, _ = build_embedding_index(x)
    fresh = perturbed_queries(x, 500, seed=99)
    _, truth = exact.search(fresh, 1)
    assert recall_at_1(index, fresh, truth[:, 0]) >= 0.98


def decisions_by_url(version: Path) -> tuple[list[tuple], dict[str, float]]:
    """Per sample (by URL: keys change with the shard size): the decision, the nearest
    eval items by hash (with the distance) and by embedding, and the match report's
    row; and the similarity apart, since CLIP embeddings differ in the last float bits
    with the batch composition (a decision could flip only within ~1e-7 of a threshold)."""
    samples = {r["key"]: r["url"] for p in (version / "samples").glob("*.parquet") for r in pq.read_table(p).to_pylist()}
    rows = [r for p in (version / "decontaminate").glob("0????.parquet") for r in pq.read_table(p).to_pylist()]
    report = {r["key"]: (r["eval_id"], r["hash_distance"], r["matched_by"])
              for p in (version / "decontaminate").glob("*.matches.parquet") for r in pq.read_table(p).to_pylist()}
    decided, similarity = [], {}
    for r in rows:
        nearest = json.loads(r["detail"])["demo_eval"]
        decided.append((samples[r["key"]], r["keep"], r["reason"], tuple(nearest["hash"]), nearest["embedding"][0],
                        report.get(r["key"])))
        similarity[samples[r["key"]]] = r["score"]
    return sorted(decided), similarity


@pytest.mark.slow
def test_same_decisions_on_one_and_two_workers_dask_and_resharded(tmp_path, demo_urls, capsys):  # ~1.5 min
    """An eval set from a URL list (20 demo URLs, fetched by the download stage), with
    the demo-domain CLIP; a build of 100 demo rows decontaminated against it on
    1 and 2 workers, the DaskRunner and another shard size decides the same."""
    pytest.importorskip("distributed")  # before the builds
    from vlcurate.pipelines.build import build
    from vlcurate.recipe import recipe_from_dict
    from vlcurate.validate import validate_version

    rows = pq.read_table(demo_urls).to_pylist()
    train = rows[:100]  # of the demo corpus's 240: enough for three shards, and quicker
    pq.write_table(pa.Table.from_pylist(train), tmp_path / "train.parquet")
    eval_rows = [r for r in train if r["kind"] == "ok"][:18] + [r for r in rows if r["kind"] in ("404", "html")][:2]
    pq.write_table(pa.Table.from_pylist(eval_rows), tmp_path / "eval.parquet")
    root = tmp_path / "root"
    code, out, err = run(capsys, "evalsets", "add", "demo_eval", tmp_path / "eval.parquet", "--root", root,
                         "--download", "{allow_networks: [127.0.0.0/8], image_size: 64}", *clip_args())
    assert code == 0, err
    manifest = json.loads((root / "_evalsets" / "demo_eval" / "evalset.json").read_text())
    assert manifest["counts"]["items"] == 20 and manifest["counts"]["failed"] >= 1  # a broken URL is a row

    clip = {"model": card()["clip"]["model"], "weights": str(model_path("clip"))}
    stages = [{"download": {"image_size": 64, "allow_networks": ["127.0.0.0/8"]}},
              {"decontaminate": {"root": str(root), **clip,
                                 "evalsets": [{"name": "demo_eval", "max_hash_distance": 14, "min_similarity": 0.995}]}}]

    def recipe(out: str, per_shard: int, runner: dict):
        return recipe_from_dict({"input": {"paths": [str(tmp_path / "train.parquet")], "extra_cols": ["kind"]},
                                 "output": {"root": str(tmp_path / out), "name": "d", "version": "v1"},
                                 "samples_per_shard": per_shard, "stages": stages, "runner": runner}, tmp_path)

    results = {f"local-{w}": build(recipe(f"w{w}", 24, {"workers": w}), log=lambda s: None).version_dir
               for w in (1, 2)}
    results["resharded"] = build(recipe("r", 45, {"workers": 1}), log=lambda s: None).version_dir
    with local_dask_cluster() as (cluster, _):  # closed quietly (tests/conftest.py says how)
        results["dask"] = build(recipe("dask", 24, {"name": "DaskRunner", "options": [
            f"--dask_client_address={cluster.scheduler_address}"]}), log=lambda s: None).version_dir
    first = Path(results["local-1"])
    assert validate_version(first) == []
    stage = json.loads((first / "manifest.json").read_text())["stages"][1]
    assert stage["libraries"]["evalsets"]["demo_eval"]["files"] == {f["path"]: f["sha256"] for f in manifest["files"]}
    assert stage["weights"]["label"] == "demo-domain weights"
    decided, similarity = decisions_by_url(first)
    eval_urls = {r["url"] for r in eval_rows[:18]}
    dropped = {url for url, keep, *_ in decided if not keep}
    assert eval_urls <= dropped  # the eval images themselves are found
    assert all(row[-1] is not None for row in decided if not row[1])  # each drop is in the match report
    print(f"\n{len(decided)} samples, {len(dropped)} dropped "
          f"({sum('hash' in row[-1][2] for row in decided if row[-1])} by hash, "
          f"{sum('embedding' in row[-1][2] for row in decided if row[-1])} by embedding)")
    # a version as a source: its samples, ids = keys, failed downloads as failed items
    code, out, err = run(capsys, "evalsets", "add", "from_version", first, "--root", root)
    assert code == 0, err
    items = pq.read_table(root / "_evalsets" / "from_version" / "items.parquet").to_pylist()
    samples = [r for p in sorted((first / "samples").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert [(i["id"], i["source"], i["status"], i["phash"]) for i in items] == \
        [(r["key"], r["url"], r["status"], r["phash"]) for r in samples]
    for name, version in results.items():
        other, other_similarity = decisions_by_url(Path(version))
        assert other == decided, name
        assert max(abs(similarity[u] - other_similarity[u]) for u in similarity) < 1e-6, name
