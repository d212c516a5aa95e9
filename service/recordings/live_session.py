"""One live session: the protocol, its limits, and the two tasks that run it.

Protocol (text frames are JSON; the socket is ``service.api.routes.live``'s):

* client → ``{"type": "start", "format": "s16le"|"f32le"|"webm", "sample_rate": 16000,
  "language": "en", "top_n": 3}`` (all optional but ``type``), then binary frames of audio,
  then ``{"type": "stop"}`` (or just closes);
* server → ``{"type": "ready", …}``, then one ``speaking`` event per ``hop_s`` of stream time
  (``service.recordings.live.window_event``), ``busy`` when the inference queue refused a
  window, and on the way out ``error`` (a refusal: the service's error body) and ``summary``.
  Close code 1000 after a stop; 4000 + the HTTP status of the error otherwise (4408 idle or too
  long, 4413 frame or buffer too large, 4415 undecodable, 4422 bad message, 4429 too fast).

Two tasks share a :class:`~service.recordings.live_audio.SampleWindow`: the *receiver* (reads
frames, checks sizes and the rate, feeds the decoder) and the *analyser* (every ``hop_s`` of
stream time: the newest window through the inference queue, then the index search). The
analyser never queues work: while one window is being analysed, the audio that arrives only
moves the window on; the windows it skipped are counted as dropped. When the queue refuses
(``Overloaded``), the window is answered with ``busy``. Memory per session is the window ring,
one frame and the capped WebM pipe, whatever the client does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio

from service.core import errors
from service.core.settings import LiveSettings
from service.pipeline.audio import TARGET_SAMPLE_RATE
from service.recordings.live import LiveAnalyser, LiveOptions, LiveTally, parse_start, window_event
from service.recordings.live_audio import (
    FORMAT_WEBM,
    PcmDecoder,
    RateLimit,
    SampleWindow,
    WebmOpusDecoder,
)
from service.search.voicesearch import VoiceSearch

CLOSE_NORMAL = 1000
#: How often the analyser looks for new audio (WebM samples arrive from the decoder thread).
POLL_S = 0.02
#: Longest wait for the WebM decoder to finish the last chunks after a stop.
DRAIN_S = 2.0

log = logging.getLogger(__name__)


def close_code(error: errors.ServiceError) -> int:
    """4000 + the error's HTTP status (4408, 4413, 4415, 4422, 4429, 4503…)."""
    return 4000 + error.status_code


class ClientGone(Exception):
    """The client closed the socket (or the connection dropped)."""


class Transport(Protocol):
    async def receive(self) -> bytes | str:
        """The next message; raises :class:`ClientGone` when the client has gone."""
        ...

    async def send(self, event: dict[str, Any]) -> None:
        """One JSON event; raises :class:`ClientGone` when the client has gone."""
        ...


