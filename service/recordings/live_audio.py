"""Live audio in: incremental decoders, the rolling sample window, and the input-rate limit.

A live session receives audio as a stream of WebSocket messages and must never hold more than
it needs. This module keeps that bounded:

* :class:`SampleWindow` keeps only the newest ``window_s`` of 16 kHz samples (a ring) and the
  stream time (samples received in all). Older audio is gone: an event is decided on the last
  window only.
* :class:`PcmDecoder`: raw little-endian PCM (``s16le`` or ``f32le``), any rate from 8 to 48 kHz,
  mono; converted and, unless already 16 kHz, resampled by libswresample (PyAV) as it arrives.
  A sample split across two messages is kept for the next one.
* :class:`WebmOpusDecoder`: what a browser's ``MediaRecorder`` produces
  (``audio/webm;codecs=opus``): one WebM stream cut into chunks, the container header only in
  the first. FFmpeg's matroska demuxer (PyAV) reads it through a blocking pipe in a thread of
  its own, so each chunk is decoded as soon as it arrives, without ever re-reading the stream.
  The bytes waiting in the pipe are capped (``max_buffer_bytes``): a client that sends faster
  than Opus decodes is refused, never buffered without end.
* :class:`RateLimit`: a token bucket on input bytes (``max_bytes_per_s``, burst of one second).

No FastAPI here: ``service.api.routes.live`` owns the socket.
"""

from __future__ import annotations

import threading
import time

import av
import numpy as np

from service.core import errors
from service.pipeline.audio import TARGET_SAMPLE_RATE

FORMAT_S16 = "s16le"
FORMAT_F32 = "f32le"
FORMAT_WEBM = "webm"
FORMATS = (FORMAT_S16, FORMAT_F32, FORMAT_WEBM)
MIN_RATE, MAX_RATE = 8_000, 48_000
#: How much of the first WebM chunk FFmpeg reads before it knows the stream (its header is a
#: few hundred bytes; the 32 KiB the upload decoder uses would delay the first samples).
WEBM_PROBE_BYTES = 4096


