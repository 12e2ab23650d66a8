"""Flamingo chunks: the invariants hold on every chunk, and a rebuild with the same seed
gives the same chunks."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from tests.interleave.conftest import interleave_recipe
from vlcurate.demo.pages import CrawlRecord, write_warc
from vlcurate.pipelines.build import build
from vlcurate.recipe import load_recipe
from vlcurate.validate import validate_version


def long_page(i: int) -> bytes:
    parts = []
    for j in range(12):  # 12 images, ~600 tokens of text: windows must cut
        parts.append(f"<p>Section {j} of page {i} tells a longer story about rivers, bridges and boats "
                     f"that pass beneath them every single day of the year.</p>")
        parts.append(f'<img src="/img/p{i}-{j}.png" width="300" height="200" alt="picture {j}">')
    return ("<html><body>" + "".join(parts) + "</body></html>").encode()


def build_chunks(tmp_path, warc, version, seed=0):
    stages = [{"interleave": {"rules": {"max_images": 30, "max_words": 5000}}},
              {"flamingo_chunks": {"chunks_per_doc": 3, "seed": seed}}]
    recipe = interleave_recipe(tmp_path, warc, stages=stages, version=version)
    return build(load_recipe(recipe), log=lambda s: None).version_dir


def test_chunk_invariants_and_same_chunks_on_rebuild(tmp_path, crawl, crawl_server):
    records = [r for r in crawl.records if r.record_type == "response"] + \
        [CrawlRecord(f"/long-{i}.html", long_page(i)) for i in range(4)]
    warc = tmp_path / "c.warc.gz"
    warc.write_bytes(write_warc(records, crawl_server.base_url))
    v1 = build_chunks(tmp_path, warc, "v1")
    assert validate_version(v1) == []
    chunks = pq.read_table(v1 / "flamingo_chunks" / "00000.parquet")
    meta = chunks.schema.metadata
    image_id = int(meta[b"vlcurate.image_token_id"])
    end_id = int(meta[b"vlcurate.end_of_chunk_token_id"])
    assert (image_id, end_id) == (49408, 49409)  # right after the CLIP BPE vocabulary
    docs = {d["key"]: d for d in pq.read_table(v1 / "interleave" / "00000.parquet").to_pylist()}
    rows = chunks.to_pylist()
    assert {r["document_key"] for r in rows} == set(docs)
    long_docs = [k for k, d in docs.items() if "/long-" in d["general_metadata"]]
    assert len(long_docs) == 4
    for r in rows:
        ids = r["token_ids"]
        assert len(ids) <= 256
        assert len(r["images"]) <= 5
        assert ids.count(image_id) == len(r["images"]) == r["text"].count("<image>")
        assert ids[-1] == end_id
        doc = docs[r["document_key"]]
        doc_images = [json.loads(doc["metadata"])[i]["image_key"] for i, u in enumerate(doc["images"]) if u]
        if r["images"]:  # the chunk's images are consecutive images of its document, in order
            first = doc_images.index(r["images"][0])
            assert doc_images[first:first + len(r["images"])] == r["images"]
            urls = [u for u in doc["images"] if u]
            assert r["image_urls"] == urls[first:first + len(r["images"])]
    for key in long_docs:  # long documents: 3 distinct windows, each cut at 5 images or 256 tokens
        mine = [r for r in rows if r["document_key"] == key]
        assert len(mine) == 3 and len({r["start"] for r in mine}) == 3
        assert all(len(r["token_ids"]) == 256 or len(r["images"]) == 5 for r in mine)
    short = [r for r in rows if r["document_key"] not in long_docs]
    assert all(r["start"] == 0 for r in short) and len(short) == len(docs) - 4
    v2 = build_chunks(tmp_path, warc, "v2")
    assert (v2 / "flamingo_chunks" / "00000.parquet").read_bytes() == (v1 / "flamingo_chunks" / "00000.parquet").read_bytes()
    v3 = build_chunks(tmp_path, warc, "v3", seed=1)
    other = pq.read_table(v3 / "flamingo_chunks" / "00000.parquet").to_pylist()
    assert [r["start"] for r in other] != [r["start"] for r in rows]


def test_a_local_hugging_face_tokenizer_directory(tmp_path):
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    from vlcurate.interleave.chunks import FlamingoChunksConfig, Tokenizer, document_tokens, window

    vocab = {w: i for i, w in enumerate(["[UNK]", "a", "red", "circle", "boats", "pass", "."])}
    raw = RawTokenizer(WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    config = FlamingoChunksConfig(tokenizer=str(tmp_path / "tok"), max_tokens=6, max_images=1)
    tok = Tokenizer(config.tokenizer)
    assert (tok.image_id, tok.end_id) == (7, 8)
    seq, images = document_tokens(["a red circle .", None, "boats pass .", None], ["", "k0", "", "k1"], tok)
    assert seq == [1, 2, 3, 6, 7, 4, 5, 6, 8, 7, 8] and images == ["k0", "k1"]
    assert window(seq, 0, 6, 1, tok) == [1, 2, 3, 6, 7, 8]  # 6 tokens, the end marker last
    assert window(seq, 4, 6, 1, tok) == [7, 4, 5, 6, 8]  # cut before the second image
    assert tok.decode([1, 2, 7, 8]) == "a red <image> <|endofchunk|>"
