"""Every index kind on realistic speaker vectors (bench/realistic.py) at 10k / 100k / 1M.

    .venv/bin/python -m bench.bench_index_kinds [--sizes 10000,100000,1000000] [--rerank 500,1000]
        [--hnsw-max 100000]

Per size: the exact flat index (the baseline, and the exact answer recall is measured against),
``fastscan`` at each ``--rerank`` depth, and HNSW (M=32, efC=80, ef 128/512) up to
``--hnsw-max`` vectors (its 1M build takes ~12 minutes here; bench_search has those numbers).
Each through ``VectorIndex`` with one search thread, as the gallery runs it. Reported: build
time (add + training), resident memory per million vectors, single-query p50/p99, recall@10
against exact, and ``top1_kept``: of the queries whose true speaker exact search ranks first,
the fraction the kind ranks first too (the issue's "true speaker top-1 whenever exact has it").

The physical limit: a single-threaded scan cannot beat (bytes it must read per query) / (memory
bandwidth of one core). The bandwidth is measured here (numpy sum over 512 MB, best of 3), so
RESULTS.md can say how far each kind is from it. os.getloadavg() is recorded: the 2 cores are
shared with other work and latencies swing with it.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import numpy as np

from bench.bench_search import DIM, K, build, latencies, recall
from bench.common import machine, table, write_json
from bench.realistic import dataset
from index.fastscan import sub_quantisers
from index.spec import IndexSpec
from index.vector_index import VectorIndex

CHUNK = 100_000


def bandwidth_gb_s() -> float:
    """Single-thread read bandwidth: bytes summed per second over a 512 MB array."""
    data = np.ones(64 << 20, dtype=np.float64)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.nbytes / best / 1e9


def top1_kept(found: np.ndarray, exact: np.ndarray, truth: np.ndarray) -> float:
    has = exact[:, 0] == truth
    return round(float(np.mean(found[has, 0] == truth[has])), 4) if has.any() else float("nan")


def bytes_per_query(kind: str, n: int, rerank: int) -> int:
    if kind == "flat":
        return n * DIM * 4
    if kind == "fastscan":
        return n * sub_quantisers(DIM, 2) // 2 + min(rerank, n) * (DIM * 4 + 8)
    return 0


def run(sizes: list[int], reranks: list[int], hnsw_max: int) -> dict:
    bandwidth = bandwidth_gb_s()
    print(f"single-thread read bandwidth: {bandwidth:.1f} GB/s", flush=True)
    rows: list[dict] = []

    def emit(row: dict) -> None:
        row["load"] = round(os.getloadavg()[0], 1)
        rows.append(row)
        print(table([row], COLUMNS).splitlines()[-1], flush=True)
        write_json("index-kinds.partial", {"rows": rows, "bandwidth_gb_s": bandwidth})

    for n in sizes:
        data, queries, truth = dataset(n, queries=1000)
        rounds = 300 if n <= 100_000 else 150
        candidates: list[tuple[str, IndexSpec]] = [("flat", IndexSpec())]
        candidates += [(f"fastscan r={r}", IndexSpec(kind="fastscan", rerank=r)) for r in reranks]
        if n <= hnsw_max:
            candidates += [
                (f"hnsw ef={ef}", IndexSpec(kind="hnsw", ef_search=ef)) for ef in (128, 512)
            ]
        exact: np.ndarray | None = None
        built: dict[str, tuple[VectorIndex, float, float]] = {}
        for label, spec in candidates:
            # One build per structure; run-time options (rerank, ef) reuse it.
            key = spec.kind
            if key not in built:
                built.clear()
                gc.collect()
                built[key] = build(spec, data)
            index, build_s, mem = built[key]
            index.set_runtime_options(spec)
            _, found = index.search(queries, K, threads=1)
            if exact is None:
                exact = found
            lat = latencies(index, queries, 1, rounds)
            rerank = spec.rerank if spec.kind == "fastscan" else 0
            limit_ms = bytes_per_query(spec.kind, n, rerank) / (bandwidth * 1e9) * 1e3
            emit(
                dict(
                    n=n,
                    index=label,
                    recall10=round(recall(index, queries, exact), 4),
                    top1_kept=top1_kept(found, exact, truth),
                    p50_ms=lat["p50_ms"],
                    p99_ms=lat["p99_ms"],
                    limit_ms=round(limit_ms, 2) if limit_ms else "",
                    build_s=round(build_s, 1),
                    mem_mb_per_m=round(mem * 1e6 / n, 0),
                )
            )
        built.clear()
        del data
        gc.collect()
    return {"rows": rows, "bandwidth_gb_s": round(bandwidth, 2), "machine": machine()}


COLUMNS = [
    "n",
    "index",
    "recall10",
    "top1_kept",
    "p50_ms",
    "p99_ms",
    "limit_ms",
    "build_s",
    "mem_mb_per_m",
    "load",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--rerank", default="500,1000")
    parser.add_argument("--hnsw-max", type=int, default=100_000)
    args = parser.parse_args()
    result = run(
        [int(s) for s in args.sizes.split(",")],
        [int(r) for r in args.rerank.split(",")],
        args.hnsw_max,
    )
    print(table(result["rows"], COLUMNS))
    print(f"wrote {write_json('index-kinds', result)}")


if __name__ == "__main__":
    main()
