// sana-serve playground: submit a prompt, watch the video stream in block by block.
//
// Blocks arrive over WS /v1/videos/{id}/stream as a JSON event followed by a binary
// fragmented-MP4 segment (the first one carries the init segment); they are appended to a
// MediaSource SourceBuffer, so the <video> plays while the rest is still being generated.
// Plain JS, no build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "sana-serve-api-key";

// -- API helpers ----------------------------------------------------------------------------
const apiKey = () => $("api-key").value.trim();

function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(method, path, body) {
  const init = { method, headers: authHeaders(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (_) { /* empty or not JSON */ }
  if (!response.ok) {
    throw new Error((data && data.error && data.error.message) || `${response.status} ${response.statusText}`);
  }
  return data;
}

function wsUrl(path, params = {}) {
  const url = new URL(path, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  if (apiKey()) url.searchParams.set("api_key", apiKey()); // browsers cannot set websocket headers
  return url.toString();
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// -- MediaSource player -----------------------------------------------------------------------
// The codec string comes from the init segment's avcC box: profile, compatibility, level.
function codecFromInit(bytes) {
  for (let i = 4; i + 8 < bytes.length; i++) {
    if (bytes[i] === 0x61 && bytes[i + 1] === 0x76 && bytes[i + 2] === 0x63 && bytes[i + 3] === 0x43) { // "avcC"
      const hex = (b) => b.toString(16).padStart(2, "0");
      return `avc1.${hex(bytes[i + 5])}${hex(bytes[i + 6])}${hex(bytes[i + 7])}`;
    }
  }
  return "avc1.42E01E"; // baseline 3.0: a safe guess if the box is not found
}

class MsePlayer {
  constructor(video) {
    this.video = video;
    this.mediaSource = null;
  }

  reset() {
    if (this.video.src) URL.revokeObjectURL(this.video.src);
    this.queue = [];
    this.sourceBuffer = null;
    this.ending = false;
    this.appended = 0;
    this.live = false;
    this.mediaSource = new MediaSource();
    this.opened = new Promise((resolve) => this.mediaSource.addEventListener("sourceopen", resolve, { once: true }));
    this.video.src = URL.createObjectURL(this.mediaSource);
  }

  async append(bytes) {
    const mediaSource = this.mediaSource;
    await this.opened;
    if (mediaSource !== this.mediaSource) return; // reset meanwhile
    if (!this.sourceBuffer) {
      const type = `video/mp4; codecs="${codecFromInit(bytes)}"`;
      this.sourceBuffer = mediaSource.addSourceBuffer(type);
      this.sourceBuffer.mode = "segments"; // each fragment carries its own decode time
      this.sourceBuffer.addEventListener("updateend", () => this.pump());
      this.sourceBuffer.addEventListener("error", () => setStatus("the browser could not decode the stream", true));
    }
    this.queue.push(bytes);
    this.pump();
    this.video.play().catch(() => { /* autoplay refused: the controls are there */ });
  }

  end() {
    this.ending = true;
    this.pump();
  }

  pump() {
    const sb = this.sourceBuffer;
    if (!sb || sb.updating || this.mediaSource.readyState !== "open") return;
    if (this.queue.length) {
      sb.appendBuffer(this.queue.shift());
      this.appended += 1;
      return;
    }
    // An endless stream must not grow without bound: drop what played long ago.
    if (this.live && sb.buffered.length && this.video.currentTime - sb.buffered.start(0) > 30) {
      sb.remove(0, this.video.currentTime - 10);
      return;
    }
    if (this.ending) this.mediaSource.endOfStream();
  }
}

const player = new MsePlayer($("player"));

// -- one video job: create, stream, cancel ------------------------------------------------------
let current = null; // {id, socket, nextBlock, done}

function watch(videoId) {
  if (current && current.socket) current.socket.close();
  const job = { id: videoId, socket: null, nextBlock: 0, done: false, expect: null, retries: 0 };
  current = job;
  player.reset();
  document.body.dataset.blocks = "0";
  $("progress").value = 0;

  const open = () => {
    const socket = new WebSocket(wsUrl(`/v1/videos/${videoId}/stream`, { from_block: job.nextBlock }));
    socket.binaryType = "arraybuffer";
    job.socket = socket;
    socket.onmessage = (message) => {
      if (job !== current) return;
      if (typeof message.data !== "string") {
        player.append(new Uint8Array(message.data));
        if (job.expect) job.nextBlock = job.expect.index + 1;
        document.body.dataset.blocks = String(job.nextBlock);
        return;
      }
      const event = JSON.parse(message.data);
      if (event.type === "video.block") {
        job.expect = event;
        $("progress").value = event.progress ?? 0;
        const total = event.num_blocks ? ` of ${event.num_blocks}` : "";
        setStatus(`Block ${event.index + 1}${total} (frames ${event.frame_start}–${event.frame_start + event.frame_count - 1})`);
      } else if (event.type === "video.completed") {
        job.done = true;
        $("progress").value = 100;
        setStatus("Completed.");
        player.end();
        finishJob();
      } else if (event.type === "video.failed") {
        job.done = true;
        setStatus(`Failed: ${(event.error && event.error.message) || "unknown error"}`, true);
        player.end();
        finishJob();
      }
    };
    socket.onclose = (close) => {
      if (job !== current || job.done) return;
      if (close.code === 1013 && job.retries < 5) { // fell behind: resume where we are, no gap
        job.retries += 1;
        setStatus(`Reconnecting at block ${job.nextBlock + 1}…`);
        setTimeout(open, 500);
      } else if (close.code !== 1000) {
        setStatus(`Stream closed: ${close.reason || close.code}`, true);
        finishJob();
      }
    };
  };
  open();
}

function finishJob() {
  $("cancel").disabled = true;
  $("submit").disabled = false;
  refreshVideos();
}

$("create-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = { prompt: $("prompt").value.trim(), seconds: Number($("seconds").value) };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("steps").value !== "") body.num_inference_steps = Number($("steps").value);
  $("submit").disabled = true;
  setStatus("Submitting…");
  try {
    const video = await api("POST", "/v1/videos", body);
    document.body.dataset.videoId = video.id;
    setStatus(`Queued ${video.id}`);
    $("cancel").disabled = false;
    watch(video.id);
    refreshVideos();
  } catch (err) {
    setStatus(err.message, true);
    $("submit").disabled = false;
  }
});

$("cancel").addEventListener("click", async () => {
  if (!current) return;
  const job = current;
  job.done = true;
  try {
    await api("DELETE", `/v1/videos/${job.id}`);
    setStatus("Cancelled.");
  } catch (err) {
    setStatus(err.message, true);
  }
  if (job.socket) job.socket.close();
  finishJob();
});

// -- past videos ----------------------------------------------------------------------------
async function download(videoId, variant) {
  const response = await fetch(`/v1/videos/${videoId}/content?variant=${variant}`, { headers: authHeaders() });
  if (!response.ok) { setStatus(`download failed: ${response.status}`, true); return; }
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = `${videoId}.${variant === "video" ? "mp4" : "png"}`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function link(text, onClick) {
  const a = document.createElement("a");
  a.textContent = text;
  a.href = "#";
  a.addEventListener("click", (e) => { e.preventDefault(); onClick(); });
  return a;
}

let listRequests = 0;

async function refreshVideos() {
  const request = ++listRequests; // only the latest answer is shown (e.g. after the key changed)
  let page;
  try {
    page = await api("GET", "/v1/videos?limit=20&order=desc");
  } catch (err) {
    if (request !== listRequests) return;
    $("videos").querySelector("tbody").replaceChildren();
    $("videos-empty").textContent = `Could not list videos: ${err.message}`;
    $("videos-empty").hidden = false;
    return;
  }
  if (request !== listRequests) return;
  $("videos-empty").textContent = "No videos yet.";
  const tbody = $("videos").querySelector("tbody");
  tbody.replaceChildren();
  for (const v of page.data) {
    const row = document.createElement("tr");
    row.dataset.id = v.id;
    const cells = [v.prompt, `${v.seconds} s`, null, new Date(v.created_at * 1000).toLocaleTimeString(), null];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      if (i === 0) td.className = "prompt";
      if (text !== null) td.textContent = text;
      row.appendChild(td);
    });
    const badge = document.createElement("span");
    badge.className = `badge ${v.status}`;
    badge.textContent = v.status === "in_progress" ? `${v.progress}%` : v.status;
    row.children[2].appendChild(badge);
    const actions = row.children[4];
    if (v.status === "completed" || v.status === "in_progress" || v.status === "queued") {
      actions.appendChild(link("Watch", () => { setStatus(`Streaming ${v.id}`); watch(v.id); }));
    }
    if (v.status === "completed") {
      const mp4 = link("MP4", () => download(v.id, "video"));
      mp4.className = "download";
      actions.appendChild(mp4);
      actions.appendChild(link("Thumbnail", () => download(v.id, "thumbnail")));
    }
    tbody.appendChild(row);
  }
  $("videos-empty").hidden = page.data.length > 0;
}

$("refresh").addEventListener("click", refreshVideos);

// -- realtime -------------------------------------------------------------------------------
let session = null;

function showTab(realtime) {
  $("tab-video").classList.toggle("active", !realtime);
  $("tab-realtime").classList.toggle("active", realtime);
  $("tab-video").setAttribute("aria-selected", String(!realtime));
  $("tab-realtime").setAttribute("aria-selected", String(realtime));
  $("create-form").hidden = realtime;
  $("realtime-form").hidden = !realtime;
}
$("tab-video").addEventListener("click", () => showTab(false));
$("tab-realtime").addEventListener("click", () => showTab(true));

function endSession(text, isError = false) {
  session = null;
  $("rt-start").disabled = false;
  $("rt-update").disabled = true;
  $("rt-stop").disabled = true;
  player.end();
  if (text) setStatus(text, isError);
}

$("realtime-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (current && current.socket) { current.done = true; current.socket.close(); }
  current = null;
  const start = { type: "session.start", prompt: $("rt-prompt").value.trim() };
  if ($("rt-seed").value !== "") start.seed = Number($("rt-seed").value);
  if ($("rt-steps").value !== "") start.num_inference_steps = Number($("rt-steps").value);
  player.reset();
  player.live = true;
  const socket = new WebSocket(wsUrl("/v1/realtime"));
  socket.binaryType = "arraybuffer";
  session = { socket, blocks: 0 };
  $("rt-start").disabled = true;
  // No automatic keep-alive: a tab nobody steers is stopped by the server's idle limit.
  socket.onopen = () => { socket.send(JSON.stringify(start)); setStatus("Starting a realtime session…"); };
  socket.onmessage = (message) => {
    if (typeof message.data !== "string") {
      player.append(new Uint8Array(message.data));
      return;
    }
    const event = JSON.parse(message.data);
    if (event.type === "session.started") {
      $("rt-update").disabled = false;
      $("rt-stop").disabled = false;
      setStatus(`Session ${event.session_id} (seed ${event.seed})`);
    } else if (event.type === "video.block") {
      session && (session.blocks += 1);
      setStatus(`Realtime block ${event.index + 1}`);
    } else if (event.type === "prompt.updated") {
      setStatus(`Prompt updated: the next block follows “${event.prompt}”`);
    } else if (event.type === "error") {
      setStatus(event.error.message, true);
    } else if (event.type === "session.stopped") {
      setStatus(event.reason === "idle_timeout" ? "Session stopped: no prompt change for a while (idle limit)"
                                                : `Session stopped (${event.reason})`);
    }
  };
  socket.onclose = (close) => {
    endSession(close.code === 1000 || close.code === 1001 ? null : `Session closed: ${close.reason || close.code}`,
               close.code !== 1000 && close.code !== 1001);
  };
});

$("rt-update").addEventListener("click", () => {
  if (session) session.socket.send(JSON.stringify({ type: "prompt.update", prompt: $("rt-prompt").value.trim() }));
});
$("rt-stop").addEventListener("click", () => {
  if (session) session.socket.send(JSON.stringify({ type: "session.stop" }));
});

// -- start ----------------------------------------------------------------------------------
$("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
$("api-key").addEventListener("change", () => {
  localStorage.setItem(KEY_STORAGE, apiKey());
  refreshVideos();
});
refreshVideos();
