// The maskml page: every change goes through the HTTP API (/docs); the page only draws.
"use strict";

const $ = (selector) => document.querySelector(selector);
const ALPHA = 0.5;  // mask tint, as maskml's overlays
const DRAG_PIXELS = 5;  // a press and release closer than this (screen pixels) is a click, farther a box
const EMBED_AFTER_MS = 250;  // a frame shown this long gets its embedding computed ahead of clicks
const RETRACK_AFTER_MS = 700;  // a correction re-tracks once no further click came for this long

const state = {
  session: null,  // the API's description of the session
  frame: 0,
  object: 1,  // the object clicks go to
  masks: null,  // the API's masks of the shown frame
  image: null,  // the shown frame, an <img>
  plain: null,  // its pixels, before masks are drawn
  tracking: null,  // {finished: a promise} while tracking
  tracked: false,  // tracked once: from then on a change re-tracks by itself
  retrack: null,  // the timer of the re-track a change scheduled
  busy: 0,  // requests under way (tests wait for 0)
};
window.maskml = state;

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function api(path, options = {}) {
  state.busy++;
  try {
    const response = await fetch(path, options);
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail; } catch (_) { /* not JSON */ }
      if (typeof detail !== "string") detail = JSON.stringify(detail);
      throw new ApiError(response.status, detail);
    }
    return response;
  } finally {
    state.busy--;
  }
}

const json = async (path, options) => (await api(path, options)).json();
const sessionPath = (rest = "") => `/api/sessions/${state.session.id}${rest}`;

const STATUS_WORDS = {401: "Access refused", 409: "Not now", 410: "Session expired", 413: "Too large",
                      415: "Unsupported file", 429: "Too many sessions"};

function say(text, error = false) {
  const message = $("#message");
  message.textContent = text;
  message.className = error ? "error" : "";
}

function fail(error) {
  if (error.name === "AbortError") return;
  const words = STATUS_WORDS[error.status];
  say(words ? `${words}: ${error.message}` : error.message, true);
}

// DAVIS / PASCAL VOC palette: object 1 dark red, 2 green, 3 olive, 4 navy, ...
function paletteColor(index) {
  let r = 0, g = 0, b = 0;
  for (let bit = 0; bit < 8; bit++) {
    r |= ((index >> 0) & 1) << (7 - bit);
    g |= ((index >> 1) & 1) << (7 - bit);
    b |= ((index >> 2) & 1) << (7 - bit);
    index >>= 3;
  }
  return [r, g, b];
}

// ---- opening a file ------------------------------------------------------------------------------

async function open(file) {
  await stopTracking();
  say(`Uploading ${file.name} ...`);
  try {
    const session = await json(`/api/sessions?filename=${encodeURIComponent(file.name)}`, {method: "POST", body: file});
    closeSession();
    state.session = session;
    state.object = 1;
    state.tracked = false;
    $("#drop").hidden = true;
    $("#canvases").hidden = $("#panel").hidden = false;
    $("#timeline").hidden = $("#tracking").hidden = session.kind !== "video";
    $("#frame").max = session.frames - 1;
    $("#frame").value = 0;
    for (const canvas of [$("#view"), $("#marks")]) {
      canvas.width = session.width;
      canvas.height = session.height;
    }
    renderObjects();
    await showFrame(0);
    say(`${file.name}: ${session.width}x${session.height}` +
        (session.kind === "video" ? `, ${session.frames} frames` : "") + ". Click on an object.");
  } catch (error) {
    fail(error);
  }
}

function closeSession() {
  if (state.session) fetch(sessionPath(), {method: "DELETE", keepalive: true});
  state.session = null;
}

// ---- frames and masks ----------------------------------------------------------------------------

let frameRequest = 0;  // the latest showFrame wins while scrubbing

