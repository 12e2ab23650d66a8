"""The download stage's tar shards: byte for byte what webdataset's own TarWriter
writes, without importing webdataset (which imports torch: ~700 MB per worker); and a
download worker never imports torch (stage modules import models only in setup)."""

from __future__ import annotations

import io
import random
import subprocess
import sys

from vlcurate.io.tar import TarSample, write_tar


def test_tar_bytes_equal_webdatasets_tarwriter(tmp_path):
    import webdataset as wds

    rng = random.Random(0)
    samples = [TarSample(f"00000_{i:06d}", {"jpg": rng.randbytes(rng.randint(0, 3000)),
                                            "txt": "caption é".encode(), "json": b'{"k":1}'})
               for i in range(20)]
    write_tar(tmp_path / "a.tar", samples)
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False, mtime=0.0) as sink:
        for s in samples:
            sink.write({"__key__": s.key, **s.files})
    assert (tmp_path / "a.tar").read_bytes() == buf.getvalue()


def test_a_download_shard_does_not_import_torch(tmp_path):
    code = (
        "import sys, pyarrow as pa, pyarrow.parquet as pq\n"
        "from pathlib import Path\n"
        "from vlcurate.download.stage import DownloadConfig\n"
        "from vlcurate.pipelines.stage import Layout, stage_class\n"
        "DownloadStage = stage_class('download')  # loads every built-in stage, as a worker does\n"
        "layout = Layout(Path(sys.argv[1]))\n"
        "Path(layout.input_shard(0)).parent.mkdir(parents=True)\n"
        "pq.write_table(pa.table({'url': ['', 'ftp://x/y.jpg'], 'caption': ['a', 'b']}), layout.input_shard(0))\n"
        "stats = DownloadStage(DownloadConfig(), layout).run_shard(0)\n"
        "print(stats.counts['failed.invalid_url'], 'torch' in sys.modules, 'webdataset' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "v")], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["2", "False", "False"]
