"""The backends section of bench/RESULTS.md (issue 13), from the JSON its benches wrote:
``backends.json`` (bench_backends), ``embedding-<backend>.json`` (bench_embedding --backend) and
``http-<backend>.json`` (bench_http --backend). Missing files are reported as "not run"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.bench_backends import COLUMNS as BACKEND_COLUMNS
from bench.bench_backends import INT8_TARGET
from bench.common import table

#: Today's /find-match by audio throughput with 1 client before issue 13 (bench/RESULTS.md).
FIND_MATCH_AUDIO_BEFORE_RPS = 2.34
HTTP_COLUMNS = ["backend", "clients", "p50_ms", "p95_ms", "throughput_rps", "errors", "load_avg_1m"]


def backends_section(
    targets: list[dict], load: Callable[[str], dict[str, Any] | None], verdict: Callable
) -> list[str]:
    out = ["## Backends: torch vs onnx vs onnx-int8 (bench_backends, issue 13)", ""]
    data = load("backends")
    if not data:
        targets.append(
            {
                "target": f"INT8 >= {INT8_TARGET}x tuned PyTorch",
                "figure": "-",
                "status": verdict(None),
            }
        )
        out += ["not run", ""]
    else:
        int8 = data["int8_speedup"]
        cpu = {
            r["clip_s"]: r["cpu_speedup_vs_torch"]
            for r in data["rows"]
            if r["backend"] == "onnx-int8"
        }
        targets.append(
            {
                "target": f"encoder: onnx-int8 >= {INT8_TARGET}x tuned PyTorch",
                "figure": "wall x"
                + " / ".join(f"{v:.2f}" for v in int8.values())
                + " (CPU time x"
                + " / ".join(f"{v:.2f}" for v in cpu.values())
                + f") at {' / '.join(f'{float(k):g}' for k in int8)} s",
                "status": verdict(data["target_met"]),
            }
        )
        out += [
            f"Real VoxCeleb ECAPA, one clip per call, {data['rounds']} interleaved rounds, "
            f"{data['threads']} intra-op threads, tuned malloc for all. Speed-ups are medians of "
            "per-round ratios against torch; `cpu_ms` is the process's CPU time per call (all "
            "threads). `load_*` is the 1-minute load average on the 2-core machine.",
            "",
            table(data["rows"], BACKEND_COLUMNS),
            "",
        ]
    pipeline = [(b, load(f"embedding-{b}")) for b in ("torch", "onnx", "onnx-int8")]
    for backend, result in pipeline:
        if result:
            ratio = result["pipeline_over_bare_median"]
            targets.append(
                {
                    "target": f"pipeline <= 10 % over bare models ({backend})",
                    "figure": f"x{ratio:.3f} (median of {len(result['runs'])} runs, "
                    "bench_embedding --tuned-only, VAD on ONNX Runtime)",
                    "status": verdict(ratio <= 1.10),
                }
            )
    http = [
        {"backend": b, **row}
        for b in ("torch", "onnx", "onnx-int8")
        if (result := load(f"http-{b}"))
        for row in result["rows"]
        if row["scenario"] == "find-match (audio)"
    ]
    if http:
        best = max((r for r in http if r["clients"] == 1), key=lambda r: r["throughput_rps"])
        targets.append(
            {
                "target": "/find-match by audio >= 2x today's requests/s "
                f"({FIND_MATCH_AUDIO_BEFORE_RPS} at 1 client)",
                "figure": f"{best['throughput_rps']} rps at 1 client ({best['backend']}), at load "
                f"{best['load_avg_1m']} on 2 cores"
                + (
                    " (a busy machine: not comparable with the idle baseline)"
                    if best["load_avg_1m"] > 2
                    else ""
                ),
                "status": verdict(best["throughput_rps"] >= 2 * FIND_MATCH_AUDIO_BEFORE_RPS),
            }
        )
        out += [
            "`/find-match` by audio (5 s MP3, `serve --workers 2`, bench_http --backend):",
            "",
            table(http, HTTP_COLUMNS),
            "",
        ]
    return out
