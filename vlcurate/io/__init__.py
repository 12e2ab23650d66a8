"""Shard writers and readers (WebDataset tar, Parquet), atomic commits, checksums."""

from vlcurate.io.atomic import atomic_open, atomic_path, sha256_file, write_bytes_atomic
from vlcurate.io.parquet import parquet_rows, read_parquet, record_kind, write_parquet
from vlcurate.io.stats import ShardStats, read_stats, write_stats
from vlcurate.io.tar import TarSample, encode_json, iter_tar_files, read_tar, tar_keys, write_tar

__all__ = [
    "ShardStats",
    "TarSample",
    "atomic_open",
    "atomic_path",
    "encode_json",
    "iter_tar_files",
    "parquet_rows",
    "read_parquet",
    "read_stats",
    "read_tar",
    "record_kind",
    "sha256_file",
    "tar_keys",
    "write_bytes_atomic",
    "write_parquet",
    "write_stats",
    "write_tar",
]
