// voicesearch page: plain JavaScript, no build step, no external assets.
// One file (~500 lines) on purpose: the page must work offline with no bundler, and its parts
// (recordings, enrollment, identification, speakers, key) share a few helpers; each part is a
// marked section below. It reads response fields defensively (`pick`): fields may be missing
// (older servers) or new ones added (newer servers) without breaking the page.
"use strict";

const KEY_STORAGE = "voicesearch.apiKey";
const $ = (id) => document.getElementById(id);

// ---- small helpers ----------------------------------------------------------------------------
function pick(obj, names) {
  for (const name of names) {
    if (obj && obj[name] !== undefined && obj[name] !== null) return obj[name];
  }
  return undefined;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

// Replace a container's content, leaving out absent (null) parts.
function fill(container, ...children) {
  container.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
}

const seconds = (value) => (typeof value === "number" ? `${value.toFixed(1)} s` : "–");
const score = (value) => (typeof value === "number" ? value.toFixed(3) : "–");
const percent = (value) => (typeof value === "number" ? `${Math.round(value * 100)} %` : null);

class ApiError extends Error {
  constructor(message, code, requestId, status) {
    super(message);
    this.code = code;
    this.requestId = requestId;
    this.status = status;
  }
}

// Every call: the key from this tab's session, JSON back, errors as ApiError with the request id.
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.set("X-API-Key", key);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new ApiError(`The service cannot be reached (${err.message}).`, "network", null, 0);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new ApiError(
      error.message || `HTTP ${response.status}`,
      error.code || "http_error",
      error.request_id || response.headers.get("X-Request-ID"),
      response.status,
    );
  }
  return body || {};
}

function showError(container, err) {
  container.replaceChildren();
  const message = err instanceof ApiError && err.status === 401
    ? "An API key is needed (or the one given is wrong): enter it above."
    : err.message;
  const box = el("p", { class: "error", role: "alert" }, message);
  if (err.requestId) box.append(" ", el("span", { class: "ref", text: `(reference ${err.requestId})` }));
  container.append(box);
}

// ---- quality warnings -------------------------------------------------------------------------
const QUALITY_WORDS = {
  too_short: "Little speech in this clip: a few seconds more would help.",
  clipped: "The recording is distorted (too loud): move back from the microphone.",
  too_quiet: "The speech is very quiet: move closer to the microphone.",
  low_snr: "There is a lot of background noise.",
  no_speech: "No speech was found in this clip.",
};

function qualityWarnings(quality) {
  const codes = (quality && Array.isArray(quality.codes) ? quality.codes : []).filter((c) => c !== "ok");
  return codes.map((code) => QUALITY_WORDS[code] || `Quality warning: ${code}`);
}

function warningList(messages) {
  if (!messages.length) return null;
  return el("ul", { class: "warnings" }, ...messages.map((m) => el("li", { text: m })));
}

