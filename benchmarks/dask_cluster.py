"""A fresh local dask.distributed cluster for the Dask benchmarks, and a worker's peak RSS.

With ``memory_limit`` each worker spills the results it holds (a shuffle's records
among them) to its local disk above 40 % of the limit and never pauses or restarts: a
paused worker cannot spill results in flight and the run stalls.
"""

from __future__ import annotations

import contextlib
import resource
from typing import Iterator

SPILL = {"distributed.worker.memory.target": 0.4, "distributed.worker.memory.spill": 0.5,
         "distributed.worker.memory.pause": False, "distributed.worker.memory.terminate": False}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def local_cluster(workers: int, memory_limit: str | None = None) -> Iterator[tuple]:
    """``(cluster, client)``: ``workers`` processes of one thread on loopback, closed at the end."""
    import dask
    import distributed

    with dask.config.set(SPILL if memory_limit else {}):
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, host="127.0.0.1", silence_logs=50,
                                           memory_limit=memory_limit or "auto")
    client = distributed.Client(cluster)
    try:
        yield cluster, client
    finally:
        client.close()
        cluster.close()
