"use strict";
// Live view: microphone → MediaRecorder (WebM/Opus, 250 ms chunks) → WebSocket /identify-live
// → "now speaking". Uses page.js's helpers ($, el, fill, score, seconds, KEY_STORAGE). A browser
// cannot set headers on a WebSocket, so the key goes in the `api_key` query parameter (the
// server scrubs it from its logs).

const LIVE_MIME = "audio/webm;codecs=opus";
const LIVE_TIMESLICE_MS = 250;
let liveSession = null;

function liveUrl() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = key ? `?api_key=${encodeURIComponent(key)}` : "";
  return `${scheme}//${location.host}/identify-live${query}`;
}

function showNow(event) {
  const now = $("live-now");
  const span = `${seconds(event.start)}–${seconds(event.end)} of the stream`;
  if (event.state === "speaker") {
    now.textContent = `Now speaking: ${event.name || event.speaker}`;
    now.className = "now match";
    $("live-detail").textContent =
      `score ${score(event.score)} (threshold ${score(event.threshold)}) · ${span}`;
  } else if (event.state === "unknown") {
    now.textContent = "Now speaking: someone not enrolled";
    now.className = "now";
    const best = event.candidates && event.candidates[0];
    $("live-detail").textContent = (best ? `closest: ${best.speaker} (${score(best.score)}, `
      + `threshold ${score(event.threshold)}) · ` : "") + span;
  } else {
    now.textContent = "Silence";
    now.className = "now silence";
    $("live-detail").textContent = span;
  }
}

function showSummary(summary) {
  const named = (summary.speakers || []).map((s) =>
    el("li", { text: `${s.speaker}: ${s.windows} window(s), first named at ${seconds(s.first_named_at)}` }));
  fill($("live-result"),
    el("p", { id: "live-summary",
      text: `Listened to ${seconds(summary.duration_s)}; ${summary.windows} window(s) decided`
        + (summary.dropped_windows ? `, ${summary.dropped_windows} skipped (the server was behind)` : "")
        + "." }),
    named.length ? el("ul", {}, ...named) : el("p", { class: "hint", text: "Nobody enrolled was heard." }));
}

function liveError(text) {
  fill($("live-result"), el("p", { class: "error", role: "alert", text }));
}

function resetLiveButton() {
  const button = $("live-toggle");
  button.textContent = "Start listening";
  button.setAttribute("aria-pressed", "false");
  button.disabled = false;
}

async function startLive() {
  if (!window.MediaRecorder || !MediaRecorder.isTypeSupported(LIVE_MIME)) {
    liveError("This browser cannot record WebM/Opus (use Chrome, Edge or Firefox).");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    liveError(`The microphone is not available: ${err.message}`);
    return;
  }
  fill($("live-result"));
  $("live-now").textContent = "Connecting…";
  $("live-now").className = "now silence";
  $("live-detail").textContent = "";
  const socket = new WebSocket(liveUrl());
  const recorder = new MediaRecorder(stream, { mimeType: LIVE_MIME });
  const session = { socket, recorder, stream, failed: false };
  liveSession = session;
  const button = $("live-toggle");
  button.textContent = "Stop";
  button.setAttribute("aria-pressed", "true");

  recorder.ondataavailable = (e) => {
    if (e.data.size && socket.readyState === WebSocket.OPEN) socket.send(e.data);
  };
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    // After the last chunk: the server analyses what is left, sends its summary and closes.
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "stop" }));
  };
  socket.onopen = () => {
    const language = $("live-language").value.trim();
    socket.send(JSON.stringify({ type: "start", format: "webm", ...(language ? { language } : {}) }));
  };
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "ready") {
      $("live-now").textContent = "Listening…";
      recorder.start(LIVE_TIMESLICE_MS);
    } else if (event.type === "speaking") {
      showNow(event);
    } else if (event.type === "busy") {
      $("live-detail").textContent = "The server is busy: a moment was skipped.";
    } else if (event.type === "error") {
      session.failed = true;
      liveError(`${event.error.message} (${event.error.code})`);
    } else if (event.type === "summary") {
      showSummary(event);
    }
  };
  socket.onclose = (e) => {
    if (recorder.state !== "inactive") recorder.stop();
    stream.getTracks().forEach((t) => t.stop());
    if (e.code === 1006 && !session.failed) {
      // The handshake was refused (a browser is not told why) or the connection dropped.
      liveError("Could not connect to the live service: check the API key, or retry later "
        + "(the number of live sessions is limited).");
    }
    if (!$("live-result").textContent) $("live-now").textContent = "";
    if (liveSession === session) liveSession = null;
    resetLiveButton();
  };
}

function stopLive() {
  const session = liveSession;
  if (!session) return;
  $("live-toggle").disabled = true;
  if (session.recorder.state !== "inactive") session.recorder.stop();
  else if (session.socket.readyState === WebSocket.OPEN) session.socket.send(JSON.stringify({ type: "stop" }));
  else session.socket.close();
}

document.addEventListener("DOMContentLoaded", () => {
  $("live-toggle").addEventListener("click", () => (liveSession ? stopLive() : startLive()));
});
