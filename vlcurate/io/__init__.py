"""The storage layer (:mod:`vlcurate.io.storage`) and the shard writers and readers on
it: WebDataset tar and Parquet shards, stats markers. Nothing outside this package
opens, lists, renames or deletes the files of a version by path."""

from vlcurate.io import object_store, storage  # object_store registers s3:// and gs://
from vlcurate.io.parquet import parquet_rows, read_parquet, read_parquet_schema, record_kind, write_parquet
from vlcurate.io.stats import FileRecord, ShardStats, read_stats, write_stats
from vlcurate.io.tar import TarSample, encode_json, iter_tar_files, read_tar, tar_keys, write_tar

__all__ = [
    "FileRecord",
    "ShardStats",
    "TarSample",
    "encode_json",
    "object_store",
    "iter_tar_files",
    "parquet_rows",
    "read_parquet",
    "read_parquet_schema",
    "read_stats",
    "read_tar",
    "storage",
    "record_kind",
    "tar_keys",
    "write_parquet",
    "write_stats",
    "write_tar",
]
