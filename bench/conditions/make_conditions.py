"""Harder test conditions from a labelled manifest (default: bench/manifests/dev-speech.csv).

For each condition, the *probe* clips are degraded and the enroll clips kept clean (enrolled on a
good microphone, searched with whatever arrives — the usual deployment):

* ``clean``    probes as they are (decoded to 16 kHz WAV)
* ``short``    probes cut to 1.5 s (from the middle of the clip)
* ``tel8k``    telephone band: 300–3400 Hz band-pass, 8 kHz sample rate, 8-bit-like µ-law
                companding round trip
* ``noise10``  white noise added at 10 dB SNR (signal power measured over the whole clip)
* ``mp3_32k``  MP3 at 32 kbit/s (LAME via PyAV)

Writes ``OUT/<condition>/{enroll,probe}/*`` and ``OUT/<condition>/manifest.csv`` (paths relative
to that folder, same columns as the input manifest), so each condition runs as::

    voicesearch calibrate OUT/noise10/manifest.csv --dry-run --json noise10.json
    voicesearch eval OUT/noise10/manifest.csv

Usage: python -m bench.conditions.make_conditions [--manifest M] [--root DIR] [--out DIR]
(default out: bench/out/conditions, git-ignored).
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from service.pipeline.audio import decode_audio
from service.pipeline.telephone import TELEPHONE_RATE, telephone_band, wav_bytes

REPO = Path(__file__).resolve().parents[2]
SR = 16_000


def _read(path: Path) -> np.ndarray:
    return decode_audio(path.read_bytes(), max_duration_s=600, min_duration_s=0).samples


def _wav(samples: np.ndarray, rate: int = SR) -> bytes:
    return wav_bytes(samples, rate)


def short(x: np.ndarray, seed: int) -> tuple[bytes, str]:
    n = int(1.5 * SR)
    start = max(0, (x.size - n) // 2)
    return _wav(x[start : start + n]), "wav"


def tel8k(x: np.ndarray, seed: int) -> tuple[bytes, str]:
    # The service's own chain: telephone-band profiles are built with exactly this.
    return wav_bytes(telephone_band(x), TELEPHONE_RATE), "wav"


def noise10(x: np.ndarray, seed: int) -> tuple[bytes, str]:
    rng = np.random.default_rng(seed)
    power = float(np.mean(x.astype(np.float64) ** 2))
    noise = rng.standard_normal(x.size) * np.sqrt(power / 10 ** (10 / 10))
    return _wav((x + noise).astype(np.float32)), "wav"


def mp3_32k(x: np.ndarray, seed: int) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=SR)
        stream.bit_rate = 32_000
        stream.layout = "mono"
        pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
        frame_size = 1152
        for start in range(0, pcm.size, frame_size):
            chunk = pcm[start : start + frame_size]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
            frame.sample_rate = SR
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue(), "mp3"


def clean(x: np.ndarray, seed: int) -> tuple[bytes, str]:
    return _wav(x), "wav"


CONDITIONS: dict[str, Callable[[np.ndarray, int], tuple[bytes, str]]] = {
    "clean": clean,
    "short": short,
    "tel8k": tel8k,
    "noise10": noise10,
    "mp3_32k": mp3_32k,
}


def build(manifest: Path, root: Path, out: Path) -> dict[str, Path]:
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    written: dict[str, Path] = {}
    for name, degrade in CONDITIONS.items():
        folder = out / name
        (folder / "enroll").mkdir(parents=True, exist_ok=True)
        (folder / "probe").mkdir(parents=True, exist_ok=True)
        out_rows = []
        for n, row in enumerate(rows):
            samples = _read(root / row["path"])
            stem = f"{n:03d}_{row['speaker']}"
            if row["role"].strip().lower() == "probe":
                data, ext = degrade(samples, n)
                rel = f"probe/{stem}.{ext}"
            else:
                data, rel = _wav(samples), f"enroll/{stem}.wav"
            (folder / rel).write_bytes(data)
            out_rows.append({**row, "path": rel})
        target = folder / "manifest.csv"
        with open(target, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(out_rows)
        written[name] = target
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=REPO / "bench/manifests/dev-speech.csv")
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared/data/dev-speech")
    parser.add_argument("--out", type=Path, default=REPO / "bench/out/conditions")
    args = parser.parse_args()
    for name, path in build(args.manifest, args.root, args.out).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
