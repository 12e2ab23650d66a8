"""CapFilt captioner throughput: the ``synthetic_captions`` stage vs ``generate`` alone.

    python benchmarks/capfilt.py --size base --images 8 --batch-size 4 --captions 10 --repeat 2

Builds a synthetic shard of ``--images`` JPEGs (benchmarks/features.py's photo-like
images) and measures, alternating runs so both see the same machine load:

* ``stage``: captions/s of ``run_shard`` end to end: tar read, JPEG decode and the
  BLIP processor on the decode thread, batched ``generate`` with the per-sample seeded
  nucleus sampler, decoding the ids to text, validating and writing the sidecar;
* ``generate only``: captions/s of the model's ``generate`` with its own nucleus
  sampling (``do_sample=True, top_p``, ``num_return_sequences`` = K) on the same
  batches, preprocessed beforehand (no decoding of ids).

Efficiency = stage / generate-only. Then the stage runs once more at batch size 1 and
the script counts the captions that differ from the batched run (the rate the
README states). Weights are random (speed does not depend on them; nothing is
downloaded): ``--size tiny`` is the shipped vlc-tiny-blip, ``base``/``large`` build
BLIP-base/-large-sized configs (ViT-B/16 or ViT-L/16 at 384 px, BERT-base text decoder)
in a temporary directory. Random weights give near-uniform next-token distributions,
so every caption runs to ``max_length`` (30): the slowest case.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network for a benchmark

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from features import alternate, make_shard  # noqa: E402

VISION = {"base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
          "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)}


def blip_sized_dir(root: Path, size: str) -> str:
    """Config + processor of a BLIP-base/-large-sized captioner (random weights at load):
    BERT-base text decoder with BLIP's 30524-token vocabulary (a synthetic word list
    with BERT's special ids), ViT-?/16 at 384 px."""
    from transformers import BertTokenizer, BlipConfig, BlipImageProcessor, BlipProcessor

    vocab = [f"w{i}" for i in range(30524)]
    vocab[0], vocab[100], vocab[101], vocab[102], vocab[103] = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
    vocab[1000], vocab[1001], vocab[1002] = "a", "picture", "of"
    vocab[30522], vocab[30523] = "[DEC]", "[ENC]"
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(root / "vocab.txt"), bos_token="[DEC]", model_max_length=512)
    out = root / f"blip-{size}"
    BlipProcessor(BlipImageProcessor(size={"height": 384, "width": 384}), tok).save_pretrained(out)
    BlipConfig(vision_config={**VISION[size], "image_size": 384, "patch_size": 16},
               text_config={"sep_token_id": 102, "eos_token_id": 102}).save_pretrained(out)
    return str(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=("tiny", "base", "large"), default="tiny")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--captions", type=int, default=10, help="captions per image (K)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from vlcurate.extractors.caption_stage import SyntheticCaptionsConfig, SyntheticCaptionStage
    from vlcurate.extractors.encoding import decode_image
    from vlcurate.io.tar import iter_tar_files

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = "vlc-tiny-blip" if args.size == "tiny" else blip_sized_dir(root, args.size)
        layout = make_shard(root / "v", args.images, 256)
        cfg = SyntheticCaptionsConfig(model=model, device=args.device, captions_per_image=args.captions,
                                      batch_size=args.batch_size)
        stage = SyntheticCaptionStage(cfg, layout)
        stage.setup()
        cap = stage.captioner
        hf, k = cap.hf, args.captions
        images = [decode_image(d) for _, _, d in iter_tar_files(layout.samples_tar(0), ("jpg",))]
        batches = [torch.from_numpy(np.stack([cap.prepare(im) for im in images[i:i + args.batch_size]]))
                   for i in range(0, len(images), args.batch_size)]

        def generate_only() -> float:
            t0 = time.perf_counter()
            for pixels in batches:
                with torch.inference_mode(), hf.autocast():
                    hf.model.generate(pixel_values=pixels.to(hf.device),
                                      input_ids=cap.prompt_ids.repeat(len(pixels), 1).to(hf.device),
                                      do_sample=True, top_p=cfg.top_p, top_k=0, num_return_sequences=k,
                                      max_length=cfg.max_length, min_length=cfg.min_length)
            if hf.device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        generate_only()  # warm-up (first-call allocations, lazy inits)
        stage_s, gen_s = alternate(stage, args, generate_only)
        n = args.images * k
        stage_cps = [n / s for s in stage_s]
        gen_cps = [n / s for s in gen_s]
        result = {"size": args.size, "device": str(hf.device), "images": args.images,
                  "batch_size": args.batch_size, "captions_per_image": k, "torch_threads": torch.get_num_threads(),
                  "stage_captions_per_s": round(statistics.median(stage_cps), 2),
                  "generate_only_captions_per_s": round(statistics.median(gen_cps), 2),
                  "efficiency_per_run": [round(a / b, 3) for a, b in zip(stage_cps, gen_cps)]}
        result["efficiency"] = round(result["stage_captions_per_s"] / result["generate_only_captions_per_s"], 3)
        report(result, args.json)
        batched = pq.read_table(layout.sidecar("synthetic_captions", 0)).column("captions").to_pylist()
        single = SyntheticCaptionStage(SyntheticCaptionsConfig(**{**cfg.__dict__, "batch_size": 1}), layout)
        single.run_shard(0)
        one = pq.read_table(layout.sidecar("synthetic_captions", 0)).column("captions").to_pylist()
        differ = sum(a != b for x, y in zip(batched, one) for a, b in zip(x, y))
    report({"captions_differing_from_batch_size_1": f"{differ}/{n}"}, args.json)
    return 0


def report(result: dict, as_json: bool) -> None:
    print(json.dumps(result) if as_json else "\n".join(f"{key:40s} {v}" for key, v in result.items()), flush=True)


if __name__ == "__main__":
    sys.exit(main())