// ---- recordings: microphone or files ----------------------------------------------------------
class ClipBox {
  constructor(root) {
    this.root = root;
    this.prefix = root.dataset.prefix;
    this.single = root.dataset.single === "true";
    this.clips = [];
    this.recorder = null;
    this.count = 0;
    const fileId = `${this.prefix}-files`;
    this.recordButton = el("button", { type: "button", id: `${this.prefix}-record`, class: "secondary",
      onclick: () => this.toggleRecording() }, "Record");
    this.recordState = el("span", { id: `${this.prefix}-record-state`, "aria-live": "polite" });
    this.fileInput = el("input", { type: "file", id: fileId, accept: "audio/*,video/webm",
      multiple: this.single ? null : "multiple", onchange: () => this.addFiles(this.fileInput.files) });
    const drop = el("label", { class: "drop", for: fileId },
      this.single ? "Drop an audio file here, or choose one:" : "Drop audio files here, or choose:",
      this.fileInput);
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      this.addFiles(e.dataTransfer.files);
    });
    this.list = el("ul", { class: "clip-list", id: `${this.prefix}-clip-list`, "aria-label": "Recordings" });
    root.append(el("div", { class: "row" }, this.recordButton, this.recordState), drop, this.list);
    if (!window.MediaRecorder || !navigator.mediaDevices) {
      this.recordButton.disabled = true;
      this.recordState.textContent = "Recording is not available in this browser (it needs https or localhost).";
    }
  }

  add(blob, name) {
    if (this.single) this.clips = [];
    this.clips.push({ blob, name });
    this.render();
  }

  addFiles(files) {
    for (const file of files) this.add(file, file.name);
    this.fileInput.value = "";
  }

  clear() {
    this.clips = [];
    this.render();
  }

  render() {
    this.list.replaceChildren(...this.clips.map((clip, index) => {
      const url = URL.createObjectURL(clip.blob);
      return el("li", {},
        el("span", { text: clip.name }),
        el("audio", { controls: "controls", src: url, preload: "none" }),
        el("button", { type: "button", class: "secondary", "aria-label": `Remove ${clip.name}`,
          onclick: () => { this.clips.splice(index, 1); this.render(); } }, "Remove"));
    }));
  }

  async toggleRecording() {
    if (this.recorder) {
      this.recorder.stop();
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      this.recordState.textContent = `The microphone is not available: ${err.message}`;
      return;
    }
    const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4"]
      .find((t) => MediaRecorder.isTypeSupported(t));
    const recorder = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
    const chunks = [];
    const started = Date.now();
    const timer = setInterval(() => {
      this.recordState.textContent = `Recording… ${Math.round((Date.now() - started) / 1000)} s`;
    }, 250);
    recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
    recorder.onstop = () => {
      clearInterval(timer);
      stream.getTracks().forEach((t) => t.stop());
      this.recorder = null;
      this.recordButton.textContent = "Record";
      this.recordButton.setAttribute("aria-pressed", "false");
      this.recordState.className = "";
      const blob = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
      const ext = blob.type.includes("ogg") ? "ogg" : blob.type.includes("mp4") ? "m4a" : "webm";
      this.count += 1;
      this.recordState.textContent = `Recorded ${((Date.now() - started) / 1000).toFixed(1)} s.`;
      this.add(blob, `recording-${this.count}.${ext}`);
    };
    this.recorder = recorder;
    recorder.start();
    this.recordButton.textContent = "Stop";
    this.recordButton.setAttribute("aria-pressed", "true");
    this.recordState.className = "recording";
    this.recordState.textContent = "Recording…";
  }

  formData() {
    const form = new FormData();
    for (const clip of this.clips) form.append("audio", clip.blob, clip.name);
    return form;
  }
}

// ---- enrollment -------------------------------------------------------------------------------
let enrollClips;
let lastEnrolled = null; // {id, name}: "add these recordings" goes to this speaker

function speechMeter(body) {
  const speaker = body.speaker || {};
  const net = pick(body, ["speech_seconds", "net_speech_seconds", "speech_s"])
    ?? pick(speaker, ["speech_seconds", "net_speech_seconds"]);
  const required = pick(body, ["required_speech_seconds", "min_speech_seconds"])
    ?? pick(speaker, ["required_speech_seconds"]);
  const recommended = pick(body, ["recommended_speech_seconds", "recommended_seconds"])
    ?? pick(speaker, ["recommended_speech_seconds"]);
  const searchable = pick(body, ["searchable"]) ?? pick(speaker, ["searchable"]);
  const tier = pick(body, ["tier", "enrollment_tier", "speech_tier"]) ?? pick(speaker, ["tier", "enrollment_tier"]);
  const target = recommended || required;
  const box = el("div", { class: "meter", id: "enroll-meter" });
  if (typeof net === "number") {
    const parts = [];
    if (required) parts.push(`${seconds(required)} needed to be found`);
    if (recommended && recommended !== required) parts.push(`${seconds(recommended)} recommended`);
    const label = el("p", { id: "enroll-meter-label",
      text: `Net speech enrolled: ${seconds(net)}${parts.length ? ` (${parts.join(", ")})` : ""}.` });
    box.append(label);
    if (target) {
      box.append(el("meter", { min: "0", max: String(target), value: String(Math.min(net, target)),
        low: required ? String(Math.min(required, target) * 0.999) : null, optimum: String(target),
        "aria-labelledby": "enroll-meter-label" }));
    }
  }
  if (tier) box.append(el("p", { text: `Enrollment level: ${tier}.` }));
  if (searchable === false) {
    const missing = pick(body, ["missing_speech_seconds"]);
    box.append(el("p", { class: "decision undecided",
      text: `Not searchable yet${typeof missing === "number" ? `: add ${seconds(missing)} more speech` : ""}.` }));
  } else if (searchable === true) {
    box.append(el("p", { class: "decision match", text: "Searchable: this speaker can be identified." }));
  }
  return box;
}

