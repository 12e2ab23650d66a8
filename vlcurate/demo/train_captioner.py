"""Train and evaluate the demo-domain captioner on the demo's shapes.

The model is a transformers ``VisionEncoderDecoderModel``: the small convolutional
encoder ``vlc-conv-encoder`` (:mod:`vlcurate.extractors.conv_encoder`; its 4x4 feature
map is a 16-token sequence) and a 2-layer GPT-2 decoder of width 128 over the domain's
own words (a word-level tokenizer saved with the model). It is saved with
``save_pretrained`` next to its processor (a ``TrOCRProcessor``: image processor and
tokenizer), so the CapFilt loader loads the directory as it loads a hub BLIP
(``AutoModelForImageTextToText`` + ``AutoProcessor``).

Training: teacher forcing with cross-entropy on the true caption of images rendered
under the training seed (the demo corpus never uses it), stored as the download stage
stores them and prepared by the saved image processor, as the stage prepares them.

Evaluation goes through the production path: the held-out images are written as a
shard (the download stage's stored bytes in the samples tar), and the
``synthetic_captions`` stage's ``run_shard`` loads the saved directory and samples the
captions: greedy (a one-token nucleus) and nucleus ``top_p`` 0.9. A caption is correct
when it names the image's shape colour and shape (``"{colour} {shape}"``).
"""

from __future__ import annotations

import io
import re
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vlcurate.demo import domain
from vlcurate.demo.corpus import COLORS, SHAPES
from vlcurate.demo.train_clip import warmup_cosine

