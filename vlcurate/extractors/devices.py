"""Which device a model runs on: one rule for every extractor."""

from __future__ import annotations


def resolve_device(name: str) -> str:
    """``auto``: CUDA when a GPU is visible, else the CPU; anything else as given."""
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
