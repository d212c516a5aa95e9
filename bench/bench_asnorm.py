"""Search latency with and without AS-norm (gallery as cohort), as VoiceSearch runs it.

    .venv/bin/python -m bench.bench_asnorm [--sizes 1000,10000,100000] [--top-n 5] [--k 100]

A SQLite store + Gallery (exact flat index, one search thread) filled with random unit vectors
(``bench.synthetic.bulk_insert_synthetic``); per size, single-query latency (p50/p99 over many
queries) of:

* ``raw``: ``gallery.search`` alone (what find-match costs without normalisation);
* ``asnorm warm``: search + AS-norm with the candidates' cohort stats cached (gallery unchanged);
* ``asnorm cold``: the cache dropped before each query (what the first search after any enroll or
  delete pays: one extra batched top-(K+1) search of the ``top_n`` candidate vectors).

The find-match search itself goes K+1 deep when AS-norm is on (the probe's cohort), so "warm"
includes that deeper search.

Writes bench/results/asnorm.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import summary_ms, write_json
from bench.synthetic import bulk_insert_synthetic
from service.decisions.normalization import AsNorm
from service.search.gallery import Gallery
from storage.db import make_engine, make_session_factory
from storage.migrate import upgrade_to_head
from storage.speakers import SpeakerStore

DIM = 192
VOX = "voxceleb"
IDS = {VOX: "bench@1"}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def run_size(n: int, top_n: int, k: int, queries: int) -> dict:
    rng = np.random.default_rng(n)
    with tempfile.TemporaryDirectory(prefix="bench-asnorm-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'vs.db'}"
        upgrade_to_head(url)
        engine = make_engine(url)
        try:
            store = SpeakerStore(make_session_factory(engine), IDS)
            for start in range(0, n, 100_000):
                bulk_insert_synthetic(
                    store, VOX, _unit(rng.standard_normal((min(100_000, n - start), DIM)))
                )
            gallery = Gallery(store, Path(tmp) / "index", {VOX: DIM}, IDS)
            gallery.open()
            norm = AsNorm(gallery, [VOX], top_k=k)
            probes = _unit(rng.standard_normal((queries, DIM)))
            # Same probe set every mode; the first pass warms FAISS / SQLite caches.
            for p in probes[:10]:
                gallery.search(VOX, p[None, :], top_n)

            def raw(p: np.ndarray) -> None:
                gallery.search(VOX, p[None, :], top_n)

            def normed(p: np.ndarray) -> None:
                # As Matcher.search_index: one search deep enough for the probe's cohort.
                deep = gallery.search(VOX, p[None, :], max(top_n, k + 1))[0]
                hits = deep[:top_n]
                norm.normalise(
                    VOX,
                    p,
                    [h.speaker_id for h in hits],
                    [h.score for h in hits],
                    probe_hits=deep,
                )

            def cold(p: np.ndarray) -> None:
                norm.clear_cache()
                normed(p)

            out = {}
            for name, fn in (("raw", raw), ("asnorm_warm", normed), ("asnorm_cold", cold)):
                if name == "asnorm_warm":
                    for p in probes:  # fill the cache for these probes' candidates
                        normed(p)
                times = []
                for p in probes:
                    t0 = time.perf_counter()
                    fn(p)
                    times.append(time.perf_counter() - t0)
                out[name] = summary_ms(times)
            return out
        finally:
            engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--top-n", type=int, default=5)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    results = {}
    for n in [int(s) for s in args.sizes.split(",")]:
        results[n] = run_size(n, args.top_n, args.k, args.queries)
        row = results[n]
        print(
            f"{n:>8} speakers: raw p50 {row['raw']['p50_ms']:.2f} ms | AS-norm warm p50 "
            f"{row['asnorm_warm']['p50_ms']:.2f} ms | cold p50 {row['asnorm_cold']['p50_ms']:.2f}"
            " ms",
            flush=True,
        )
    write_json(
        "asnorm",
        {"top_n": args.top_n, "k": args.k, "dim": DIM, "sizes": results},
    )


if __name__ == "__main__":
    main()