async function showFrame(index) {
  const request = ++frameRequest;
  state.busy++;
  try {
    const image = new Image();
    image.src = sessionPath(`/frames/${index}/image`);
    const [masks] = await Promise.all([json(sessionPath(`/frames/${index}/masks`)), image.decode()]);
    if (request !== frameRequest) return;
    state.frame = index;
    state.image = image;
    state.plain = null;
    state.masks = masks;
    $("#frame-label").textContent = `frame ${index} / ${state.session.frames - 1}`;
    draw();
    setTimeout(() => {  // a frame still shown after a moment (not one passed while scrubbing): clicks will only decode
      if (request === frameRequest) api(sessionPath(`/frames/${index}/embed`), {method: "POST"}).catch(() => {});
    }, EMBED_AFTER_MS);
  } catch (error) {
    fail(error);
  } finally {
    state.busy--;
  }
}

function draw() {
  const view = $("#view");
  const context = view.getContext("2d");
  context.drawImage(state.image, 0, 0);
  if (!state.plain) state.plain = context.getImageData(0, 0, view.width, view.height);
  const picture = new ImageData(new Uint8ClampedArray(state.plain.data), view.width, view.height);
  const [height, width] = state.masks.size;
  for (const object of state.masks.objects) {
    const color = paletteColor(object.id);
    let position = 0, inside = false;
    for (const count of object.counts) {  // COCO RLE: column-major runs, background first
      if (inside) {
        for (let p = position; p < position + count; p++) {
          const offset = ((p % height) * width + Math.floor(p / height)) * 4;
          for (let c = 0; c < 3; c++) picture.data[offset + c] = picture.data[offset + c] * (1 - ALPHA) + color[c] * ALPHA;
        }
      }
      position += count;
      inside = !inside;
    }
  }
  context.putImageData(picture, 0, 0);
  drawMarks();
  const stale = state.masks.stale && state.session.kind === "video" && state.session.prompts.length;
  $("#track-status").textContent = stale ? `Masks from frame ${state.session.stale_from} on are older than the ` +
    `last change: Track carries it on.` : "";
}

let press = null;  // {x, y, screenX, screenY, button, shift} of the mouse button held
let pointer = null;

function drawMarks() {
  const marks = $("#marks");
  const context = marks.getContext("2d");
  context.clearRect(0, 0, marks.width, marks.height);
  const radius = Math.max(3, Math.round(Math.min(marks.width, marks.height) / 120));
  for (const prompt of state.session.prompts) {
    if (prompt.frame !== state.frame || prompt.object !== state.object) continue;
    prompt.points.forEach(([x, y], i) => {
      context.beginPath();
      context.arc(x, y, radius, 0, 2 * Math.PI);
      context.fillStyle = prompt.labels[i] ? "#00dc00" : "#e60000";
      context.strokeStyle = "#fff";
      context.fill();
      context.stroke();
    });
    if (prompt.box) {
      const [x0, y0, x1, y1] = prompt.box;
      context.strokeStyle = "#1e90ff";
      context.lineWidth = 2;
      context.strokeRect(x0, y0, x1 - x0, y1 - y0);
    }
  }
  if (press && pointer && press.button === 0) {
    context.strokeStyle = "#1e90ff";
    context.setLineDash([4, 3]);
    context.strokeRect(press.x, press.y, pointer.x - press.x, pointer.y - press.y);
    context.setLineDash([]);
  }
}

// ---- clicks --------------------------------------------------------------------------------------

function framePixel(event) {  // mouse position in whole pixels of the frame
  const marks = $("#marks");
  const bounds = marks.getBoundingClientRect();
  return {x: Math.round((event.clientX - bounds.left) * marks.width / bounds.width),
          y: Math.round((event.clientY - bounds.top) * marks.height / bounds.height)};
}