// Enrollment-level warning codes (newer servers send them in `warnings`).
const ENROLLMENT_WORDS = {
  enrollment_below_recommended:
    "Less speech than recommended: add recordings for more reliable identification.",
};

function showEnrollment(body, verb) {
  const speaker = body.speaker || {};
  lastEnrolled = { id: speaker.id, name: speaker.name || speaker.id };
  const result = $("enroll-result");
  const warnings = [];
  for (const code of Array.isArray(body.warnings) ? body.warnings : []) {
    warnings.push(ENROLLMENT_WORDS[code] || `Warning: ${code}`);
  }
  for (const [index, utterance] of (body.utterances || []).entries()) {
    const name = `Recording ${index + 1}`;
    if (utterance.created === false) warnings.push(`${name} was already enrolled (not counted twice).`);
    for (const message of qualityWarnings(utterance.quality)) warnings.push(`${name}: ${message}`);
  }
  fill(result,
    el("p", { class: "decision", id: "enroll-summary",
      text: `${verb} ${lastEnrolled.name} (id ${speaker.id}), ${speaker.utterance_count ?? "?"} recording(s).` }),
    speechMeter(body),
    warningList(warnings),
  );
  $("enroll-add-name").textContent = lastEnrolled.name;
  $("enroll-add").hidden = false;
}

async function enroll(event) {
  event.preventDefault();
  const result = $("enroll-result");
  if (!enrollClips.clips.length) {
    showError(result, new Error("Record or choose at least one recording first."));
    return;
  }
  const form = enrollClips.formData();
  for (const field of ["name", "external_id", "language", "metadata"]) {
    const value = $("enroll-form").elements[field].value.trim();
    if (value) form.append(field, value);
  }
  working(result, "Enrolling… (each recording goes through the speech detector and the model)");
  await busy($("enroll-submit"), async () => {
    try {
      const body = await api("/speakers", { method: "POST", body: form });
      showEnrollment(body, "Enrolled");
      enrollClips.clear();
      refreshSpeakers();
    } catch (err) {
      showError(result, err);
    }
  });
}

async function addToLast() {
  const result = $("enroll-result");
  if (!lastEnrolled || !enrollClips.clips.length) {
    showError(result, new Error("Record or choose recordings to add first."));
    return;
  }
  const form = enrollClips.formData();
  const language = $("enroll-language").value.trim();
  if (language) form.append("language", language);
  working(result, "Adding recordings…");
  await busy($("enroll-add"), async () => {
    try {
      const body = await api(`/speakers/${encodeURIComponent(lastEnrolled.id)}/utterances`,
        { method: "POST", body: form });
      showEnrollment(body, "Added recordings to");
      enrollClips.clear();
      refreshSpeakers();
    } catch (err) {
      showError(result, err);
    }
  });
}

// ---- identification ---------------------------------------------------------------------------
let identifyClips;

const who = (match) => (match ? match.name || match.id : "someone");

function decisionWords(body) {
  const best = body.best_match || null;
  const decision = body.decision || (best ? (best.is_match ? "match" : "no_match") : "no_match");
  const threshold = pick(body, ["threshold"]) ?? pick(body.match || best || {}, ["threshold"]);
  const reason = body.reason;
  if (decision === "match") {
    const match = body.match || best;
    const probability = percent(match.match_probability);
    return ["match", `This is ${who(match)}.`,
      `Score ${score(pick(match, ["score", "similarity"]))}, threshold ${score(threshold)}`
        + (probability ? `; ${probability} likely the same person.` : ".")];
  }
  if (reason === "empty_gallery" || (!best && decision !== "undecided")) {
    return ["no-match", "Nobody is enrolled yet to compare with.", "Enroll a speaker first."];
  }
  if (decision === "undecided" || reason === "insufficient_speech") {
    const speech = body.quality ? body.quality.speech_s : undefined;
    return ["undecided", "Not enough speech to decide.",
      `${typeof speech === "number" ? `Only ${seconds(speech)} of speech. ` : ""}Record a few seconds more.`
        + (best ? ` Closest so far: ${who(best)} (score ${score(pick(best, ["score", "similarity"]))}).` : "")];
  }
  return ["no-match", "No enrolled speaker matches this voice.",
    `Closest: ${who(best)}, score ${score(pick(best, ["score", "similarity"]))}, below the threshold ${score(threshold)}.`];
}

