"""The records on SQLite vs PostgreSQL: write latency and throughput, and the per-search catch-up.

What a search pays for the database (``ChangeLog.change_cursor``, before every search) and what
an enrollment pays (``SpeakerStore.create_speaker``: speaker, utterance, embeddings, profiles,
change rows; one transaction), on a SQLite file and on a PostgreSQL database, measured in the
same run. PostgreSQL writers serialise on one advisory lock (``storage.dialects``), so the
4-thread write row shows what that lock costs against SQLite's own single writer.

PostgreSQL: ``--postgres-url`` (an empty database), or a throw-away local cluster started like
the tests do (``tests/postgres.py``; needs the server binaries). Both run on this machine over
127.0.0.1: no network latency, which a real deployment adds to every PostgreSQL number. The
local cluster keeps PostgreSQL's default durability (WAL flushed at every COMMIT); SQLite runs
as the service does (WAL, ``synchronous=NORMAL``: no fsync per commit).

    .venv/bin/python -m bench.bench_database --writes 300 --cursor-reads 2000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import summary_ms, table, write_json
from storage.db import make_engine, make_session_factory
from storage.migrate import upgrade_to_head
from storage.records import UtteranceInput
from storage.speakers import SpeakerStore

SPACES = {"voxceleb": "bench@vox", "cnceleb": "bench@cn"}
DIM = 192


def clip(rng: np.random.Generator, key: str) -> UtteranceInput:
    embeddings = {}
    for space in SPACES:
        vector = rng.standard_normal(DIM).astype(np.float32)
        embeddings[space] = vector / np.linalg.norm(vector)
    return UtteranceInput(key.ljust(64, "0")[:64], "en", 0.9, 4.0, embeddings, speech_s=4.0)


def timed(action: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        action()
        out.append(time.perf_counter() - start)
    return out


def measure(backend: str, url: str, writes: int, cursor_reads: int) -> list[dict[str, Any]]:
    upgrade_to_head(url)
    engine = make_engine(url)
    store = SpeakerStore(make_session_factory(engine), SPACES)
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    counter = iter(range(10**9))

    def write() -> None:
        key = f"{backend}-{next(counter)}"
        store.create_speaker(external_id=key, name=None, metadata=None, utterances=[clip(rng, key)])

    store.change_cursor()  # connect, warm the pool
    samples = timed(write, writes)
    rows.append(
        {"backend": backend, "what": "enroll, 1 thread", **summary_ms(samples)}
        | {"per_s": round(writes / sum(samples), 1)}
    )

    threads = 4
    per_thread: list[list[float]] = [[] for _ in range(threads)]

    def worker(slot: int) -> None:
        local = np.random.default_rng(slot + 1)
        for i in range(writes // threads):
            key = f"{backend}-t{slot}-{i}"
            start = time.perf_counter()
            store.create_speaker(
                external_id=key, name=None, metadata=None, utterances=[clip(local, key)]
            )
            per_thread[slot].append(time.perf_counter() - start)

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(slot,)) for slot in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    wall = time.perf_counter() - start
    samples = [s for thread_samples in per_thread for s in thread_samples]
    rows.append(
        {"backend": backend, "what": f"enroll, {threads} threads", **summary_ms(samples)}
        | {"per_s": round(len(samples) / wall, 1)}
    )

    samples = timed(store.change_cursor, cursor_reads)
    rows.append(
        {"backend": backend, "what": "change_cursor (every search)", **summary_ms(samples)}
        | {"per_s": round(cursor_reads / sum(samples), 1)}
    )
    cursor = store.change_cursor().seq
    samples = timed(lambda: store.changes_since("voxceleb", cursor - 20), 200)
    rows.append(
        {"backend": backend, "what": "changes_since (20 rows)", **summary_ms(samples)}
        | {"per_s": round(200 / sum(samples), 1)}
    )
    engine.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--cursor-reads", type=int, default=2000)
    parser.add_argument("--postgres-url", default=None, help="an empty PostgreSQL database")
    parser.add_argument("--name", default="database")
    args = parser.parse_args()

    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        rows += measure("sqlite", url, args.writes, args.cursor_reads)

    cluster = None
    pg_url = args.postgres_url
    if pg_url is None:
        from tests.postgres import PostgresCluster, find_bin_dir, missing_reason

        reason = missing_reason()
        bin_dir = find_bin_dir()
        if reason or bin_dir is None:
            raise SystemExit(f"no PostgreSQL: {reason}; pass --postgres-url")
        cluster = PostgresCluster(bin_dir, durable=True)
        cluster.start()
        pg_url = cluster.create_database()
    try:
        rows += measure("postgresql", pg_url, args.writes, args.cursor_reads)
    finally:
        if cluster is not None:
            cluster.stop()

    columns = ["backend", "what", "p50_ms", "p95_ms", "p99_ms", "per_s", "samples"]
    print(table(rows, columns))
    load = {"before": load_before, "after": os.getloadavg()}
    print(f"load average before {load['before']}, after {load['after']}")
    if cluster is not None:
        print("PostgreSQL: local throw-away cluster, default durability (fsync per commit)")
    path = write_json(args.name, {"rows": rows, "loadavg": load, "args": vars(args)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
