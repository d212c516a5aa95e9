"""Bulk enrollment speed: `voicesearch enroll-dir` on a folder of speakers.

    .venv/bin/python -m bench.bench_enroll [--speakers 12] [--files 3]

Builds a folder with one sub-folder per speaker, each holding ``--files`` copies of dev-speech
clips (WAV, FLAC, MP3; 1.8-5.2 s; dealt round-robin so speakers get different clips), then runs
``voicesearch enroll-dir`` into a fresh data directory with the real VoxCeleb model and
``--language en`` (no lang-ID weights here). Reports speakers/minute (and files/minute).
Writes bench/results/enroll.json.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_embedding import clips
from bench.common import REPO, table, write_json
from bench.server import bench_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speakers", type=int, default=12)
    parser.add_argument("--files", type=int, default=3)
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
    env = bench_env(root / "data")
    try:
        started = time.perf_counter()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "service.cli",
                "--log-level",
                "warning",
                "enroll-dir",
                str(folder),
                "--language",
                "en",
                "--no-progress",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if out.returncode != 0:
        raise SystemExit(
            f"enroll-dir failed ({out.returncode}):\n{out.stdout}\n{out.stderr[-3000:]}"
        )
    line = out.stdout.strip().splitlines()[-1]
    rate = float(re.search(r"\(([\d.]+) speakers/minute\)", line).group(1))
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


if __name__ == "__main__":
    main()
