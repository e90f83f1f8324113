"""Keeping the Prometheus multiprocess folder bounded when worker processes come and go.

prometheus_client writes one file per metric type per worker process. When a worker exits,
its live gauges are dropped (``mark_process_dead``), but its counter and histogram files stay,
since their counts must not vanish: restarted workers would make the folder grow without bound.
Here a dead worker's counts are folded into one archive file per type and its files removed,
so the folder holds at most the live workers' files plus the archives.

    >>> archive_dead_worker(12345, "/path/to/multiproc-dir")   # doctest: +SKIP
"""

from __future__ import annotations

import glob
import os
import time

from prometheus_client import multiprocess
from prometheus_client.mmap_dict import MmapedDict

ARCHIVE_ID = "archive"
_SUMMED = ("counter", "histogram", "summary")


def archive_dead_worker(pid: int, path: str | None = None) -> None:
    """Fold worker ``pid``'s counters into the archive and delete every file it left."""
    path = path or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return
    multiprocess.mark_process_dead(pid, path)
    for typ in _SUMMED:
        source = os.path.join(path, f"{typ}_{pid}.db")
        if not os.path.exists(source):
            continue
        archive = MmapedDict(os.path.join(path, f"{typ}_{ARCHIVE_ID}.db"))
        try:
            now = time.time()
            for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(source):
                current, _ = archive.read_value(key)
                archive.write_value(key, current + value, now)
        finally:
            archive.close()
        os.remove(source)
    # Gauges kept per process ("max", "min", "mostrecent", "all", ...): a dead worker's value
    # is stale, and live workers republish theirs.
    for stale in glob.glob(os.path.join(path, f"gauge_*_{pid}.db")):
        os.remove(stale)