async function prompt(body) {
  await stopTracking();  // a correction while tracking: the frames done stay, tracking resumes after it
  try {
    state.masks = await json(sessionPath("/prompts"), {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({frame: state.frame, object: state.object, ...body}),
    });
    await refreshSession();
    draw();
    const video = state.session.kind === "video";
    say(`Object ${state.object} on frame ${state.frame}` + (!video ? "." : state.tracked ?
        ": re-tracking from here ..." : ": Track carries it through the video."));
  } catch (error) {
    fail(error);
  }
  retrackSoon();
}

function retrackSoon() {  // after a change to a tracked video: track again once the clicks pause
  clearTimeout(state.retrack);
  if (state.tracked && state.session && state.session.kind === "video" && state.session.stale_from !== null) {
    state.retrack = setTimeout(() => { state.retrack = null; track(); }, RETRACK_AFTER_MS);
  }
}

async function stopTracking() {
  clearTimeout(state.retrack);
  state.retrack = null;
  if (!state.tracking) return;
  const finished = state.tracking.finished;
  await cancel();
  await finished;
}

function onPress(event) {
  if (!state.session) return;
  event.preventDefault();
  press = {...framePixel(event), screenX: event.clientX, screenY: event.clientY, button: event.button,
           shift: event.shiftKey};
  pointer = null;
}

function onMove(event) {
  if (!press) return;
  pointer = framePixel(event);
  drawMarks();
}

function onRelease(event) {
  if (!press) return;
  const start = press;
  press = pointer = null;
  const end = framePixel(event);
  const dragged = Math.max(Math.abs(event.clientX - start.screenX), Math.abs(event.clientY - start.screenY)) >= DRAG_PIXELS;
  if (dragged && start.button === 0 && !start.shift) {
    prompt({box: [Math.min(start.x, end.x), Math.min(start.y, end.y), Math.max(start.x, end.x), Math.max(start.y, end.y)]});
  } else {
    prompt({point: [start.x, start.y], label: start.button === 2 || start.shift ? 0 : 1});
  }
}

async function undo() {
  if (!state.session) return;
  await stopTracking();
  try {
    const masks = await json(sessionPath("/undo"), {method: "POST"});
    await refreshSession();
    $("#frame").value = masks.frame;
    await showFrame(masks.frame);
    say(`Undone: the last click on frame ${masks.frame}`);
  } catch (error) {
    fail(error);
  }
  retrackSoon();
}

// ---- objects -------------------------------------------------------------------------------------

async function refreshSession() {
  state.session = await json(sessionPath());
  renderObjects();
}