class SampleWindow:
    """The newest ``capacity`` samples of the stream, and how many were received in all.

    Written by the decoder (the event loop for PCM, the demuxer thread for WebM), read by the
    analysis task: one lock."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ring = np.zeros(capacity, dtype=np.float32)
        self._total = 0
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return self._total

    def push(self, samples: np.ndarray) -> None:
        if samples.size == 0:
            return
        pushed = samples.size  # the stream advances by all of it, even past the capacity
        samples = samples[-self.capacity :]
        with self._lock:
            n = samples.size
            start = (self._total + pushed - n) % self.capacity
            first = min(n, self.capacity - start)
            self._ring[start : start + first] = samples[:first]
            self._ring[: n - first] = samples[first:]
            self._total += pushed

    def latest(self, seconds: float) -> tuple[np.ndarray, int]:
        """The last ``seconds`` (at most the capacity) and the stream position it ends at."""
        with self._lock:
            n = min(round(seconds * TARGET_SAMPLE_RATE), self.capacity, self._total)
            end = self._total
            idx = (np.arange(end - n, end) % self.capacity) if n else np.zeros(0, dtype=np.int64)
            return self._ring[idx].copy(), end


class Resampler:
    """Mono float32 at ``rate`` → 16 kHz, streaming (libswresample keeps the filter state)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._swr = (
            None
            if rate == TARGET_SAMPLE_RATE
            else av.AudioResampler(format="flt", layout="mono", rate=TARGET_SAMPLE_RATE)
        )

    def __call__(self, mono: np.ndarray) -> np.ndarray:
        if self._swr is None or mono.size == 0:
            return mono
        frame = av.AudioFrame.from_ndarray(mono[None, :], format="flt", layout="mono")
        frame.sample_rate = self.rate
        out = [f.to_ndarray().reshape(-1) for f in self._swr.resample(frame)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


class PcmDecoder:
    """Raw mono PCM messages → 16 kHz float32 samples into ``window``."""

    def __init__(self, fmt: str, sample_rate: int, window: SampleWindow) -> None:
        self.width = 2 if fmt == FORMAT_S16 else 4
        self.fmt = fmt
        self.window = window
        self.resample = Resampler(sample_rate)
        self._carry = b""  # an incomplete sample from the previous message

    def feed(self, data: bytes) -> None:
        data = self._carry + data
        usable = len(data) - len(data) % self.width
        self._carry = data[usable:]
        if self.fmt == FORMAT_S16:
            mono = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        else:
            mono = np.frombuffer(data[:usable], dtype="<f4").astype(np.float32)
            if not np.isfinite(mono).all():
                raise errors.UndecodableAudio(
                    "The audio contains invalid (NaN or infinite) samples.",
                    details={"reason": "non-finite samples"},
                )
            np.clip(mono, -1.0, 1.0, out=mono)
        self.window.push(self.resample(mono))

    def close(self) -> None:
        """Nothing runs in the background."""

    @property
    def failure(self) -> errors.ServiceError | None:
        return None


class _Pipe:
    """A blocking byte pipe: the event loop writes chunks, FFmpeg's reader thread reads them."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._cv = threading.Condition()
        self._closed = False

    def write(self, data: bytes) -> None:
        with self._cv:
            if len(self._buf) + len(data) > self.max_bytes:
                raise errors.PayloadTooLarge(
                    f"more than {self.max_bytes} bytes of WebM are waiting to be decoded: "
                    "send at most real-time audio",
                    details={"max_buffer_bytes": self.max_bytes},
                )
            self._buf += data
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes; blocks until some arrive; b"" once closed and drained (EOF)."""
        with self._cv:
            while not self._buf and not self._closed:
                self._cv.wait()
            n = len(self._buf) if n < 0 else n
            out = bytes(self._buf[:n])
            del self._buf[:n]
            return out


class WebmOpusDecoder:
    """MediaRecorder's WebM/Opus chunks → 16 kHz float32 samples into ``window``, decoded in a
    thread of its own as they arrive. A decoding failure is kept in :attr:`failure` (the
    session reports it and closes)."""

    def __init__(self, window: SampleWindow, max_buffer_bytes: int) -> None:
        self.window = window
        self._pipe = _Pipe(max_buffer_bytes)
        self.failure: errors.ServiceError | None = None
        self._thread = threading.Thread(target=self._run, name="live-webm", daemon=True)
        self._thread.start()

    def feed(self, data: bytes) -> None:
        if self.failure is not None:
            raise self.failure
        self._pipe.write(data)

    def close(self) -> None:
        """End of stream: the thread decodes what is left and stops."""
        self._pipe.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            with av.open(
                self._pipe, mode="r", format="webm", options={"probesize": str(WEBM_PROBE_BYTES)}
            ) as container:
                if not container.streams.audio:
                    raise errors.UndecodableAudio(
                        "The WebM stream has no audio track.", details={"reason": "no audio"}
                    )
                swr = av.AudioResampler(format="flt", layout="mono", rate=TARGET_SAMPLE_RATE)
                for frame in container.decode(audio=0):
                    for out in swr.resample(frame):
                        self.window.push(out.to_ndarray().reshape(-1))
        except errors.ServiceError as exc:
            self.failure = exc
        except (av.FFmpegError, ValueError, OSError) as exc:
            self.failure = errors.UndecodableAudio(
                "The stream is not WebM/Opus audio that FFmpeg can decode.",
                details={"reason": type(exc).__name__},
            )
        finally:
            self._pipe.close()  # a writer after a failure must not fill a pipe nobody reads


class RateLimit:
    """Token bucket on input bytes: ``rate`` per second, at most one second's worth saved up."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._tokens = float(rate)
        self._at = time.monotonic()

    def take(self, n: int) -> None:
        now = time.monotonic()
        self._tokens = min(float(self.rate), self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= n
        if self._tokens < 0:
            raise errors.RateLimited(
                f"audio arrives faster than {self.rate} bytes per second",
                details={"max_bytes_per_s": self.rate},
            )