function showIdentification(body) {
  const [kind, headline, detail] = decisionWords(body);
  const notes = [];
  const searched = pick(body, ["gallery_size", "searched"]);
  if (typeof searched === "number") notes.push(`Compared with ${searched} enrolled speaker(s).`);
  if (body.threshold_source) notes.push(`Threshold: ${body.threshold_source}.`);
  const fpir = pick(body, ["fpir_target"]);
  if (typeof fpir === "number") notes.push(`Target false-alarm rate: ${fpir}.`);
  if (body.threshold_quality) {
    // Longer recordings are held to the stricter tails measured for their quality class.
    const what = { long_clean: "Long, clean", long_noisy: "Long, noisy", medium_clean: "Medium-length, clean" };
    const label = what[body.threshold_quality] || body.threshold_quality;
    notes.push(`${label} recording: held to the stricter threshold measured for such recordings.`);
  }
  if (body.language) notes.push(`Language: ${body.language}.`);
  const rows = (body.top_matches || []).map((m, i) => el("tr", {},
    el("td", { class: "num", text: String(i + 1) }),
    el("td", { text: m.name || "" }),
    el("td", { text: m.id }),
    el("td", { class: "num", text: score(m.similarity) }),
    el("td", { class: "num", text: score(pick(m, ["score", "similarity"])) }),
    el("td", { class: "num", text: percent(m.match_probability) || "–" }),
    el("td", { text: m.is_match ? "yes" : "no" })));
  fill($("identify-result"),
    el("p", { class: `decision ${kind}`, id: "identify-decision", text: headline }),
    el("p", { id: "identify-detail", text: detail }),
    warningList(qualityWarnings(body.quality)),
    notes.length ? el("p", { class: "hint", text: notes.join(" ") }) : null,
    rows.length ? el("div", { class: "table-wrap" }, el("table", { id: "identify-table" },
      // Ranked by similarity (the model's cosine); the decision compares Score with the
      // threshold, so a lower row may show a higher score.
      el("caption", { class: "hint", text: "Closest enrolled speakers, by similarity" }),
      el("thead", {}, el("tr", {}, ...["#", "Name", "Id", "Similarity", "Score", "Probability",
        "Match"]
        .map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, ...rows))) : null,
  );
}

async function identify(event) {
  event.preventDefault();
  if (!identifyClips.clips.length) {
    showError($("identify-result"), new Error("Record or choose a recording first."));
    return;
  }
  const form = identifyClips.formData();
  form.append("top_n", $("identify-top-n").value || "5");
  working($("identify-result"), "Listening to the recording…");
  await busy($("identify-submit"), async () => {
    try {
      showIdentification(await api("/find-match", { method: "POST", body: form }));
    } catch (err) {
      showError($("identify-result"), err);
    }
  });
}

// ---- speakers ---------------------------------------------------------------------------------
function speakerRow(speaker) {
  const nameCell = el("td", { text: speaker.name || "" });
  const actions = el("td", {});
  const row = el("tr", { "data-id": speaker.id }, nameCell, el("td", { text: speaker.id }),
    el("td", { class: "num", text: String(speaker.utterance_count ?? "") }),
    el("td", { class: "num", text: seconds(pick(speaker, ["speech_seconds"])) }),
    el("td", { text: speaker.searchable === false ? "not yet" : "yes" }), actions);
  const label = speaker.name || speaker.id;

  const rename = el("button", { type: "button", class: "secondary", "aria-label": `Rename ${label}`,
    onclick: () => {
      const input = el("input", { value: speaker.name || "", "aria-label": `New name for ${label}`,
        maxlength: "256", class: "rename-input" });
      const save = el("button", { type: "button", class: "rename-save" }, "Save");
      const cancel = el("button", { type: "button", class: "secondary" }, "Cancel");
      const done = () => refreshSpeakers();
      save.addEventListener("click", async () => {
        try {
          await api(`/speakers/${encodeURIComponent(speaker.id)}`, { method: "PATCH",
            headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: input.value }) });
          status(`Renamed ${label} to ${input.value}.`);
          done();
        } catch (err) {
          status(`Rename failed: ${err.message}`);
        }
      });
      cancel.addEventListener("click", done);
      input.addEventListener("keydown", (e) => {
        if (e.key === "Enter") save.click();
        if (e.key === "Escape") cancel.click();
      });
      nameCell.replaceChildren(input);
      actions.replaceChildren(save, cancel);
      input.focus();
    } }, "Rename");

  // Delete asks once more in place (no modal dialog): a second click within 5 s deletes.
  const remove = el("button", { type: "button", class: "danger", "aria-label": `Delete ${label}`,
    onclick: async () => {
      if (remove.dataset.armed !== "true") {
        remove.dataset.armed = "true";
        remove.textContent = "Really delete?";
        setTimeout(() => { remove.dataset.armed = "false"; remove.textContent = "Delete"; }, 5000);
        return;
      }
      try {
        await api(`/speakers/${encodeURIComponent(speaker.id)}`, { method: "DELETE" });
        status(`Deleted ${label}.`);
        if (lastEnrolled && lastEnrolled.id === speaker.id) {
          lastEnrolled = null;
          $("enroll-add").hidden = true;
        }
        refreshSpeakers();
      } catch (err) {
        status(`Delete failed: ${err.message}`);
      }
    } }, "Delete");
  actions.append(rename, " ", remove);
  return row;
}

