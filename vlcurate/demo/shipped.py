"""The demo-domain weights shipped inside the package (``vlcurate/demo/weights``).

``vlcurate demo train-models`` writes them with a card, ``weights_card.json``: for each
model its files, their SHA-256, the held-out metrics and (CLIP) the score threshold
chosen on held-out data. They are trained only on the demo's synthetic images (one
coloured shape on a plain background) and are labelled as such wherever they are used.
Light imports only: this module is imported while recipes are parsed.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from vlcurate.errors import UserError
from vlcurate.extractors.clip_models import WEIGHTS_CARD
from vlcurate.io import storage

WEIGHTS_DIR = Path(__file__).parent / "weights"
CARD = WEIGHTS_CARD  # the card clip_models reads: label and trained_on come from it
LABEL = "demo-domain weights"
TRAINED_ON = "the demo's synthetic shapes only (vlcurate demo train-models); not general-purpose"


@lru_cache(maxsize=None)
def card(weights_dir: Path = WEIGHTS_DIR) -> dict[str, Any]:
    path = weights_dir / CARD
    if not storage.exists(path):
        raise UserError(f"no demo-domain weights at {weights_dir} ({CARD} missing): run "
                        "`vlcurate demo train-models --out DIR` and copy DIR into vlcurate/demo/weights")
    return json.loads(storage.read_bytes(path))


def file_sha256(path: Path) -> str:
    return storage.sha256(path)


def model_path(name: str, weights_dir: Path = WEIGHTS_DIR) -> Path:
    """The shipped file (or directory) of model ``name`` ("clip", "captioner"), after
    checking every file of it against the card's SHA-256."""
    entry = card(weights_dir).get(name)
    if entry is None:
        raise UserError(f"{weights_dir / CARD}: no demo-domain model {name!r}")
    for rel, digest in entry["sha256"].items():
        got = file_sha256(weights_dir / rel)
        if got != digest:
            raise UserError(f"demo-domain weights {weights_dir / rel}: SHA-256 {got[:12]}... does not match "
                            f"{CARD} ({digest[:12]}...); reinstall or retrain")
    return weights_dir / entry["path"]
