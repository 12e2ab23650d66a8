"""Feature extractors: CLIP embeddings + ViT tokens (clip), region features (regions)."""
