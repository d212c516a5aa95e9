"""Search through each vector store at 100k speakers: FAISS flat, FAISS ``auto``, Milvus Lite.

    .venv/bin/python -m bench.bench_vector_store [--speakers 100000] [--queries 300] [--rounds 3]

One SQLite database is filled with ``--speakers`` synthetic speakers (``bench/synthetic.py``:
192-d unit vectors, the rows the service writes). Three stores are opened on it, as the service
opens them (``Gallery`` / ``MilvusGallery``):

* ``faiss-flat``: the exact in-process index;
* ``faiss-auto``: the default kind (fastscan from 50k speakers);
* ``milvus-lite``: ``python -m milvus_lite server`` in its own process on 127.0.0.1 (the
  deployment shape: every node a client over gRPC), a FLAT inner-product collection.

Each query is a stored speaker's vector plus noise (cosine ≈ 0.8 to it), searched with
``search_briefs(k=10, describe=10)``: the index search AND the one database query that fetches
the hits' speakers with the change cursor, i.e. what one find-match costs past the embedding.
The stores take turns, round by round (A B C, A B C ...), so load swings hit all of them.
Reported per store: p50/p95 latency, single-thread throughput, throughput with 4 client
threads, top-1 agreement with the exact answer, and the time to open (build) the store.
``os.getloadavg()`` is recorded before and after: the 2 cores are shared.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import summary_ms, table, write_json
from bench.synthetic import bulk_insert_synthetic
from index.milvus_collections import MilvusCollections
from index.spec import IndexSpec
from service.search.gallery import Gallery
from service.search.milvus_gallery import MilvusGallery
from service.search.vector_store import VectorStore
from storage.db import make_engine, make_session_factory
from storage.migrate import upgrade_to_head
from storage.speakers import SpeakerStore
from tests.milvus import MilvusLiteServer

SPACE = "voxceleb"
DIM = 192
K = 10
IDENTITIES = {SPACE: "bench@1"}


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fill(store: SpeakerStore, vectors: np.ndarray) -> None:
    for start in range(0, vectors.shape[0], 50_000):
        bulk_insert_synthetic(store, SPACE, vectors[start : start + 50_000])


def timed_search(gallery: VectorStore, queries: np.ndarray) -> tuple[list[float], list[int]]:
    times, tops = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits, _ = gallery.search_briefs(SPACE, q, K, describe=K)
        times.append(time.perf_counter() - t0)
        tops.append(hits[0].speaker_id if hits else -1)
    return times, tops


def threaded_qps(gallery: VectorStore, queries: np.ndarray, threads: int) -> float:
    parts = np.array_split(queries, threads)
    started = time.perf_counter()
    workers = [threading.Thread(target=timed_search, args=(gallery, p)) for p in parts]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return queries.shape[0] / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--speakers", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()
    rng = np.random.default_rng(15)
    stored = unit_rows(rng, args.speakers)
    picks = rng.integers(0, args.speakers, size=args.queries)
    noisy = stored[picks] * 0.8 + unit_rows(rng, args.queries) * 0.6
    queries = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)

    server = MilvusLiteServer()
    server.start()
    galleries: dict[str, VectorStore] = {}
    opened_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-vector-store-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'vs.db'}"
        upgrade_to_head(url)
        engine = make_engine(url)
        store = SpeakerStore(make_session_factory(engine), IDENTITIES)
        started = time.perf_counter()
        fill(store, stored)
        fill_s = time.perf_counter() - started

        def faiss(kind: str) -> Gallery:
            return Gallery(
                store,
                Path(tmp) / kind,
                {SPACE: DIM},
                IDENTITIES,
                index_spec=IndexSpec(kind=kind),
                background=False,
            )

        try:
            for name, make in (
                ("faiss-flat", lambda: faiss("flat")),
                ("faiss-auto", lambda: faiss("auto")),
                (
                    "milvus-lite",
                    lambda: MilvusGallery(
                        store,
                        MilvusCollections(server.uri, prefix=f"b{uuid.uuid4().hex[:8]}_"),
                        {SPACE: DIM},
                        IDENTITIES,
                    ),
                ),
            ):
                gallery = make()
                started = time.perf_counter()
                gallery.open()
                opened_s[name] = time.perf_counter() - started
                galleries[name] = gallery
                print(f"{name}: opened in {opened_s[name]:.1f} s", flush=True)

            exact = {}
            times: dict[str, list[float]] = {name: [] for name in galleries}
            tops: dict[str, list[int]] = {}
            for gallery in galleries.values():  # warm-up
                timed_search(gallery, queries[:20])
            _, exact_tops = timed_search(galleries["faiss-flat"], queries)
            exact["top1"] = exact_tops
            for _ in range(args.rounds):
                for name, gallery in galleries.items():
                    t, tops[name] = timed_search(gallery, queries)
                    times[name].extend(t)
            qps4 = {name: threaded_qps(g, queries, 4) for name, g in galleries.items()}
        finally:
            for gallery in galleries.values():
                gallery.close()
            engine.dispose()
            server.stop()

    rows: list[dict[str, Any]] = []
    for name in galleries:
        summary = summary_ms(times[name])
        agree = float(np.mean(np.asarray(tops[name]) == np.asarray(exact["top1"])))
        rows.append(
            {
                "store": name,
                "kind": galleries[name].index_kind(SPACE),
                "p50_ms": summary["p50_ms"],
                "p95_ms": summary["p95_ms"],
                "qps_1_thread": round(len(times[name]) / sum(times[name]), 1),
                "qps_4_threads": round(qps4[name], 1),
                "top1_vs_exact": round(agree, 4),
                "open_s": round(opened_s[name], 1),
            }
        )
    load_after = os.getloadavg()
    columns = list(rows[0])
    print(table(rows, columns))
    print(
        f"{args.speakers} speakers (filled in {fill_s:.1f} s), {args.queries} queries x "
        f"{args.rounds} rounds per store, interleaved; load {load_before[0]:.1f} → "
        f"{load_after[0]:.1f}"
    )
    path = write_json(
        "vector_store",
        {
            "speakers": args.speakers,
            "queries": args.queries,
            "rounds": args.rounds,
            "load_before": load_before,
            "load_after": load_after,
            "rows": rows,
        },
    )
    print(f"written: {path}")


if __name__ == "__main__":
    main()
