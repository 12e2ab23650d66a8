"""Download-stage fixtures: the fault corpus, its server, and recipe helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.download.faults import FaultCorpus, make_fault_corpus
from tests.download.netjail import NetworkJail


@pytest.fixture(autouse=True)
def network_jail(monkeypatch) -> NetworkJail:
    """Every download test runs with non-loopback connects and lookups refused and
    recorded (``network_jail.refused``): nothing may leave the machine."""
    return NetworkJail().install(monkeypatch)


@pytest.fixture(scope="session")
def fault_corpus() -> FaultCorpus:
    return make_fault_corpus()


def write_urls(path: Path, base_url: str, rows: list[dict]) -> Path:
    """The URL list (url, caption, kind) of ``rows`` served at ``base_url``, as Parquet."""
    table = pa.Table.from_pylist([{"url": base_url + r["path"], "caption": r["caption"], "kind": r["kind"]}
                                  for r in rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def write_recipe(tmp_path: Path, inputs: list[str], download: dict[str, Any], *, version: str = "v1",
                 samples_per_shard: int = 40, filters: list[dict] | None = None,
                 input_extra: dict[str, Any] | None = None, name: str = "faults") -> Path:
    """A recipe under ``tmp_path`` building ``tmp_path/out/NAME/VERSION`` on the local runner."""
    body = {
        "input": {"paths": inputs, "url_col": "url", "caption_col": "caption", "extra_cols": ["kind"],
                  **(input_extra or {})},
        "output": {"root": str(tmp_path / "out"), "name": name, "version": version},
        "samples_per_shard": samples_per_shard,
        "stages": [{"download": {"timeout": 5.0, "threads": 16, "image_size": 64, **download}},
                   *(filters or [])],
        "runner": {"name": "local", "workers": 1},
    }
    path = tmp_path / f"recipe-{name}-{version}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path
