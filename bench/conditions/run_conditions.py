"""Decisions under harder conditions: raw default threshold vs calibrated, with and without AS-norm.

Runs the service's own pipeline (decode → Silero VAD → ECAPA → gallery, AS-norm where on; via
``service.evaluation.calibrate.measure_scores``) on every condition built by
``make_conditions``. The calibrated thresholds come from the ``clean`` condition at
``--target-far`` (what an operator would do once on their clean data) and are then applied
unchanged to every condition.

Usage: python -m bench.conditions.run_conditions [--out bench/out/conditions]
           [--results bench/results/conditions-thresholds.md] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from service.core.settings import Settings
from service.decisions.scoring import eer
from service.evaluation.calibrate import SpaceScores, fit_space, measure_scores
from service.evaluation.trials import read_manifest
from service.pipeline.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[2]
VOX = "voxceleb"
OLD_DEFAULT = 0.25


def metrics(s: SpaceScores, threshold: float) -> dict[str, float]:
    enrolled = s.probe_enrolled
    accepted = s.probe_best >= threshold
    return {
        "trial_far": float(np.mean(s.impostor >= threshold)),
        "trial_frr": float(np.mean(s.genuine < threshold)),
        # Open set, per probe: an unenrolled voice matched to anyone is a false match; an
        # enrolled one is right only if its own speaker is first and accepted.
        "open_far": float(np.mean(accepted[~enrolled])) if (~enrolled).any() else float("nan"),
        "open_frr": float(1 - np.mean(s.probe_top1[enrolled] & accepted[enrolled])),
        "top1": float(np.mean(s.probe_top1[enrolled])),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=REPO / "bench/out/conditions")
    parser.add_argument(
        "--results", type=Path, default=REPO / "bench/results/conditions-thresholds.md"
    )
    parser.add_argument(
        "--model", type=Path, default=REPO.parent / "shared/models/spkrec-ecapa-voxceleb"
    )
    parser.add_argument("--target-far", type=float, default=0.01)
    args = parser.parse_args()

    cache = REPO / "bench/out/model-cache"
    models = ModelRegistry.load({VOX: str(args.model)}, cache_dir=cache, device="cpu")
    conditions = ["clean", "short", "tel8k", "noise10", "mp3_32k"]
    scores: dict[tuple[str, str], SpaceScores] = {}
    for kind, spaces in (("cosine", []), ("asnorm", [VOX])):
        settings = Settings(
            _env_file=None,
            data_dir=REPO / "bench/out/conditions-data",
            model_voxceleb=str(args.model),
            model_cache_dir=cache,
            asnorm_spaces=spaces,
        )
        for name in conditions:
            started = time.perf_counter()
            manifest = args.out / name / "manifest.csv"
            rows = read_manifest(manifest)
            scores[(kind, name)] = measure_scores(settings, models, rows)[VOX]
            print(f"{kind} {name}: {time.perf_counter() - started:.1f}s", flush=True)

    identity = models.encoder(VOX).identity
    calibrated = {
        kind: fit_space(scores[(kind, "clean")], identity, args.target_far)
        for kind in ("cosine", "asnorm")
    }
    table = []
    raw_json: dict[str, dict] = {}
    for name in conditions:
        for kind, label, threshold in (
            ("cosine", f"cosine, old default {OLD_DEFAULT}", OLD_DEFAULT),
            ("cosine", "cosine, calibrated", calibrated["cosine"].threshold),
            ("asnorm", "AS-norm, calibrated", calibrated["asnorm"].threshold),
        ):
            s = scores[(kind, name)]
            m = metrics(s, threshold)
            rate, _ = eer(s.genuine, s.impostor)
            m["eer"] = float(rate)
            raw_json[f"{name}/{label}"] = {"threshold": threshold, **m}
            table.append(
                f"| {name} | {label} | {threshold:.3f} | {m['top1']:.0%} | {rate:.1%} | "
                f"{m['trial_far']:.1%} | {m['trial_frr']:.1%} | {m['open_far']:.0%} | "
                f"{m['open_frr']:.0%} | {s.genuine.size}/{s.impostor.size} |"
            )
    s = scores[("cosine", "clean")]
    n_enr, n_un = int(s.probe_enrolled.sum()), int((~s.probe_enrolled).sum())
    header = [
        "# Decisions under harder conditions (dev-speech, real VoxCeleb ECAPA)",
        "",
        "Built by `python -m bench.conditions.make_conditions`, measured by "
        "`python -m bench.conditions.run_conditions` (service pipeline: decode, Silero VAD, "
        "ECAPA, FAISS gallery, AS-norm with the gallery as cohort).",
        "Probes are degraded, enrollments kept clean. Calibrated thresholds: "
        f"`fit_space` on the *clean* condition at target FAR {args.target_far:g} "
        f"(cosine {calibrated['cosine'].threshold:.4f}, AS-norm "
        f"{calibrated['asnorm'].threshold:.3f}), then applied unchanged everywhere.",
        "",
        f"**Data is tiny**: {s.n_speakers} enrolled speakers, {n_enr} probes of enrolled "
        f"speakers (spk1, spk2 only), {n_un} probes of unenrolled voices; {s.genuine.size} "
        f"genuine / {s.impostor.size} impostor trials per condition. One trial moves trial FAR "
        f"by {1 / s.impostor.size:.1%} and trial FRR by {1 / s.genuine.size:.0%}; open-set FAR "
        f"by {1 / n_un:.0%} and open-set FRR by {1 / n_enr:.0%}. AS-norm's cohort is the "
        f"gallery minus the candidate: {s.n_speakers - 1} speakers, far below a real cohort "
        "(hundreds), so its figures here say little. Treat every figure as anecdotal.",
        "",
        "| condition | decision | threshold | top-1 | EER | trial FAR | trial FRR | "
        "open-set FAR (unenrolled probes matched) | open-set FRR (enrolled probes not "
        "correctly accepted) | gen/imp trials |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(header + table) + "\n")
    args.results.with_suffix(".json").write_text(json.dumps(raw_json, indent=2) + "\n")
    print("\n".join(header + table))


if __name__ == "__main__":
    main()
