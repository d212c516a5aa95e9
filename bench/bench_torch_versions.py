"""Embedding speed of the real ECAPA under two (or more) torch installations, in one run.

Which torch/torchaudio pair to pin is decided by measurement, not by "newest": each interpreter
(a venv with one pair installed) runs the same worker — load the real VoxCeleb ECAPA, embed real
dev-speech cut to 1, 3 and 10 s, median of N calls per length — and the interpreters take turns,
round after round, so a busy machine slows every candidate alike.

    python -m bench.bench_torch_versions --python .venv/bin/python \
        --python /tmp/venv-t214/bin/python --rounds 3

Each venv needs torch, torchaudio, speechbrain, soundfile and numpy. The malloc settings that
``voicesearch serve`` uses are applied to every worker (see service/cli.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from bench.common import DEV_SPEECH, REAL_VOXCELEB, table, write_json

_WORKER = r"""
import json, os, statistics, sys, time
import numpy as np, soundfile as sf, torch
from speechbrain.inference.speaker import EncoderClassifier
model_dir, speech_dir, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = EncoderClassifier.from_hparams(
    source=model_dir, savedir=None, overrides={"pretrained_path": model_dir}
).eval()
names = sorted(os.listdir(speech_dir))
wav = np.concatenate([sf.read(os.path.join(speech_dir, n))[0] for n in names]).astype(np.float32)
out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
for secs in (1, 3, 10):
    x = torch.from_numpy(wav[: secs * 16000]).unsqueeze(0)
    with torch.inference_mode():
        for _ in range(3):
            m.encode_batch(x)
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            m.encode_batch(x)
            times.append(time.perf_counter() - t)
    out[f"{secs}s_ms"] = round(1000 * statistics.median(times), 2)
out["load"] = round(os.getloadavg()[0], 2)
print("RESULT " + json.dumps(out))
"""

_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def run_worker(python: str, calls: int) -> dict:
    speech_dir = DEV_SPEECH / "speechbrain_samples" / "ASR"
    done = subprocess.run(
        [python, "-c", _WORKER, str(REAL_VOXCELEB), str(speech_dir), str(calls)],
        capture_output=True,
        text=True,
        env={**os.environ, **_MALLOC},
        check=True,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", action="append", required=True, help="interpreter (repeat)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {p: [] for p in args.python}
    for _ in range(args.rounds):
        for python in args.python:
            runs[python].append(run_worker(python, args.calls))
            print(json.dumps(runs[python][-1]), file=sys.stderr)
    rows = []
    for python, results in runs.items():
        row = {"python": python, "torch": results[0]["torch"]}
        for key in ("1s_ms", "3s_ms", "10s_ms"):
            row[key] = statistics.median(r[key] for r in results)
        row["load"] = max(r["load"] for r in results)
        rows.append(row)
    print(table(rows, ["torch", "1s_ms", "3s_ms", "10s_ms", "load", "python"]))
    write_json("torch-versions", {"rounds": args.rounds, "calls": args.calls, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
