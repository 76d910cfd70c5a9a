// inpaint's web page: open a photo, paint over what to remove, send photo and mask to the REST API
// (signature serving_bytes) and show, compare and download the result. No framework, no network
// resource: everything comes from this server.
"use strict";

const $ = (id) => document.getElementById(id);
const MODEL = document.querySelector('meta[name="inpaint-model"]').content;
const MODEL_URL = `v1/models/${encodeURIComponent(MODEL)}`;  // relative: works behind a path prefix too
const TYPES = { png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", webp: "image/webp", bmp: "image/bmp" };

const state = {
  name: "",             // the opened file's name without its extension
  originalUrl: null,    // object URL of the photo as opened (the "before")
  source: null,         // the Blob sent as the photo: the file, or the last result
  reencode: null,       // the decoded photo, when it is a JPEG the browser rotates (EXIF): sent as shown
  resultUrl: null,      // object URL of the last result PNG
  width: 0,             // the photo's pixels as shown (EXIF orientation applied)
  height: 0,
  // Strokes in photo pixels: {erase, width, points: [[x, y], ...]}, or {clear: true}. The mask is drawn
  // from them at full resolution when it is sent; the screen shows them scaled.
  strokes: [],
  drawing: null,        // the stroke under the pointer, and how many of its points are on screen
  drawn: 0,
  busy: false,
};

// -- status and controls -----------------------------------------------------------------------

function setStatus(message, kind = "") {
  const status = $("status");
  status.textContent = message;
  status.className = kind;
}

function updateControls() {
  const open = state.width > 0, idle = !state.busy;
  $("file").disabled = !idle;
  $("eraser").disabled = !open;
  $("undo").disabled = !(open && idle && state.strokes.length);
  $("clear").disabled = !(open && idle && visibleStrokes().length);
  $("inpaint").disabled = !(open && idle);
  $("split").disabled = !state.resultUrl;
  $("download").setAttribute("aria-disabled", String(!(state.resultUrl && idle)));
  $("stage").classList.toggle("busy", state.busy);
}

function megapixels(width, height) {
  return (width * height / 1e6).toFixed(1);
}

// -- opening a photo ---------------------------------------------------------------------------

function mimeType(file) {
  return file.type || TYPES[file.name.split(".").pop().toLowerCase()] || "";
}

function loadImage(url) {
  const image = new Image();
  image.src = url;
  return image.decode().then(() => image);
}

// The EXIF orientation (1-8) of a JPEG's first bytes; 1 when it has none.
function exifOrientation(buffer) {
  const view = new DataView(buffer);
  if (view.byteLength < 4 || view.getUint16(0) !== 0xffd8) return 1;
  for (let at = 2; at + 10 <= view.byteLength; at += 2 + view.getUint16(at + 2)) {
    const marker = view.getUint16(at);
    const exif = marker === 0xffe1 && view.getUint32(at + 4) === 0x45786966;  // APP1 holding "Exif\0\0"
    if (exif) return tiffOrientation(view, at + 10);
    if ((marker & 0xff00) !== 0xff00 || marker === 0xffda) break;  // not a marker, or the scan starts
  }
  return 1;
}

// Tag 0x0112 of the first IFD of the TIFF structure at `start` (EXIF's payload).
function tiffOrientation(view, start) {
  if (start + 8 > view.byteLength) return 1;
  const little = view.getUint16(start) === 0x4949;  // "II"
  const ifd = start + view.getUint32(start + 4, little);
  const count = ifd + 2 <= view.byteLength ? view.getUint16(ifd, little) : 0;
  for (let entry = ifd + 2; entry < ifd + 2 + 12 * count && entry + 12 <= view.byteLength; entry += 12) {
    if (view.getUint16(entry, little) === 0x0112) return view.getUint16(entry + 8, little);
  }
  return 1;
}

async function openPhoto(file) {
  if (state.busy) return;
  const type = mimeType(file);
  if (!Object.values(TYPES).includes(type)) {
    setStatus(`${file.name || "That"} is not a PNG, JPEG, WebP or BMP image${type ? ` (${type})` : ""}.`, "error");
    return;
  }
  const url = URL.createObjectURL(file);
  let image;
  try {
    image = await loadImage(url);
  } catch {
    URL.revokeObjectURL(url);
    setStatus(`Cannot read ${file.name}: this browser cannot decode it.`, "error");
    return;
  }
  const orientation = type === "image/jpeg" ? exifOrientation(await file.slice(0, 1 << 16).arrayBuffer()) : 1;
  forgetPhoto();
  Object.assign(state, {
    name: (file.name || "photo").replace(/\.[^.]*$/, "") || "photo",
    originalUrl: url,
    source: file,
    reencode: orientation > 1 && orientation <= 8 ? image : null,
    width: image.naturalWidth,
    height: image.naturalHeight,
    strokes: [],
  });
  $("photo").src = $("original").src = url;
  $("hint").hidden = true;
  $("stage").hidden = false;
  layout();
  updateControls();
  const size = `${state.width}×${state.height} (${megapixels(state.width, state.height)} MP)`;
  setStatus(`${file.name || "Pasted image"}: ${size}. Paint over what to remove, then press Inpaint.`);
}

function forgetPhoto() {
  for (const url of [state.originalUrl, state.resultUrl]) if (url) URL.revokeObjectURL(url);
  state.originalUrl = state.resultUrl = null;
  $("split").value = 0;
  showSplit();
  $("download").removeAttribute("href");
}

// The first image among dropped or pasted files, else the first file (to say why it is refused).
function firstImageFile(files) {
  const all = Array.from(files || []);
  return all.find((file) => mimeType(file).startsWith("image/")) || all[0] || null;
}

// -- layout and the mask on screen -------------------------------------------------------------

// Fit the photo to the workspace; the mask canvas gets the displayed size in device pixels.
function layout() {
  if (!state.width) return;
  const workspace = $("workspace"), margin = 16;
  const scale = Math.min((workspace.clientWidth - margin) / state.width,
                         (workspace.clientHeight - margin) / state.height);
  const width = Math.max(1, Math.floor(state.width * scale));
  const height = Math.max(1, Math.floor(state.height * scale));
  const stage = $("stage"), mask = $("mask"), ratio = window.devicePixelRatio || 1;
  stage.style.width = `${width}px`;
  stage.style.height = `${height}px`;
  mask.width = Math.round(width * ratio);
  mask.height = Math.round(height * ratio);
  redrawScreen();
}

function screenContext() {
  const mask = $("mask"), context = mask.getContext("2d");
  context.setTransform(mask.width / state.width, 0, 0, mask.height / state.height, 0, 0);  // photo pixels
  return context;
}

// Strokes since the last "clear": the ones that still show.
function visibleStrokes() {
  const cleared = state.strokes.map((stroke) => !!stroke.clear).lastIndexOf(true);
  return state.strokes.slice(cleared + 1);
}

// Draw points[from - 1 ...] of a stroke: on screen in red (erasing cuts it away), on the mask white on black.
function drawStroke(context, stroke, onMask, from = 0) {
  context.globalCompositeOperation = stroke.erase && !onMask ? "destination-out" : "source-over";
  context.strokeStyle = context.fillStyle = onMask ? (stroke.erase ? "#000" : "#fff") : "#f00";
  context.lineWidth = stroke.width;
  context.lineCap = context.lineJoin = "round";
  const points = stroke.points;
  if (points.length === 1) {
    context.beginPath();
    context.arc(points[0][0], points[0][1], stroke.width / 2, 0, 2 * Math.PI);
    context.fill();
    return;
  }
  context.beginPath();
  context.moveTo(...points[Math.max(0, from - 1)]);
  for (let i = Math.max(1, from); i < points.length; i++) context.lineTo(...points[i]);
  context.stroke();
}

function redrawScreen() {
  const context = screenContext();
  context.clearRect(0, 0, state.width, state.height);
  for (const stroke of visibleStrokes()) drawStroke(context, stroke, false);
}

function photoPoint(event) {
  const box = $("mask").getBoundingClientRect();
  return [(event.clientX - box.left) * state.width / box.width,
          (event.clientY - box.top) * state.height / box.height];
}

function startStroke(event) {
  if (state.busy || event.button !== 0) return;
  event.preventDefault();
  $("mask").setPointerCapture(event.pointerId);
  // The brush size is in screen pixels; the stroke keeps it in photo pixels.
  const width = $("brush-size").valueAsNumber * state.width / $("mask").getBoundingClientRect().width;
  const erase = $("eraser").getAttribute("aria-pressed") === "true";
  state.drawing = { erase, width, points: [photoPoint(event)] };
  state.strokes.push(state.drawing);
  drawStroke(screenContext(), state.drawing, false);
  state.drawn = 1;
  updateControls();
}

function extendStroke(event) {
  moveCursor(event);
  if (!state.drawing) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const each of events.length ? events : [event]) state.drawing.points.push(photoPoint(each));
  drawStroke(screenContext(), state.drawing, false, state.drawn);
  state.drawn = state.drawing.points.length;
}