MODEL = "vlc-demo-captioner"
WEIGHTS_DIR = "captioner"  # a save_pretrained directory inside the weights folder
IMAGE_SIZE = 64
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3
WORDS = ("a", "on", "background", *COLORS, *SHAPES)
GREEDY_TOP_P = 1e-9  # a one-token nucleus: greedy decoding through the stage's sampler
NUCLEUS_TOP_P = 0.9
# ImageNet statistics, as the usual image processors normalise
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate((*SPECIALS, *WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def processor():
    from transformers import TrOCRProcessor, ViTImageProcessor

    image = ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=2,  # bilinear
                              image_mean=list(MEAN), image_std=list(STD))
    return TrOCRProcessor(image_processor=image, tokenizer=tokenizer())


def build_model(vocab_size: int, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel, VisionEncoderDecoderModel

    from vlcurate.extractors.conv_encoder import VlcConvEncoderConfig, VlcConvEncoderModel, register

    register()
    torch.manual_seed(seed)
    encoder = VlcConvEncoderModel(VlcConvEncoderConfig(image_size=IMAGE_SIZE, widths=[24, 48, 96, 128],
                                                       hidden_size=128))
    decoder = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=32, n_embd=128, n_layer=2, n_head=4,
                                         add_cross_attention=True, is_decoder=True, bos_token_id=1, eos_token_id=2,
                                         pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id, model.config.pad_token_id, model.config.eos_token_id = 1, 0, 2
    gen = model.generation_config
    gen.decoder_start_token_id, gen.bos_token_id, gen.pad_token_id, gen.eos_token_id = 1, 1, 0, 2
    gen.max_length = 12
    return model


def _prepared(batch: list[domain.DomainSample], proc) -> torch.Tensor:
    from vlcurate.extractors.hf_models import pixel_values

    return torch.from_numpy(np.stack([pixel_values(proc, s.stored()) for s in batch]))


def train_captioner(out: Path, n_train: int, steps: int, batch_size: int = 64, seed: int = 0,
                    log: Callable[[str], None] = print) -> Path:
    """Train and ``save_pretrained`` to ``out/captioner``; returns that directory."""
    import transformers

    proc = processor()
    tok = proc.tokenizer
    model = build_model(len(tok), seed)

    t0 = time.time()
    train = domain.samples(n_train, domain.TRAIN_SEED)
    images = _prepared(train, proc)
    eos = torch.tensor([[tok.eos_token_id]] * n_train)
    labels = torch.cat([torch.tensor([tok.convert_tokens_to_ids(s.caption.split()) for s in train]), eos], 1)
    log(f"captioner: {n_train} training images rendered in {time.time() - t0:.0f}s")

    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, n_train, (batch_size,), generator=gen)
        out_ = model(pixel_values=images[idx], labels=labels[idx])
        opt.zero_grad(set_to_none=True)
        out_.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            # colour and shape tokens (positions 1 and 2) predicted under teacher forcing
            acc = (out_.logits.argmax(-1)[:, 1:3] == labels[idx][:, 1:3]).all(1).float().mean().item()
            log(f"captioner: step {step}/{steps} loss {out_.loss.item():.3f} "
                f"batch colour+shape acc {acc:.2f} ({time.time() - t0:.0f}s)")
    model.eval()
    path = out / WEIGHTS_DIR
    transformers.utils.logging.disable_progress_bar()  # no third-party bars in our output
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


def names_true_object(caption: str, sample: domain.DomainSample) -> bool:
    """Whether ``caption`` names the image's shape with its colour ("... red circle ...")."""
    return re.search(rf"\b{sample.color} {sample.shape}\b", caption) is not None


def write_shard(layout, shard: int, batch: list[domain.DomainSample], url_prefix: str = "heldout") -> list[str]:
    """``batch`` as one downloaded shard of ``layout``: the samples table and the tar of
    the images as the download stage stores them. Returns the keys."""
    import pyarrow as pa
    from PIL import Image

    from vlcurate.download.images import ImageProcessor
    from vlcurate.io.parquet import write_parquet
    from vlcurate.io.tar import TarSample, write_tar
    from vlcurate.schemas import get_schema

    resize = ImageProcessor(domain.DOWNLOAD)
    rows, tar = [], []
    for i, s in enumerate(batch):
        key = f"{shard:05d}_{i:05d}"
        stored = resize(s.body).data
        w, h = Image.open(io.BytesIO(stored)).size
        rows.append({"key": key, "url": f"http://demo/{url_prefix}/{i:04d}", "caption": s.caption, "status": "ok",
                     "error_kind": None, "error_message": None, "http_status": 200, "width": w, "height": h,
                     "original_width": w, "original_height": h, "sha256": f"{i}", "phash": None})
        tar.append(TarSample(key, {"jpg": stored, "txt": s.caption.encode(), "json": b"{}"}))
    write_parquet(pa.Table.from_pylist(rows, schema=get_schema("sample").schema), layout.samples_parquet(shard),
                  "sample")
    write_tar(layout.samples_tar(shard), tar)
    return [r["key"] for r in rows]


def stage_captions(weights: Path | str, batch: list[domain.DomainSample], top_p: float, per_image: int,
                   seed: int = 0) -> list[list[str]]:
    """Each image's captions as the ``synthetic_captions`` stage samples them from the
    saved directory ``weights`` (its ``run_shard`` over a written shard)."""
    from vlcurate.extractors.caption_stage import SyntheticCaptionsConfig, SyntheticCaptionStage
    from vlcurate.io.parquet import read_parquet
    from vlcurate.pipelines.stage import Layout

    with tempfile.TemporaryDirectory() as tmp:
        layout = Layout(Path(tmp) / "v")
        keys = write_shard(layout, 0, batch)
        config = SyntheticCaptionsConfig(model=MODEL, weights=str(weights), device="cpu", top_p=top_p,
                                         captions_per_image=per_image, batch_size=50, seed=seed)
        SyntheticCaptionStage(config, layout).run_shard(0)
        table = read_parquet(layout.sidecar("synthetic_captions", 0), "synthetic_captions")
        rows = {r["key"]: r for r in table.to_pylist()}
    return [rows[k]["captions"] if rows[k]["status"] == "ok" else [] for k in keys]


def correct_share(batch: list[domain.DomainSample], captions: list[list[str]]) -> float:
    """Share of all sampled captions that name their image's colour and shape."""
    hits = [names_true_object(c, s) for s, caps in zip(batch, captions) for c in caps]
    return float(np.mean(hits)) if hits else 0.0


def evaluate(weights: Path | str, images: int = domain.HELDOUT_SIZE, per_image: int = 5) -> dict[str, float]:
    """Held-out metrics through the stage: share of greedy captions and of nucleus
    (``top_p`` 0.9, ``per_image`` per image) captions naming the true colour and shape,
    and the share of greedy captions that are the exact true caption."""
    batch = domain.heldout()[0][:images]
    greedy = stage_captions(weights, batch, GREEDY_TOP_P, 1)
    nucleus = stage_captions(weights, batch, NUCLEUS_TOP_P, per_image)
    exact = [caps[0] == s.caption for s, caps in zip(batch, greedy) if caps]
    return {"correct.greedy": correct_share(batch, greedy), "correct.nucleus": correct_share(batch, nucleus),
            "exact.greedy": float(np.mean(exact)) if exact else 0.0}
