"""Bulk enrollment speed: `voicesearch enroll-dir` on a folder of speakers.

    .venv/bin/python -m bench.bench_enroll [--speakers 12] [--files 3]

Builds a folder with one sub-folder per speaker, each holding ``--files`` copies of dev-speech
clips (WAV, FLAC, MP3; 1.8-5.2 s; dealt round-robin so speakers get different clips), then runs
``voicesearch enroll-dir`` into a fresh data directory with the real VoxCeleb model and
``--language en`` (no lang-ID weights here). Reports speakers/minute (and files/minute).
Writes bench/results/enroll.json.

``--narrowband both --rounds 2``: the cost of telephone-band profiles (each wideband clip is
embedded a second time, through the telephone chain): runs with
``VOICESEARCH_NARROWBAND_PROFILES`` off and on, interleaved (off, on, off, on, ...) so the two
see the same machine load, and reports the median speakers/minute of each.
Writes bench/results/enroll-narrowband.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.bench_embedding import clips
from bench.common import REPO, table, write_json
from bench.server import bench_env, cli_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speakers", type=int, default=12)
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument(
        "--narrowband",
        choices=("default", "on", "off", "both"),
        default="default",
        help="VOICESEARCH_NARROWBAND_PROFILES for the run; both: compare off and on",
    )
    parser.add_argument("--rounds", type=int, default=2, help="--narrowband both: runs of each")
    args = parser.parse_args()
    root = Path(tempfile.gettempdir()) / "voicesearch-bench-enroll"
    shutil.rmtree(root, ignore_errors=True)
    folder = root / "speakers"
    sources = [p for p in clips() if p.suffix != ".sph"]
    n = 0
    for s in range(args.speakers):
        target = folder / f"speaker{s:04d}"
        target.mkdir(parents=True)
        for f in range(args.files):
            source = sources[n % len(sources)]
            n += 1
            shutil.copyfile(source, target / f"{f}{source.suffix}")
    try:
        if args.narrowband == "both":
            compare_narrowband(folder, root, args)
        else:
            rate, line, wall = enroll_dir(folder, root / "data", args.narrowband)
            report(args, rate, line, wall)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def enroll_dir(folder: Path, data: Path, narrowband: str) -> tuple[float, str, float]:
    """One ``voicesearch enroll-dir`` into a fresh ``data``: (speakers/minute, its summary
    line, wall seconds including the model load)."""
    shutil.rmtree(data, ignore_errors=True)
    env = bench_env(data)
    if narrowband != "default":
        env["VOICESEARCH_NARROWBAND_PROFILES"] = narrowband
    started = time.perf_counter()
    out = subprocess.run(
        cli_command("enroll-dir", str(folder), "--language", "en", "--no-progress"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(
            f"enroll-dir failed ({out.returncode}):\n{out.stdout}\n{out.stderr[-3000:]}"
        )
    # The summary line (warnings about thin speakers may follow it).
    pattern = re.compile(r"\(([\d.]+) speakers/minute\)")
    line = next((ln for ln in out.stdout.splitlines() if pattern.search(ln)), None)
    if line is None:
        raise SystemExit(f"no summary line in enroll-dir's output:\n{out.stdout}")
    return float(pattern.search(line).group(1)), line, wall  # type: ignore[union-attr]


def report(args: argparse.Namespace, rate: float, line: str, wall: float) -> None:
    result = {
        "speakers": args.speakers,
        "files_per_speaker": args.files,
        "enroll_dir_output": line,
        "speakers_per_minute": rate,
        "files_per_minute": round(rate * args.files, 1),
        "wall_seconds_including_model_load": round(wall, 1),
    }
    print(
        table(
            [result],
            [
                "speakers",
                "files_per_speaker",
                "speakers_per_minute",
                "files_per_minute",
                "wall_seconds_including_model_load",
            ],
        )
    )
    print(f"wrote {write_json('enroll', result)}")


def compare_narrowband(folder: Path, root: Path, args: argparse.Namespace) -> None:
    rates: dict[str, list[float]] = {"off": [], "on": []}
    load = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for setting in ("off", "on"):
            rate, line, _ = enroll_dir(folder, root / f"data-{setting}", setting)
            rates[setting].append(rate)
            print(f"narrowband {setting}: {line}", flush=True)
    load.append(os.getloadavg()[0])
    rows = [
        {
            "narrowband_profiles": setting,
            "runs": len(values),
            "median_speakers_per_minute": round(statistics.median(values), 1),
            "all": ", ".join(f"{v:.1f}" for v in values),
        }
        for setting, values in rates.items()
    ]
    ratio = statistics.median(rates["on"]) / statistics.median(rates["off"])
    print(table(rows, ["narrowband_profiles", "runs", "median_speakers_per_minute", "all"]))
    print(f"on / off: {ratio:.2f} (load average {load[0]:.1f} -> {load[1]:.1f})")
    result = {
        "speakers": args.speakers,
        "files_per_speaker": args.files,
        "rows": rows,
        "on_over_off": round(ratio, 3),
        "loadavg": load,
    }
    print(f"wrote {write_json('enroll-narrowband', result)}")


if __name__ == "__main__":
    main()