function endStroke() {
  state.drawing = null;
  updateControls();
}

function moveCursor(event) {
  const cursor = $("cursor"), size = $("brush-size").valueAsNumber, box = $("stage").getBoundingClientRect();
  const x = event.clientX - box.left - size / 2, y = event.clientY - box.top - size / 2;
  cursor.hidden = event.type === "pointerleave" || event.pointerType === "touch";
  cursor.style.width = cursor.style.height = `${size}px`;
  cursor.style.transform = `translate(${x}px, ${y}px)`;
}

function undo() {
  if (state.busy || state.drawing || !state.strokes.length) return;
  state.strokes.pop();
  redrawScreen();
  updateControls();
}

function clearMask() {
  if (state.busy || !visibleStrokes().length) return;
  state.strokes.push({ clear: true });  // a step of its own, so Undo brings the strokes back
  redrawScreen();
  updateControls();
}

// -- inpainting --------------------------------------------------------------------------------

function canvasBlob(canvas) {
  return new Promise((resolve, reject) => canvas.toBlob(
    (blob) => (blob ? resolve(blob) : reject(new Error("the browser could not encode a PNG"))), "image/png"));
}

function fullSizeCanvas() {
  const canvas = document.createElement("canvas");
  canvas.width = state.width;
  canvas.height = state.height;
  return canvas;
}

