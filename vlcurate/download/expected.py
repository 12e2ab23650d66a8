"""Expected hashes from the input list, checked after the fetch: ``hash_mismatch``.

URL lists made years ago (LAION, DataComp, CC12M) often carry the hash of the image
that was there then; the image behind a URL changes (re-encoded, replaced by a
placeholder, or swapped for something else). A row whose downloaded content does not
match is recorded as failed with ``hash_mismatch`` and the reason, never silently kept.

- ``expected_sha256_col``: the sha256 (hex) of the bytes as served, checked before
  any pixel is decoded (a mismatch costs no decode);
- ``expected_phash_col`` with ``max_phash_distance``: for images re-encoded since the
  list was made; compared with the pHash of the stored image
  (:func:`vlcurate.download.images.phash`: 64-bit DCT pHash, 16 hex digits), a
  mismatch when more than ``max_phash_distance`` bits differ.

A null or empty expected value means "no check" for that row; a malformed one (not
hex of the right length) is a ``hash_mismatch`` naming the bad value.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from vlcurate.download.images import hamming_distance

HASH_MISMATCH = "hash_mismatch"
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_PHASH = re.compile(r"[0-9a-fA-F]{16}")


@dataclass(frozen=True)
class ExpectedHashConfig:
    """Which input columns hold expected hashes. Each named column must be one of the
    input's ``extra_cols`` (it is carried into the output unchanged, like any other)."""

    expected_sha256_col: str | None = None
    expected_phash_col: str | None = None
    max_phash_distance: int = 8  # of 64 bits: re-encoding/resizing typically moves 0-6

    def __post_init__(self) -> None:
        if not 0 <= self.max_phash_distance <= 64:
            raise ValueError("ExpectedHashConfig: max_phash_distance in 0..64")
        if (parent := getattr(super(), "__post_init__", None)) is not None:
            parent()

    def columns(self) -> list[tuple[str, str]]:
        """(setting name, input column) of every column this config reads."""
        return [(name, col) for name, col in (("expected_sha256_col", self.expected_sha256_col),
                                              ("expected_phash_col", self.expected_phash_col))
                if col is not None]


def _given(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def sha256_problem(data: bytes, expected: object) -> str | None:
    """Why ``data`` does not have the expected sha256, or None (match, or no value)."""
    want = _given(expected)
    if want is None:
        return None
    if not _SHA256.fullmatch(want):
        return f"expected sha256 {want[:80]!r} is not 64 hex digits"
    got = hashlib.sha256(data).hexdigest()
    return None if got == want.lower() else f"sha256 {got} of the fetched bytes, expected {want.lower()}"


def phash_problem(phash: str, expected: object, max_distance: int) -> str | None:
    """Why a stored image's ``phash`` is too far from the expected one, or None."""
    want = _given(expected)
    if want is None:
        return None
    if not _PHASH.fullmatch(want):
        return f"expected pHash {want[:80]!r} is not 16 hex digits"
    distance = hamming_distance(phash, want)
    if distance <= max_distance:
        return None
    return f"pHash {phash} is {distance} bits from expected {want.lower()} (max_phash_distance {max_distance})"