async function refreshSpeakers() {
  const params = new URLSearchParams({ limit: "100" });
  const filter = $("speakers-filter").value.trim();
  if (filter) params.set("name", filter);
  try {
    const body = await api(`/speakers?${params}`);
    const speakers = body.speakers || [];
    $("speakers-table").tBodies[0].replaceChildren(...speakers.map(speakerRow));
    const total = pick(body, ["total"]) ?? speakers.length;
    $("speakers-summary").textContent = total > speakers.length
      ? `Showing ${speakers.length} of ${total} speakers.` : `${total} speaker(s).`;
  } catch (err) {
    $("speakers-summary").textContent = err.status === 401
      ? "Enter an API key to see the speakers." : `Cannot list speakers: ${err.message}`;
  }
}

// ---- service status and API key ---------------------------------------------------------------
function status(text) {
  $("service-status").textContent = text;
}

// While a request runs, the old result goes: a new answer is never mistaken for the last one.
function working(container, text) {
  fill(container, el("p", { class: "hint", role: "status", text }));
}

async function busy(button, work) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    await work();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

async function loadHealth() {
  try {
    const health = await api("/health");
    const spaces = Object.entries(health.spaces || {})
      .filter(([, s]) => s.available)
      .map(([name, s]) => `${name}: ${s.indexed_speakers ?? 0} searchable`);
    status(`Service ${health.status || "up"} (version ${health.version || "?"})`
      + (spaces.length ? ` · ${spaces.join(", ")}` : ""));
    const keysOn = health.auth === "enabled";
    $("api-key-section").hidden = !keysOn;
    if (keysOn && !sessionStorage.getItem(KEY_STORAGE)) $("api-key").focus();
  } catch (err) {
    status(`The service does not answer: ${err.message}`);
  }
}

function setupKey() {
  $("api-key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    $("api-key").value = "";
    status("API key set for this tab.");
    refreshSpeakers();
  });
  $("api-key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    status("API key forgotten.");
    refreshSpeakers();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  enrollClips = new ClipBox($("enroll-clips"));
  identifyClips = new ClipBox($("identify-clips"));
  $("enroll-form").addEventListener("submit", enroll);
  $("enroll-add").addEventListener("click", addToLast);
  $("identify-form").addEventListener("submit", identify);
  $("speakers-refresh").addEventListener("click", refreshSpeakers);
  $("speakers-filter").addEventListener("keydown", (e) => { if (e.key === "Enter") refreshSpeakers(); });
  setupKey();
  loadHealth().then(refreshSpeakers);
});