function renderObjects() {
  const list = $("#objects");
  list.replaceChildren();
  const objects = [...state.session.objects];
  if (!objects.some((o) => o.id === state.object)) objects.push({id: state.object, name: `object ${state.object}`, fresh: true});
  for (const object of objects) {
    const item = document.createElement("li");
    item.dataset.id = object.id;
    item.className = object.id === state.object ? "selected" : "";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${paletteColor(object.id).join(",")})`;
    const name = document.createElement("input");
    name.value = object.name;
    name.title = "rename";
    name.disabled = Boolean(object.fresh);
    name.addEventListener("change", () => rename(object.id, name.value));
    item.append(swatch, name);
    if (!object.fresh) {
      const remove = document.createElement("button");
      remove.textContent = "\u00d7";
      remove.title = "delete this object on every frame";
      remove.className = "delete";
      remove.addEventListener("click", (event) => { event.stopPropagation(); deleteObject(object.id); });
      item.append(remove);
    } else {
      name.value += " (click on it)";
    }
    item.addEventListener("click", () => select(object.id));
    list.append(item);
  }
  $("#undo").disabled = !state.session.can_undo;
}

function select(id) {
  state.object = id;
  renderObjects();
  drawMarks();
}

function newObject() {
  if (!state.session) return;
  const ids = state.session.objects.map((o) => o.id);
  select(Math.min(255, Math.max(0, state.object, ...ids) + 1));
}

async function rename(id, name) {
  try {
    state.session = await json(sessionPath(`/objects/${id}`), {
      method: "PATCH", headers: {"Content-Type": "application/json"}, body: JSON.stringify({name}),
    });
    renderObjects();
  } catch (error) {
    fail(error);
  }
}

async function deleteObject(id) {
  await stopTracking();
  try {
    state.session = await json(sessionPath(`/objects/${id}`), {method: "DELETE"});
    renderObjects();
    await showFrame(state.frame);
    say(`Object ${id} deleted`);
  } catch (error) {
    fail(error);
  }
  retrackSoon();
}

// ---- tracking ------------------------------------------------------------------------------------

function track() {
  if (!state.session || state.tracking) return;
  clearTimeout(state.retrack);
  state.retrack = null;
  let finish;
  state.tracking = {finished: new Promise((resolve) => { finish = resolve; })};
  return streamTracking().finally(finish);
}

async function streamTracking() {
  $("#track").disabled = true;
  $("#cancel").disabled = false;
  const progress = $("#progress");
  progress.value = 0;
  let last = null;
  try {
    const response = await api(sessionPath("/track"), {method: "POST"});
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += value;
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines.filter(Boolean)) {
        last = JSON.parse(line);
        if (last.error) throw new ApiError(400, last.error);
        if (last.total) progress.max = last.total;
        if (last.start !== undefined) say(`Tracking from frame ${last.start} ...`);
        if (last.done) {
          state.tracked = true;
          progress.value = last.done;
          $("#track-status").textContent = `frame ${last.frame} (${last.done} / ${last.total})`;
        }
      }
    }
    say(last && last.finished ? "Tracked: scrub the frames; a click on any frame corrects the object there and re-tracks from it." :
        `Tracking cancelled at frame ${last ? last.frame : "?"}: the frames before are kept`);
  } catch (error) {
    fail(error);
  } finally {
    state.tracking = null;
    $("#track").disabled = false;
    $("#cancel").disabled = true;
    await refreshSession().catch(fail);
    await showFrame(state.frame);
  }
}

async function cancel() {
  if (!state.tracking) return;
  await api(sessionPath("/cancel"), {method: "POST"}).catch(fail);  // stops at the next frame; the stream ends
}

// ---- exports -------------------------------------------------------------------------------------

async function exportFile(name) {
  if (!state.session) return;
  if (name === "overlay") name = state.session.kind === "video" ? "overlay.mp4" : "overlay.png";
  say(`Preparing ${name} ...`);
  try {
    const blob = await (await api(sessionPath(`/export/${name}`))).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    say(`${name} downloaded`);
  } catch (error) {
    fail(error);
  }
}

// ---- wiring --------------------------------------------------------------------------------------

$("#file").addEventListener("change", (event) => { if (event.target.files[0]) open(event.target.files[0]); event.target.value = ""; });
document.body.addEventListener("dragover", (event) => { event.preventDefault(); document.body.classList.add("dragging"); });
document.body.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
document.body.addEventListener("drop", (event) => {
  event.preventDefault();
  document.body.classList.remove("dragging");
  if (event.dataTransfer.files[0]) open(event.dataTransfer.files[0]);
});
const marks = $("#marks");
marks.addEventListener("mousedown", onPress);
marks.addEventListener("mousemove", onMove);
window.addEventListener("mouseup", onRelease);
marks.addEventListener("contextmenu", (event) => event.preventDefault());
$("#frame").addEventListener("input", (event) => showFrame(Number(event.target.value)));
$("#new-object").addEventListener("click", newObject);
$("#undo").addEventListener("click", undo);
$("#track").addEventListener("click", track);
$("#cancel").addEventListener("click", cancel);
for (const button of document.querySelectorAll(".export")) button.addEventListener("click", () => exportFile(button.dataset.name));
document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT" && event.target.type !== "range") return;
  if (event.key === "n") newObject();
  else if (event.key === "z") undo();
});
window.addEventListener("pagehide", closeSession);
json("/api/info").then((info) => { $("#models").textContent = info.models; }).catch(fail);
