"""A real WebSocket client for ``/identify-live`` (the ``websockets`` library, sync API), and
the audio a browser would send: s16le frames and MediaRecorder-like WebM/Opus chunks made by
PyAV's own Opus encoder."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

SR = 16_000


@dataclass
class LiveRun:
    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    @property
    def speaking(self) -> list[dict[str, Any]]:
        return self.of_type("speaking")


def s16_frames(samples: np.ndarray, frame_s: float = 0.1) -> list[bytes]:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    step = round(frame_s * SR) * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def webm_opus_chunks(samples: np.ndarray, chunk_bytes: int = 2000) -> list[bytes]:
    """One WebM/Opus stream (48 kHz, mono, as Chrome's MediaRecorder makes) cut in chunks:
    the container header is in the first one only."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48_000)
        stream.layout = "mono"
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48_000)
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        frames: list[av.AudioFrame | None] = []
        for lo in range(0, pcm.shape[0], 1600):
            part = pcm[None, lo : lo + 1600]
            frame = av.AudioFrame.from_ndarray(part, format="s16", layout="mono")
            frame.sample_rate = SR
            frames.append(frame)
        frames.append(None)
        for frame in frames:
            for out in resampler.resample(frame):
                for packet in stream.encode(out):
                    container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    data = buf.getvalue()
    return [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]


def run_live(
    address: str,
    frames: list[bytes],
    start: dict[str, Any] | None = None,
    *,
    speed: float = 4.0,
    frame_s: float = 0.1,
    headers: dict[str, str] | None = None,
    query: str = "",
    stop: bool = True,
    linger_s: float = 0.0,
) -> LiveRun:
    """Stream ``frames`` (each ``frame_s`` of audio) at ``speed`` × real time, send stop, and
    collect every event until the server closes."""
    run = LiveRun()
    url = f"ws://{address}/identify-live{query}"
    with connect(url, additional_headers=headers or {}, max_size=None, open_timeout=10) as ws:
        ws.send(json.dumps(start if start is not None else {"type": "start"}))
        run.events.append(json.loads(ws.recv(timeout=10)))
        began = time.monotonic()
        try:
            for n, frame in enumerate(frames):
                ws.send(frame)
                pause = began + (n + 1) * frame_s / speed - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                while True:  # collect what has arrived without waiting
                    try:
                        run.events.append(json.loads(ws.recv(timeout=0)))
                    except TimeoutError:
                        break
            time.sleep(linger_s)
            if stop:
                ws.send(json.dumps({"type": "stop"}))
        except ConnectionClosed:
            pass
        try:
            for _ in range(10_000):  # bounded: the server closes after its summary
                run.events.append(json.loads(ws.recv(timeout=30)))
        except ConnectionClosed as closed:
            run.close_code = closed.rcvd.code if closed.rcvd else None
            run.close_reason = closed.rcvd.reason if closed.rcvd else ""
    return run
