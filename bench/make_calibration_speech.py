"""Make the INT8 calibration speech that ships in the package (a development-time tool).

    .venv/bin/python -m bench.make_calibration_speech  # needs espeak-ng (apt-get install espeak-ng)

Writes ``service/pipeline/backends/calibration_speech/NN-<voice>.flac``: five sentences spoken by
espeak-ng (five voices, three languages), decoded and resampled to 16 kHz mono by the service's
own decoder, stored as 16-bit FLAC. Synthesised here, so the project ships no recording of
anyone. Measured (bench/RESULTS.md): INT8 calibrated on it stays at cosine >= 0.997 to torch on
every dev clip and degraded condition, within ~0.001 of calibrating on real speech; noise and
tones instead were clearly worse (cosine down to 0.988).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from service.pipeline.audio import decode_audio
from service.pipeline.backends.calibration import DEFAULT_DIR

#: (espeak-ng voice, sentence): mixed voices, languages and phonetic content.
LINES = (
    ("en-us+m3", "The quick brown fox jumps over the lazy dog near the quiet river bank."),
    ("en-gb+f2", "Please call Stella and ask her to bring these things with her from the store."),
    ("en-us+f4", "Six spoons of fresh snow peas, five thick slabs of blue cheese, and a snack."),
    ("fr+m2", "Le petit chat dort tranquillement sous la table de la cuisine depuis ce matin."),
    ("de+f3", "Heute morgen habe ich einen langen Spaziergang durch den Wald gemacht."),
)


def main() -> None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    for old in DEFAULT_DIR.glob("*.flac"):
        old.unlink()
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for n, (voice, text) in enumerate(LINES):
            wav = Path(tmp) / f"{n}.wav"
            subprocess.run([exe, "-v", voice, "-s", "150", "-w", str(wav), text], check=True)
            samples = decode_audio(wav.read_bytes(), max_duration_s=60, min_duration_s=0).samples
            target = DEFAULT_DIR / f"{n:02d}-{voice.replace('+', '-')}.flac"
            buffer = io.BytesIO()
            sf.write(buffer, np.clip(samples, -1, 1), 16_000, format="FLAC", subtype="PCM_16")
            target.write_bytes(buffer.getvalue())
            total += samples.size / 16_000
            print(f"{target.name}: {samples.size / 16_000:.2f} s, {target.stat().st_size} bytes")
    print(f"{total:.1f} s of speech; {version}")


if __name__ == "__main__":
    main()