class LiveSession:
    def __init__(
        self,
        voicesearch: VoiceSearch,
        settings: LiveSettings,
        transport: Transport,
        *,
        max_top_n: int,
    ) -> None:
        self.voicesearch = voicesearch
        self.settings = settings
        self.transport = transport
        self.max_top_n = max_top_n
        self.window = SampleWindow(round(settings.window_s * TARGET_SAMPLE_RATE))
        self.hop = round(settings.hop_s * TARGET_SAMPLE_RATE)
        self.tally = LiveTally()
        self.analyser: LiveAnalyser | None = None
        self.decoder: PcmDecoder | WebmOpusDecoder | None = None
        self.failure: errors.ServiceError | None = None
        self.stopped = False  # the client said stop: analyse what is left, then end
        self.gone = False  # the client closed the socket: end now
        self.last_end = 0  # stream position the last analysed window ended at
        self.started = time.monotonic()

    # --- the whole session --------------------------------------------------------------------
    async def run(self) -> tuple[int, str]:
        """Run the session to its end; the close code and reason for the socket."""
        reason = "stopped"
        try:
            options = parse_start(self.decode_text(await self.receive()), self.max_top_n)
            await self.begin(options)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.guarded, self.receiver, tg.cancel_scope)
                tg.start_soon(self.guarded, self.analyse_loop, tg.cancel_scope)
        except errors.ServiceError as exc:
            self.failure = exc
        except ClientGone:
            self.gone = True
        finally:
            if self.decoder is not None:
                self.decoder.close()
        if self.gone:
            return CLOSE_NORMAL, "client gone"
        try:
            if self.failure is not None:
                reason = self.failure.code
                await self.transport.send({"type": "error", **self.failure.to_body()})
            if self.analyser is not None:
                routed = self.analyser.routed
                await self.transport.send(self.tally.summary(self.window.total, reason, routed))
        except ClientGone:
            pass
        if self.failure is not None:
            # A close reason is at most 123 bytes of UTF-8.
            return close_code(self.failure), self.failure.message.encode()[:120].decode(
                errors="ignore"
            )
        return CLOSE_NORMAL, reason

    async def guarded(self, task: Callable[[], Awaitable[None]], scope: anyio.CancelScope) -> None:
        """Run one of the two tasks; a failure or the client gone ends both (a stop ends the
        receiver only: the analyser finishes the audio received)."""
        try:
            await task()
        except errors.ServiceError as exc:
            self.failure = self.failure or exc
            scope.cancel()
        except ClientGone:
            self.gone = True
            scope.cancel()
        except Exception:
            # A bug or a model failure: logged with its traceback, and the client still gets
            # an error event and a close code instead of a bare 1011.
            log.exception("live session failed")
            self.failure = self.failure or errors.InternalError("the live session failed")
            scope.cancel()

    async def begin(self, options: LiveOptions) -> None:
        self.analyser = LiveAnalyser(self.voicesearch, self.settings, options)
        # Route now when no detection is needed (a language given, or language ID off): an
        # unknown space or a required language is refused at the start, not mid-stream.
        await anyio.to_thread.run_sync(self.analyser.route_early)
        if options.format == FORMAT_WEBM:
            self.decoder = WebmOpusDecoder(self.window, self.settings.max_buffer_bytes)
        else:
            self.decoder = PcmDecoder(options.format, options.sample_rate, self.window)
        s = self.settings
        await self.transport.send(
            {
                "type": "ready",
                "format": options.format,
                "sample_rate": options.sample_rate,
                "language": options.language,
                "top_n": options.top_n,
                "window_s": s.window_s,
                "hop_s": s.hop_s,
                "min_speech_s": s.min_speech_s,
                "max_session_s": s.max_session_s,
                "idle_timeout_s": s.idle_timeout_s,
                "max_frame_bytes": s.max_frame_bytes,
                "max_bytes_per_s": s.max_bytes_per_s,
            }
        )

    # --- receiving ------------------------------------------------------------------------------
    async def receive(self) -> bytes | str:
        """The next message within the idle timeout and the session's length."""
        left = self.settings.max_session_s - (time.monotonic() - self.started)
        idle = self.settings.idle_timeout_s
        with anyio.move_on_after(max(0.0, min(idle, left))):
            return await self.transport.receive()
        if idle < left:
            raise errors.IdleTimeout(
                f"nothing received for {idle:g} s", details={"idle_timeout_s": idle}
            )
        limit = self.settings.max_session_s
        raise errors.SessionTooLong(
            f"the session reached its maximum length of {limit:g} s",
            details={"max_session_s": limit},
        )

    def decode_text(self, message: bytes | str) -> Any:
        if not isinstance(message, str):
            raise errors.InvalidInput(
                "expected a JSON text message here, got binary", details={"expected": "text"}
            )
        if len(message) > 4096:
            raise errors.InvalidInput("control messages are at most 4096 characters")
        try:
            return json.loads(message)
        except ValueError:
            raise errors.InvalidInput("a text message must be JSON") from None

    async def receiver(self) -> None:
        assert self.decoder is not None
        rate = RateLimit(self.settings.max_bytes_per_s)
        limit = self.settings.max_frame_bytes
        while True:
            message = await self.receive()
            if isinstance(message, str):
                command = self.decode_text(message)
                if isinstance(command, dict) and command.get("type") == "stop":
                    self.stopped = True
                    return
                raise errors.InvalidInput(
                    'the only message after start is {"type": "stop"}',
                    details={"expected": "stop"},
                )
            if len(message) > limit:
                raise errors.PayloadTooLarge(
                    f"a frame of {len(message)} bytes is larger than {limit}",
                    details={"max_frame_bytes": limit, "frame_bytes": len(message)},
                )
            rate.take(len(message))
            self.decoder.feed(message)

    # --- analysing ------------------------------------------------------------------------------
    async def analyse_loop(self) -> None:
        assert self.decoder is not None
        due = self.hop
        drained = False
        while True:
            if self.decoder.failure is not None:
                raise self.decoder.failure
            total = self.window.total
            if total >= due:
                due = await self.analyse_newest(due)
                continue
            if self.stopped:
                if not drained and isinstance(self.decoder, WebmOpusDecoder):
                    # The last chunks may still be in the decoder: let it finish them.
                    self.decoder.close()
                    await anyio.to_thread.run_sync(self.decoder.join, DRAIN_S)
                    drained = True
                    continue
                if total > self.last_end:  # audio since the last event: one more
                    await self.analyse_newest(total)
                return
            await anyio.sleep(POLL_S)

    async def analyse_newest(self, due: int) -> int:
        """Analyse the newest window; the stream position the next event is due at."""
        assert self.analyser is not None
        samples, end = self.window.latest(self.settings.window_s)
        self.last_end = end
        # Events stay on the grid of hops: the hops this one arrived too late for (the analysis
        # of an earlier window was still running) are dropped, counted, never queued.
        skipped = max(0, (end - due) // self.hop)
        self.tally.dropped += skipped
        next_due = due + (skipped + 1) * self.hop
        queue = self.voicesearch.pipeline.queue
        started = time.perf_counter()
        try:
            async with queue.admitted():
                embedded = await self.voicesearch.pipeline.infer(self.analyser.embed, samples)
        except errors.Overloaded as busy:
            self.tally.busy += 1
            await self.transport.send(
                {
                    "type": "busy",
                    "end": round(end / TARGET_SAMPLE_RATE, 3),
                    "retry_after_s": int(busy.headers.get("Retry-After", "1")),
                }
            )
            return next_due
        result = None
        if embedded.vector is not None:
            result = await anyio.to_thread.run_sync(self.analyser.decide, embedded)
        event = window_event(
            end - samples.shape[0],
            end,
            embedded.speech_s,
            result,
            time.perf_counter() - started,
            embedded.snr_db,
        )
        self.tally.add(event)
        await self.transport.send(event)
        return next_due