// The mask rule (README, "The mask rule"), as the server applies it: a hole where the level is 128 of 255 or
// more, and holes may cover at most 90 % of the photo.
const HOLE_LEVEL = 128, MOST_HOLES = 0.9, BAND_ROWS = 256;

// The mask at the photo's full resolution: opaque black, the strokes in white, their anti-aliased edges
// decided here by the mask rule, so the page sends exactly the holes the server will fill.
function maskBlob() {
  const canvas = fullSizeCanvas(), context = canvas.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, canvas.width, canvas.height);
  for (const stroke of visibleStrokes()) drawStroke(context, stroke, true);
  const covered = applyMaskRule(context, canvas.width, canvas.height);
  if (covered > MOST_HOLES) {
    const percent = Math.round(covered * 100);
    return Promise.reject(new Error(`the strokes cover ${percent} % of the photo, over ${MOST_HOLES * 100} %: ` +
                                    "nothing is left to fill them from. Undo or erase some, then inpaint again."));
  }
  return canvasBlob(canvas);
}

// Each pixel white (hole) or black by the mask rule, a band of rows at a time (a 24 MP photo never holds a
// second full copy); returns the fraction of the photo that is holes.
function applyMaskRule(context, width, height) {
  let holes = 0;
  for (let top = 0; top < height; top += BAND_ROWS) {
    const band = context.getImageData(0, top, width, Math.min(BAND_ROWS, height - top)), data = band.data;
    for (let i = 0; i < data.length; i += 4) {
      const level = data[i] >= HOLE_LEVEL ? 255 : 0;
      holes += level & 1;
      data[i] = data[i + 1] = data[i + 2] = level;
    }
    context.putImageData(band, 0, top);
  }
  return holes / (width * height);
}

// The file's own bytes; but the server ignores EXIF orientation (as TensorFlow's decoders do), so a
// JPEG the browser shows rotated goes as the pixels shown, in a PNG.
function photoBlob() {
  if (!state.reencode) return Promise.resolve(state.source);
  const canvas = fullSizeCanvas();
  canvas.getContext("2d").drawImage(state.reencode, 0, 0);  // drawImage applies the orientation too
  return canvasBlob(canvas);
}

function base64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function predict(photo, mask) {
  const instance = { image_bytes: { b64: await base64(photo) }, mask_bytes: { b64: await base64(mask) } };
  const body = JSON.stringify({ signature_name: "serving_bytes", instances: [instance] });
  let response;
  try {
    response = await fetch(`${MODEL_URL}:predict`,
                           { method: "POST", headers: { "Content-Type": "application/json" }, body });
  } catch (error) {
    throw new Error(`cannot reach the server (${error.message})`);
  }
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(answer.error || `the server answered ${response.status} ${response.statusText}`);
  }
  return (await fetch(`data:image/png;base64,${answer.predictions[0].b64}`)).blob();
}

