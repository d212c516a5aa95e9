"""Search latency, throughput, recall and memory of the FAISS index at 10k / 100k / 1M speakers.

    .venv/bin/python -m bench.bench_search [--sizes 10000,100000,1000000] [--data clustered,uniform]

Per size and data set: the exact flat index and the HNSW option (``VOICESEARCH_INDEX_TYPE=hnsw``),
through ``index.vector_index.VectorIndex`` with one search thread, as ``Gallery`` runs it (parallel
requests come from worker processes). Single queries (p50/p99 over many) and batches of 32;
HNSW recall@10 against the exact answer for several ``ef_search`` values; build time; resident
memory per million vectors. Writes bench/results/search.json and search-latency.png.

Data: ``clustered`` = speaker-like profiles (anisotropic spectrum, 256 groups such as
gender/language/channel, queries = a stored speaker's profile plus noise at cosine ~0.7, like a
new clip of an enrolled speaker); ``uniform`` = isotropic random unit vectors and random queries
(the worst case for graph search).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, rss_mb, summary_ms, table, write_json
from index.spec import IndexSpec
from index.vector_index import VectorIndex

DIM = 192
K = 10
CHUNK = 100_000


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    if kind == "uniform":
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            out[start : start + m] = _unit(rng.standard_normal((m, DIM), dtype=np.float32))
        return out
    scale = (1.0 / np.sqrt(1.0 + np.arange(DIM) / 8.0)).astype(np.float32)
    centres = rng.standard_normal((256, DIM), dtype=np.float32) * scale
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        assign = rng.integers(256, size=m)
        noise = rng.standard_normal((m, DIM), dtype=np.float32) * scale * 0.8
        out[start : start + m] = _unit(centres[assign] + noise)
    return out


def make_queries(
    kind: str, data: np.ndarray, m: int, seed: int = 1
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(queries, true row per query or None)``."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return _unit(rng.standard_normal((m, DIM), dtype=np.float32)), None
    truth = rng.choice(data.shape[0], size=m, replace=False)
    noise = _unit(rng.standard_normal((m, DIM), dtype=np.float32))
    return _unit(data[truth] + noise), truth  # cosine ~0.7 to the stored profile


CACHE = Path(tempfile.gettempdir()) / "voicesearch-bench-search"


def build_cached(spec: IndexSpec, data: np.ndarray, key: str) -> tuple[VectorIndex, float, float]:
    """HNSW builds of 1M take many minutes on 2 cores: keep them (with their build time) in
    $TMPDIR so a rerun with other ef values does not rebuild. Memory is measured on a build."""
    path = CACHE / f"{key}.faiss"
    if path.is_file():
        index, meta = VectorIndex.load(path)
        index.set_runtime_options(spec)
        return index, meta["build_s"], meta["mem_mb"]
    index, seconds, mem = build(spec, data)
    index.save(path, {"build_s": seconds, "mem_mb": mem})
    return index, seconds, mem


def build(spec: IndexSpec, data: np.ndarray) -> tuple[VectorIndex, float, float]:
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    index = VectorIndex(DIM, spec=spec)
    for start in range(0, data.shape[0], CHUNK):
        part = data[start : start + CHUNK]
        index.add(np.arange(start, start + part.shape[0], dtype=np.int64), part, assume_new=True)
    index.prepare()  # fastscan: train the quantiser and encode (a no-op for flat and HNSW)
    seconds = time.perf_counter() - started
    return index, seconds, rss_mb() - before


def latencies(index: VectorIndex, queries: np.ndarray, batch: int, rounds: int) -> dict:
    times = []
    for i in range(rounds):
        start = (i * batch) % (queries.shape[0] - batch + 1)
        q = queries[start : start + batch]
        t0 = time.perf_counter()
        index.search(q, K, threads=1)
        times.append(time.perf_counter() - t0)
    out = summary_ms(times)
    out["qps"] = round(batch * len(times) / sum(times), 1)
    return out


def recall(index: VectorIndex, queries: np.ndarray, exact: np.ndarray) -> float:
    _, found = index.search(queries, K)
    return float(np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact, strict=True)]))


def speaker_hit(index: VectorIndex, queries: np.ndarray, truth: np.ndarray | None) -> float | str:
    """Fraction of queries whose own speaker (the stored row the query was made from) is the
    top-1 answer: what identification needs. Not defined for uniform random queries."""
    if truth is None:
        return ""
    _, found = index.search(queries, 1)
    return round(float(np.mean(found[:, 0] == truth)), 4)


def run(sizes: list[int], kinds: list[str], efs: list[int], m: int, efc: int, name: str) -> dict:
    rows: list[dict] = []
    for kind in kinds:
        for n in sizes:
            data = make_data(kind, n)
            queries, truth = make_queries(kind, data, 1000)
            rounds = 300 if n <= 100_000 else 100
            flat, flat_build, flat_mem = build(IndexSpec(), data)
            _, exact = flat.search(queries, K)
            flat_hit = speaker_hit(flat, queries, truth)
            for batch in (1, 32):
                lat = latencies(flat, queries, batch, rounds if batch == 1 else rounds // 4)
                rows.append(
                    dict(
                        top1_speaker=flat_hit,
                        data=kind,
                        n=n,
                        index="flat",
                        ef="",
                        batch=batch,
                        recall10=1.0,
                        **lat,
                        build_s=round(flat_build, 2),
                        mem_mb_per_m=round(flat_mem * 1e6 / n, 0),
                    )
                )
                print(table([rows[-1]], COLUMNS).splitlines()[-1], flush=True)
            del flat
            spec = IndexSpec(kind="hnsw", hnsw_m=m, ef_construction=efc, ef_search=efs[0])
            hnsw, hnsw_build, hnsw_mem = build_cached(spec, data, f"{kind}-{n}-m{m}-efc{efc}")
            # Deleted entries never come back, and recall holds with 5 % tombstones.
            for ef in efs:
                hnsw.set_runtime_options(IndexSpec(kind="hnsw", hnsw_m=m, ef_search=ef))
                rec = recall(hnsw, queries, exact)
                hit = speaker_hit(hnsw, queries, truth)
                for batch in (1, 32):
                    lat = latencies(hnsw, queries, batch, rounds if batch == 1 else rounds // 4)
                    rows.append(
                        dict(
                            data=kind,
                            n=n,
                            index=f"hnsw M={m}",
                            ef=ef,
                            batch=batch,
                            recall10=round(rec, 4),
                            top1_speaker=hit,
                            **lat,
                            build_s=round(hnsw_build, 1),
                            mem_mb_per_m=round(hnsw_mem * 1e6 / n, 0),
                        )
                    )
                    print(table([rows[-1]], COLUMNS).splitlines()[-1], flush=True)
                    write_json(f"{name}.partial", {"rows": rows})
            del hnsw, data
            gc.collect()
    return {"rows": rows, "k": K, "dim": DIM, "hnsw_m": m, "hnsw_ef_construction": efc}


COLUMNS = [
    "data",
    "n",
    "index",
    "ef",
    "batch",
    "recall10",
    "top1_speaker",
    "p50_ms",
    "p99_ms",
    "qps",
    "build_s",
    "mem_mb_per_m",
]


def plot(result: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    series: dict[str, list[tuple[int, float, float]]] = {}
    for row in result["rows"]:
        if row["batch"] != 1:
            continue
        label = f"{row['index']}{' ef=' + str(row['ef']) if row['ef'] else ''} ({row['data']})"
        series.setdefault(label, []).append((row["n"], row["p50_ms"], row["p99_ms"]))
    for label, points in series.items():
        points.sort()
        xs = [p[0] for p in points]
        line = ax.plot(xs, [p[2] for p in points], marker="o", label=f"{label} p99")[0]
        ax.plot(xs, [p[1] for p in points], ls="--", color=line.get_color(), alpha=0.6)
    ax.axhline(10, color="red", lw=0.8, ls=":", label="10 ms target")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("speakers in the index")
    ax.set_ylabel("single-query latency, ms (solid p99, dashed p50)")
    ax.set_title("Search latency vs index size (1 thread, k=10)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(RESULTS / "search-latency.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--data", default="clustered,uniform")
    parser.add_argument("--ef", default="32,64,128")
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--efc", type=int, default=80)
    parser.add_argument("--name", default="search")
    args = parser.parse_args()
    result = run(
        [int(s) for s in args.sizes.split(",")],
        args.data.split(","),
        [int(e) for e in args.ef.split(",")],
        args.m,
        args.efc,
        args.name,
    )
    (RESULTS / f"{args.name}.partial.json").unlink(missing_ok=True)
    print(table(result["rows"], COLUMNS))
    print(f"wrote {write_json(args.name, result)}")
    if args.name == "search":
        plot(result)


if __name__ == "__main__":
    main()
