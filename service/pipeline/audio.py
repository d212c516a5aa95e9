"""Uploaded bytes → 16 kHz mono float32, or a :class:`~service.core.errors.ServiceError`.

Decoding is FFmpeg's (PyAV, bundled in the wheel): every container and codec it knows within
:data:`ALLOWED_DEMUXERS`, no hand-written codec code here. What this module adds:

* **Safety for untrusted input.** FFmpeg is told not to open anything but the upload itself
  (``protocol_whitelist``): some demuxers (ffconcat, HLS playlists, MP4 external data
  references) would otherwise read other files on the server. Only audio-ish demuxers are
  probed (``format_whitelist``), which keeps FFmpeg's rarely used parsers out of reach. Every
  FFmpeg/NumPy failure becomes :class:`UndecodableAudio`; nothing raw escapes.
* **A duration cap enforced while decoding.** The running total is checked after every frame,
  so a few kilobytes that decode to hours (FLAC of silence, say) stop at the cap, never filling
  memory.
* **Downmix in NumPy, resample in libswresample.** Channels are averaged here rather than by
  swresample, because FFmpeg refuses to rematrix layouts it has no map for (e.g. 8 unnamed
  channels in a WAV). The mono stream is then resampled to 16 kHz by swresample in chunks.
  Measured with the real ECAPA model: real speech upsampled to 22.05–48 kHz and decoded back
  embeds with cosine ≥ 0.998 to the 16 kHz original (0.9995 on spk1_snt1, where swresample's
  default settings give 0.998; see :data:`_SWR_OPTIONS`), so no torch resampler is needed.

Whether the audio holds speech is not decided here: see ``service.pipeline.speech`` (energy
check) and ``service.pipeline.quality`` (VAD).
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from functools import cached_property

import av
import numpy as np

from service.core.errors import (
    AudioTooLong,
    AudioTooShort,
    EmptyAudio,
    ServiceError,
    UndecodableAudio,
)

logger = logging.getLogger(__name__)

TARGET_SAMPLE_RATE = 16_000

#: Demuxers FFmpeg may pick for an upload (its short names; "mov" covers mp4/m4a/3gp, "matroska"
#: covers webm). Extend here if users send something else FFmpeg can read.
ALLOWED_DEMUXERS: tuple[str, ...] = (
    "wav", "w64", "flac", "ogg", "mp3", "aac", "mov", "matroska", "nistsphere",
    "aiff", "caf", "au", "amr", "amrnb", "amrwb", "wv", "ape", "tta", "voc", "asf",
    "ac3", "eac3", "dts", "mpc", "mpc8", "avi",
)  # fmt: skip

_OPEN_OPTIONS = {
    # No nested I/O at all: the upload is the only input (see the module docstring).
    "protocol_whitelist": "none",
    "format_whitelist": ",".join(ALLOWED_DEMUXERS),
    # How much FFmpeg reads up front to identify the format and stream parameters. The 5 MB
    # default makes it read (and, for PCM, parse) most of a WAV before decoding starts: 13 ms of
    # a 5 s 48 kHz clip's 19. 32 KiB still identifies every accepted format, including MP3s
    # behind large ID3 cover art (FFmpeg skips ID3v2 when probing); the decoder reports the
    # real parameters on each frame anyway.
    "probesize": "32768",
}

# Plausibility limits on what a stream claims. 8 channels at 192 kHz (studio files) is well
# inside; beyond these it is a broken or hostile header, and answering 415 is kinder than
# trying.
_MAX_CHANNELS = 64
_MIN_SAMPLE_RATE = 1_000
_MAX_SAMPLE_RATE = 768_000

# swresample with a longer filter and a cutoff nearer Nyquist than its defaults (32 taps,
# cutoff 0.97). Measured, 48/44.1 kHz → 16 kHz: defaults are -7 dB at 7.8 kHz yet let 8.6 kHz
# through at -31 dB (aliased to 7.4 kHz); these are -1 dB at 7.8 kHz and ≤ -91 dB from 8.3 kHz
# up. ECAPA's filterbank spans 0–8 kHz, so the top band matters: real-speech embedding cosine
# to the 16 kHz original 0.9995 vs 0.998, at the same speed.
_SWR_OPTIONS = {"filter_size": "128", "cutoff": "0.99"}

# Native-rate samples gathered before each push to swresample: every push has a fixed cost
# (a filter-graph round trip), and PCM demuxers hand out tiny frames. ~0.1–0.5 s of audio.
_RESAMPLE_CHUNK = 16_384

# More undecodable packets than this *and* than good ones: the file is garbage, not a glitch.
_MAX_BAD_PACKETS = 10

# Integer sample formats: scale that maps the type's full range onto [-1, 1).
_INT_SCALE = {"s16": 1 / 2**15, "s32": 1 / 2**31, "s64": 1 / 2**63}


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    """Decoded audio, always 16 kHz mono float32, plus what the upload originally was.

    ``eq=False``: instances compare by identity (comparing arrays element-wise would be
    ambiguous); compare :attr:`sha256` for "same audio".
    """

    samples: np.ndarray  # float32, mono, 16 kHz, 1-D, C-contiguous, values in [-1, 1]
    source_sample_rate: int
    source_channels: int
    source_format: str  # container as FFmpeg names it, e.g. "wav", "mov,mp4,m4a,3gp,3g2,mj2"
    #: When ``samples`` is a part of the upload (the speech a VAD kept): the :attr:`sha256` of
    #: the whole decoded upload. None when ``samples`` is the decoded upload itself.
    trimmed_from: str | None = None

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / TARGET_SAMPLE_RATE

    @cached_property
    def sha256(self) -> str:
        """Hex sha256 of these samples: the same audio in any container hashes the same only if
        it decodes identically."""
        return hashlib.sha256(self.samples.tobytes()).hexdigest()

    @property
    def upload_sha256(self) -> str:
        """Hex sha256 of the decoded upload, before any trimming: identifies re-uploads of the
        same file whatever a VAD (or its version) keeps of it."""
        return self.trimmed_from or self.sha256

    def trimmed(self, samples: np.ndarray) -> DecodedAudio:
        """The same upload, keeping only ``samples`` (a part of it) to embed."""
        return DecodedAudio(
            samples,
            self.source_sample_rate,
            self.source_channels,
            self.source_format,
            trimmed_from=self.upload_sha256,
        )


def decode_audio(data: bytes, *, max_duration_s: float, min_duration_s: float) -> DecodedAudio:
    """Decode an upload to 16 kHz mono float32.

    Raises :class:`EmptyAudio` (0 bytes), :class:`UndecodableAudio` (not audio, corrupt, no audio
    stream, nothing decoded), :class:`AudioTooLong` (more than ``max_duration_s``, detected while
    decoding) or :class:`AudioTooShort` (less than ``min_duration_s``).

    A truncated file keeps whatever decoded before the damage: it is accepted if that is long
    enough, otherwise it is :class:`AudioTooShort` like any short clip.
    """
    if not data:
        raise EmptyAudio("The uploaded audio is empty (0 bytes).")
    try:
        audio = _decode(data, max_duration_s)
    except ServiceError:
        raise
    except Exception as exc:  # FFmpeg, NumPy or PyAV surprises: never let them escape raw.
        # FFmpeg errors are the upload's fault; anything else may be ours, so keep its traceback.
        logger.log(
            logging.INFO if isinstance(exc, av.FFmpegError) else logging.WARNING,
            "undecodable upload (%d bytes): %r",
            len(data),
            exc,
            exc_info=not isinstance(exc, av.FFmpegError),
        )
        raise UndecodableAudio(
            "The upload could not be decoded as audio.",
            details={"reason": _reason(exc)},
        ) from exc

    if audio.duration_s < min_duration_s:
        raise AudioTooShort(
            f"The audio is {audio.duration_s:.2f} s long; at least {min_duration_s:g} s "
            "is required.",
            details={
                "duration_s": round(audio.duration_s, 3),
                "min_duration_s": min_duration_s,
            },
        )
    return audio


def _reason(exc: Exception) -> str:
    """A short, client-safe description of an FFmpeg failure (no paths, no stack)."""
    if isinstance(exc, av.FFmpegError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


def _decode(data: bytes, max_duration_s: float) -> DecodedAudio:
    try:
        container = av.open(
            io.BytesIO(data),
            mode="r",
            container_options=_OPEN_OPTIONS,
            # Tags are not our business, and Latin-1 titles in WAV INFO chunks are common:
            # PyAV's strict UTF-8 decoding of them would reject a perfectly good recording.
            metadata_errors="ignore",
        )
    except av.error.EOFError as exc:
        raise UndecodableAudio(
            "The file ends before its audio starts (truncated upload?).",
            details={"reason": "truncated"},
        ) from exc
    except av.FFmpegError as exc:
        raise UndecodableAudio(
            "The upload is not an audio file in a recognised format.",
            details={"reason": "unrecognised format", "ffmpeg_error": _reason(exc)},
        ) from exc

    with container:
        if not container.streams.audio:
            raise UndecodableAudio(
                f"The file ({container.format.name}) contains no audio stream.",
                details={"reason": "no audio stream"},
            )
        stream = container.streams.audio[0]
        if stream.codec_context is None:  # FFmpeg has no decoder for this codec
            raise UndecodableAudio(
                "The audio codec is not supported.", details={"reason": "unsupported codec"}
            )
        # What the header claims (0 = not stated); frames are checked again below.
        _check_plausible(stream.codec_context.channels, stream.codec_context.sample_rate or None)

        packer = _PlanarPacker()
        converter = _MonoResampler()
        source_s = 0.0
        source_rate = source_channels = 0
        good_packets = bad_packets = 0
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError as exc:
                # Container damage (typically a truncated upload): keep what decoded so far.
                logger.info("demuxing stopped early: %r", exc)
                break
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                # A corrupt packet is a glitch decoders recover from (ffmpeg's CLI skips it
                # too); a file that is mostly corrupt packets is not audio.
                bad_packets += 1
                if bad_packets > _MAX_BAD_PACKETS and bad_packets > good_packets:
                    raise UndecodableAudio(
                        "The audio stream is corrupt.",
                        details={
                            "reason": "corrupt stream",
                            "ffmpeg_error": _reason(exc),
                            "bad_packets": bad_packets,
                        },
                    ) from exc
                continue
            good_packets += 1
            for frame in frames:
                if frame.samples == 0:
                    continue
                channels = len(frame.layout.channels)
                _check_plausible(channels, frame.sample_rate)
                if not source_rate:
                    source_rate, source_channels = frame.sample_rate, channels
                # The cap is checked on every frame, before the frame is kept: memory and time
                # stay bounded by max_duration_s whatever the file claims or compresses to.
                # (1e-6: float accumulation must not reject a clip of exactly the maximum.)
                source_s += frame.samples / frame.sample_rate
                if source_s > max_duration_s + 1e-6:
                    raise AudioTooLong(
                        f"The audio is longer than the {max_duration_s:g} s limit.",
                        details={"max_duration_s": max_duration_s},
                    )
                for safe in packer.pack(frame):
                    converter.push(_to_mono(safe), safe.sample_rate)
        for safe in packer.flush():
            converter.push(_to_mono(safe), safe.sample_rate)

        samples = converter.finish()
        if samples.size == 0:
            raise UndecodableAudio(
                "The file decodes to no audio samples.",
                details={"reason": "no samples decoded"},
            )
        return DecodedAudio(
            samples=samples,
            source_sample_rate=source_rate,
            source_channels=source_channels,
            source_format=container.format.name,
        )


def _check_plausible(channels: int, sample_rate: int | None) -> None:
    """Refuse channel counts / rates no real recording has (``None``: rate not known yet)."""
    if not 0 <= channels <= _MAX_CHANNELS or (
        sample_rate is not None and not _MIN_SAMPLE_RATE <= sample_rate <= _MAX_SAMPLE_RATE
    ):
        raise UndecodableAudio(
            f"Unsupported audio stream: {channels} channels at {sample_rate} Hz "
            f"(up to {_MAX_CHANNELS} channels and {_MIN_SAMPLE_RATE}–{_MAX_SAMPLE_RATE} Hz).",
            details={"reason": "unsupported stream parameters"},
        )


def _to_mono(frame: av.AudioFrame) -> np.ndarray:
    """One decoded frame (any sample format, any channel count) → mono float32 in [-1, 1]."""
    fmt = frame.format
    channels = len(frame.layout.channels)
    if channels == 0:
        raise UndecodableAudio(
            "The audio stream has no channels.", details={"reason": "no channels"}
        )
    array = frame.to_ndarray()
    # Planar formats come as (channels, samples); packed ones as (1, samples * channels).
    if not fmt.is_planar:
        array = array.reshape(-1, channels).T
    mono = array[0].astype(np.float32) if channels == 1 else array.mean(axis=0, dtype=np.float32)
    name = fmt.name.rstrip("p")  # "s16p" → "s16"
    if name in ("flt", "dbl"):
        if not np.isfinite(mono).all():
            # Float files can hold NaN/Inf; one would poison every embedding made from it.
            raise UndecodableAudio(
                "The audio contains invalid (NaN or infinite) samples.",
                details={"reason": "non-finite samples"},
            )
        return mono
    if name == "u8":
        return (mono - np.float32(128.0)) * np.float32(1 / 128)
    if name in _INT_SCALE:
        return mono * np.float32(_INT_SCALE[name])
    raise UndecodableAudio(  # FFmpeg has no other audio sample formats today
        f"Unsupported sample format {fmt.name}.", details={"reason": "unsupported sample format"}
    )


class _PlanarPacker:
    """Hands frames over to NumPy safely: works around a PyAV 18 crash.

    ``AudioFrame.planes`` (used by ``to_ndarray``) counts planes by walking
    ``frame->extended_data`` until a NULL pointer. With 8 or more *planar* channels there is no
    NULL after the last plane, so it reads past the array and dereferences garbage: a segfault
    that would kill the worker, triggered by any 8-channel Opus/AAC/Vorbis upload. Such frames
    are converted to the packed (interleaved) variant of their sample format inside FFmpeg
    first: one plane, safe to read. Fewer channels, or packed formats, pass through untouched.
    """

    _MIN_UNSAFE_CHANNELS = 8

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None

    def pack(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        if not frame.format.is_planar or len(frame.layout.channels) < self._MIN_UNSAFE_CHANNELS:
            return [frame]
        if self._resampler is None:
            # Same layout and rate: a pure sample-format conversion, no rematrix or resampling.
            self._resampler = av.AudioResampler(
                format=frame.format.packed, layout=frame.layout, rate=frame.sample_rate
            )
        return self._resampler.resample(frame)

    def flush(self) -> list[av.AudioFrame]:
        return self._resampler.resample(None) if self._resampler is not None else []


class _MonoResampler:
    """Streams mono float32 chunks at any (possibly changing) rate into 16 kHz output."""

    def __init__(self) -> None:
        self._out: list[np.ndarray] = []
        self._pending: list[np.ndarray] = []
        self._pending_len = 0
        self._rate = 0
        self._resampler: av.AudioResampler | None = None

    def push(self, mono: np.ndarray, rate: int) -> None:
        if rate != self._rate:
            # A rate change mid-stream (concatenated MP3s do this): finish the old stream.
            self._flush(final=True)
            self._rate = rate
            self._resampler = None
        self._pending.append(mono)
        self._pending_len += mono.shape[0]
        if self._pending_len >= _RESAMPLE_CHUNK:
            self._flush(final=False)

    def finish(self) -> np.ndarray:
        self._flush(final=True)
        if not self._out:
            return np.zeros(0, dtype=np.float32)
        samples = np.concatenate(self._out) if len(self._out) > 1 else self._out[0]
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        # The resampling filter rings past full scale on clipped input, and float sources may
        # exceed ±1 anyway. Scale down instead of clipping: gain is irrelevant to speaker
        # embeddings, clipping distortion is not.
        peak = float(np.max(np.abs(samples))) if samples.size else 0.0
        if peak > 1.0:
            samples *= np.float32(1.0 / peak)
        return samples

    def _flush(self, *, final: bool) -> None:
        if self._pending:
            chunk = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending, self._pending_len = [], 0
            if self._rate == TARGET_SAMPLE_RATE:
                self._out.append(chunk)  # already 16 kHz: nothing to resample
            else:
                self._resample(chunk)
        if final and self._resampler is not None:
            self._collect(self._resampler.resample(None))  # drain the filter's tail
            self._resampler = None

    def _resample(self, chunk: np.ndarray) -> None:
        if self._resampler is None:
            self._resampler = av.AudioResampler(
                format="flt", layout="mono", rate=TARGET_SAMPLE_RATE, options=_SWR_OPTIONS
            )
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(chunk, dtype=np.float32)[None, :], format="flt", layout="mono"
        )
        frame.sample_rate = self._rate
        self._collect(self._resampler.resample(frame))

    def _collect(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            self._out.append(frame.to_ndarray().reshape(-1))