async function inpaint() {
  if (state.busy || !state.width) return;
  if (!visibleStrokes().some((stroke) => !stroke.erase)) {
    setStatus("Paint over what to remove first.", "error");
    return;
  }
  state.busy = true;
  updateControls();
  const started = performance.now(), seconds = () => ((performance.now() - started) / 1000).toFixed(1);
  let phase = "Preparing the photo and mask…";
  const tick = () => setStatus(`${phase} ${Math.floor(seconds())} s`, "busy");
  const timer = setInterval(tick, 1000);
  tick();
  try {
    const [photo, mask] = await Promise.all([photoBlob(), maskBlob()]);
    phase = `Inpainting (${((photo.size + mask.size) / 1e6).toFixed(1)} MB sent)…`;
    tick();
    await showResult(await predict(photo, mask));
    setStatus(`Done in ${seconds()} s. Drag Compare to see the photo before; paint again to fix more.`);
  } catch (error) {
    setStatus(`Inpainting failed: ${error.message}`, "error");
  } finally {
    clearInterval(timer);
    state.busy = false;
    updateControls();
  }
}

// Show the result, make it the photo the next Inpaint sends, and offer it for download.
async function showResult(blob) {
  const url = URL.createObjectURL(blob);
  await loadImage(url);  // decoded before it replaces the photo
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  Object.assign(state, { resultUrl: url, source: blob, reencode: null, strokes: [] });
  $("photo").src = url;
  redrawScreen();
  const download = $("download");
  download.href = url;
  download.download = `${state.name}-inpainted.png`;
  showSplit();
}

// The photo before inpainting shows left of the Compare position, the result right of it.
function showSplit() {
  const percent = $("split").valueAsNumber, shown = !!state.resultUrl && percent > 0;
  $("original").hidden = $("divider").hidden = !shown;
  $("original").style.clipPath = `inset(0 ${100 - percent}% 0 0)`;
  $("divider").style.left = `${percent}%`;
}

async function showModelStatus() {
  try {
    const response = await fetch(MODEL_URL);
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `${response.status} ${response.statusText}`);
    const versions = answer.model_version_status.map((each) => `version ${each.version} ${each.state}`);
    if (!state.width) setStatus(`Model ${MODEL}: ${versions.join(", ")}. Open a photo to start.`);
  } catch (error) {
    if (!state.width) setStatus(`Model ${MODEL}: ${error.message}`, "error");
  }
}

// -- wiring ------------------------------------------------------------------------------------

function onKey(event) {
  if ((event.ctrlKey || event.metaKey) && !event.shiftKey && event.key.toLowerCase() === "z") {
    event.preventDefault();
    undo();
  }
}

function wire() {
  const mask = $("mask"), workspace = $("workspace");
  $("file").addEventListener("change", (event) => {
    if (event.target.files[0]) openPhoto(event.target.files[0]);
    event.target.value = "";  // choosing the same file again opens it again
  });
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    workspace.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) workspace.classList.remove("dragging");  // left the window, not a child
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    workspace.classList.remove("dragging");
    const file = firstImageFile(event.dataTransfer && event.dataTransfer.files);
    if (file) openPhoto(file);
  });
  document.addEventListener("paste", (event) => {
    const file = firstImageFile(event.clipboardData && event.clipboardData.files);
    if (file) {
      event.preventDefault();
      openPhoto(file);
    }
  });
  mask.addEventListener("pointerdown", startStroke);
  mask.addEventListener("pointermove", extendStroke);
  mask.addEventListener("pointerup", endStroke);
  mask.addEventListener("pointercancel", endStroke);
  mask.addEventListener("pointerleave", moveCursor);
  $("brush-size").addEventListener("input", (event) => { $("brush-value").value = event.target.value; });
  $("eraser").addEventListener("click", (event) => {
    const button = event.currentTarget;
    button.setAttribute("aria-pressed", String(button.getAttribute("aria-pressed") !== "true"));
  });
  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", clearMask);
  $("inpaint").addEventListener("click", inpaint);
  $("split").addEventListener("input", showSplit);
  document.addEventListener("keydown", onKey);
  new ResizeObserver(layout).observe(workspace);
  updateControls();
  showModelStatus();
}

wire();
