// Lancang diagnostic viewer (影像浏览).
//
// Design: our own small canvas viewer over standard DICOMweb (PS3.18), chosen over
// Cornerstone3D or dwv because (1) the product ships plain ES2020 modules as static files, with
// no bundler or npm build; (2) the code stays small enough to read and audit in full; and
// (3) diagnostic window/level happens in the browser on the raw pixel values (WADO-RS frames as
// native little-endian octet-streams), not on server-rendered 8-bit pictures.
//
// Data path: QIDO-RS series list -> WADO-RS series metadata -> stack sorted by position ->
// frames (multipart/related octet-stream, explicit VR little endian) decoded and windowed here,
// cached in a byte-bounded LRU with neighbours prefetched. Colour images (RGB, YBR, PALETTE
// COLOR) and any grey frame the server will not send raw come from WADO-RS /rendered instead.
//
// For tests and the coming shared-view feature: window.lancangViewer = {ready, state(),
// apply(state), ...}; `viewer:rendered` fires on document after each draw and
// `viewer:statechange` after each user change, both with state() (plain JSON) as detail.

import { DicomWebClient, HttpError, value, num, personName } from "./dicomweb.js";
import { byRole } from "./dom.js";
import { PRESETS, buildStack, cineRate, decodeGray, defaultWindow, renderGray, slicePositions, LruCache } from "./imaging.js";
import { TOOL_POINTS, TYPE_OF_TOOL, edgeLetters, label, measure, scaleBarMm, valueUnit } from "./tools.js";
import { Annotations } from "./annotations.js";
import { IdlePrefetcher, nextOnWorklist } from "./idle.js";
import { JPEG_LS_LOSSLESS, jpegLsDecoder } from "./jpegls.js";

const NON_IMAGE = new Set(["SR", "KO", "PR", "DOC", "RTPLAN", "RTSTRUCT", "RTRECORD", "REG", "FID", "AU", "ECG", "HD"]);
const ZOOM_MIN = 0.1;
const ZOOM_MAX = 40;
// The whole series loads by itself, nearest slices first (ahead before behind at each step),
// as far as the cache holds; the visible slice always jumps the queue.
const LOAD_SHARE_OF_CACHE = 0.8;

const root = document.getElementById("lcv");
const $ = (role) => root.querySelector(`[data-role="${role}"]`);
const ui = {
  ...byRole(root, [
    "canvas", "viewport", "strip", "slider", "counter", "status", "banner", "banner-text", "preset", "cine",
    "fps", "play-label", "help", "mpr", "m-list", "m-empty", "m-count", "m-status", "k-list", "k-empty",
    "k-count", "k-status",
  ]),
  ov: { tl: $("ov-tl"), tr: $("ov-tr"), bl: $("ov-bl"), br: $("ov-br") },
  orient: { top: $("or-top"), right: $("or-right"), bottom: $("or-bottom"), left: $("or-left") },
  next: $("next-study"),
};
const ctx = ui.canvas.getContext("2d");
const study = root.dataset.study;
const client = new DicomWebClient(root.dataset.base || "/dicom-web");

/** Frames travel JPEG-LS lossless where the server offers it (a third fewer bytes than gzip),
 * from the second frame on: the first image comes native (gzip) so that it never waits for
 * the decoder (~200 KB of WebAssembly and glue on the same line: +0.2 s on 8 Mbit/s). */
function enableJpegLs() {
  if (!client.decoders[JPEG_LS_LOSSLESS]) client.useDecoder(JPEG_LS_LOSSLESS, "image/jls", jpegLsDecoder());
}
const notes = new Annotations(study, [root.dataset.author, root.dataset.username]);
// ?compact=1: one cell of a layout (workspace/layout.html), the picture and its slider only;
// ?series=UID: the series to open first.
const params = new URLSearchParams(location.search);
if (params.get("compact")) root.classList.add("lcv-compact");
const coarse = window.matchMedia && window.matchMedia("(pointer: coarse)").matches;
const memoryMB = navigator.deviceMemory || (coarse ? 2 : 4);
const cache = new LruCache(Math.min(512, Math.max(64, memoryMB * 48)) * 1024 * 1024);

// ---- view state --------------------------------------------------------------------------

const S = {
  series: [], // {uid, number, modality, description, count, stack, loading, view, mode, el}
  cur: null,
  index: 0,
  wc: null,
  ww: null,
  invert: false,
  zoom: 1,
  pan: { x: 0, y: 0 }, // image pixels: the image centre's offset from the viewport centre
  // {type, seriesUid, sopInstanceUid, frame, index, points, values, unit, valueUnit, text, author}
  measurements: [],
  selected: null, // the measurement chosen in the panel (drawn highlighted)
  rotation: 0, // degrees clockwise: 0, 90, 180, 270
  flipH: false,
  flipV: false,
  tool: coarse ? "scroll" : "wl",
  cine: { playing: false, fps: 10 },
  drawn: null, // what the canvas shows: {key, img, series, index, entry}
  failed: null, // {series, index} of a frame that could not be loaded
  announceAfterDraw: false, // a user move to announce again once its frame is on the canvas
};

/** The entry the user asked for (slider, keys, wheel): it may still be loading. */
function currentEntry() {
  return S.cur && S.cur.stack ? S.cur.stack[S.index] : null;
}

/** What the canvas shows, when it belongs to the current series: labels, measurements and
 * the shared view are drawn from this, never from the entry still loading (a slow link
 * showed slice 4's pixels under slice 31's label). */
function shown() {
  return S.drawn && S.drawn.series === S.cur ? S.drawn : null;
}

function shownEntry() {
  const d = shown();
  return d ? d.entry : null;
}

function isColor() {
  const e = currentEntry();
  return Boolean(e && e.info.color);
}

function round(v, digits = 2) {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

/** The whole view as plain JSON: what tests read and what a presenter would send. */
function state() {
  const d = shown();
  const e = d ? d.entry : null;
  const color = isColor();
  return {
    studyUid: study,
    seriesUid: S.cur ? S.cur.uid : null,
    sopInstanceUid: e ? e.sop : null,
    frame: e ? e.frame : null,
    index: d ? d.index : S.index, // the slice on the canvas
    // The requested slice (`target`) is not on the canvas yet, or only its low-resolution preview.
    loading: !d || d.index !== S.index || Boolean(d.preview),
    preview: Boolean(d && d.preview),
    target: S.index,
    // Where the requested slice lies along the slice normal (mm): what a linked prior follows.
    position: positionAt(S.index),
    count: S.cur && S.cur.stack ? S.cur.stack.length : 0,
    windowCenter: color || S.wc === null ? null : round(S.wc),
    windowWidth: color || S.ww === null ? null : round(S.ww),
    invert: S.invert,
    zoom: round(S.zoom, 4),
    pan: { x: round(S.pan.x), y: round(S.pan.y) },
    tool: S.tool,
    cine: { playing: S.cine.playing, fps: S.cine.fps },
    rotation: S.rotation,
    flipH: S.flipH,
    flipV: S.flipV,
    keyImage: Boolean(e && notes.isKey(S.cur.uid, e.sop, e.frame)),
    measurements: S.measurements.map(plainMeasurement),
  };
}

/** A measurement as plain JSON (state(), the shared view, the saved report). */
function plainMeasurement(m) {
  const values = Object.fromEntries(Object.entries(m.values || {}).map(([k, v]) => [k, Number.isFinite(v) ? round(v, 3) : null]));
  const out = {
    type: m.type,
    seriesUid: m.seriesUid,
    sopInstanceUid: m.sopInstanceUid,
    frame: m.frame,
    index: m.index,
    points: m.points.map((p) => [round(p[0], 3), round(p[1], 3)]),
    values,
    unit: m.unit,
    valueUnit: m.valueUnit || "",
    text: m.text || "",
    author: m.author || null,
  };
  if (m.type === "length") {
    // The length tool's original fields, kept for rooms and tests that read them.
    out.mm = Number.isFinite(m.values.lengthMm) ? round(m.values.lengthMm) : null;
    out.px = round(m.values.lengthPx);
  }
  return out;
}

function positionAt(index) {
  if (!S.cur || !S.cur.stack) return null;
  if (S.cur.positions === undefined) S.cur.positions = slicePositions(S.cur.stack);
  const p = S.cur.positions ? S.cur.positions[index] : undefined;
  return p === undefined ? null : round(p);
}

/** The slice nearest to `position` (mm along the normal), or -1 without geometry. */
function indexNearest(position) {
  if (!S.cur || !S.cur.stack) return -1;
  if (S.cur.positions === undefined) S.cur.positions = slicePositions(S.cur.stack);
  const all = S.cur.positions;
  if (!all) return -1;
  let best = 0;
  for (let i = 1; i < all.length; i++) if (Math.abs(all[i] - position) < Math.abs(all[best] - position)) best = i;
  return best;
}

let changeTimer = null;
let changeLast = 0;
/** Tell listeners (the shared view) about a user change; at most every 100 ms, trailing. */
function userChanged() {
  const fire = () => {
    changeTimer = null;
    changeLast = performance.now();
    document.dispatchEvent(new CustomEvent("viewer:statechange", { detail: state() }));
  };
  if (changeTimer) return;
  const wait = Math.max(0, 100 - (performance.now() - changeLast));
  changeTimer = setTimeout(fire, wait);
}

// ---- messages ----------------------------------------------------------------------------

function describeError(err) {
  if (err instanceof HttpError) {
    if (err.status === 0) return "网络错误 network error";
    if (err.status === 401 || err.status === 403) return `无权访问 not allowed (HTTP ${err.status})`;
    if (err.status === 404) return "未找到 not found (HTTP 404)";
    return `服务器错误 server error (HTTP ${err.status})`;
  }
  return String((err && err.message) || err);
}

function showError(zh, en, err) {
  ui.bannerText.textContent = `${zh} ${en}${err ? " — " + describeError(err) : ""}`;
  ui.banner.hidden = false;
  if (err) console.error("[viewer]", en, err);
}

function setStatus(text) {
  ui.status.textContent = text || "";
  ui.status.hidden = !text;
}

// ---- loading -----------------------------------------------------------------------------

/** Runs fetch jobs with bounded concurrency; the visible image jumps the queue. */
class Loader {
  constructor(max) {
    this.max = max;
    this.active = 0;
    this.queue = [];
    this.inflight = new Map();
  }
  load(key, job, { urgent = false } = {}) {
    const known = this.inflight.get(key);
    if (known) {
      if (urgent && known.queued) {
        // A prefetch became the visible image: move it to the front and keep it from being dropped.
        known.queued.urgent = true;
        this.queue.splice(this.queue.indexOf(known.queued), 1);
        this.queue.unshift(known.queued);
      }
      return known.promise;
    }
    let entry;
    const promise = new Promise((resolve, reject) => {
      entry = { key, job, resolve, reject, urgent };
    });
    const record = { promise, queued: entry };
    this.inflight.set(key, record);
    if (urgent) this.queue.unshift(entry);
    else this.queue.push(entry);
    this.pump();
    return promise;
  }
  /** Forget prefetches not yet started (the user moved on). */
  dropPrefetches() {
    const keep = [];
    for (const e of this.queue) {
      if (e.urgent) keep.push(e);
      else {
        this.inflight.delete(e.key);
        e.reject(new DOMException("dropped", "AbortError"));
      }
    }
    this.queue = keep;
  }
  pump() {
    while (this.active < this.max && this.queue.length) {
      const e = this.queue.shift();
      const record = this.inflight.get(e.key);
      if (record) record.queued = null;
      this.active++;
      Promise.resolve()
        .then(e.job)
        .then(e.resolve, e.reject)
        .finally(() => {
          this.active--;
          this.inflight.delete(e.key);
          this.pump();
        });
    }
  }
}
const loader = new Loader(4);
const swallow = (p) => p.catch(() => {});

function renderedWindowParam() {
  if (S.wc === null || S.ww === null) return "";
  return `${round(S.wc)},${round(Math.max(1, S.ww))},linear`;
}

function cacheKey(series, entry, mode) {
  const base = `${series.uid}|${entry.key}`;
  return mode === "rendered-gray" ? `${base}|w=${renderedWindowParam() || "default"}` : base;
}

function modeOf(series, entry) {
  if (entry.info.color) return "rendered-color";
  if (!entry.info.rawDecodable || series.mode === "rendered") return "rendered-gray";
  return "raw";
}

async function fetchBitmap(series, entry, params) {
  const blob = await client.rendered(study, series.uid, entry.sop, entry.frame, params);
  const bitmap = await createImageBitmap(blob);
  return { kind: "bitmap", bitmap, rows: bitmap.height, cols: bitmap.width };
}

/** Get (from cache or network) what is needed to draw stack entry `i` of `series`. */
function loadImage(series, i, { urgent = false } = {}) {
  const entry = series.stack[i];
  let mode = modeOf(series, entry);
  const key = cacheKey(series, entry, mode);
  const hit = cache.get(key);
  if (hit) return Promise.resolve(hit);
  return loader.load(
    key,
    async () => {
      if (mode === "raw") {
        try {
          const bytes = await client.frame(study, series.uid, entry.sop, entry.frame);
          const decoded = decodeGray(bytes, entry.info);
          const img = { kind: "gray", ...decoded, rows: entry.info.rows, cols: entry.info.cols };
          cache.set(key, img, decoded.bytes);
          noteLoaded(series, i, decoded.bytes);
          return img;
        } catch (err) {
          // 406/415/400/501, an unreadable transfer syntax or a short body: the server can still
          // render. Other failures (network, 401/403/404, 5xx) are errors, retried on next view.
          if (err && err.name === "AbortError") throw err;
          if (err instanceof HttpError && ![400, 406, 415, 501].includes(err.status)) throw err;
          console.warn("[viewer] raw frame refused, using /rendered:", err);
          series.mode = "rendered";
          mode = "rendered-gray";
        }
      }
      const params = mode === "rendered-gray" ? { window: renderedWindowParam() } : {};
      const img = await fetchBitmap(series, entry, params);
      const k = cacheKey(series, entry, mode);
      cache.set(k, img, img.rows * img.cols * 4);
      noteLoaded(series, i, img.rows * img.cols * 4);
      if (mode === "rendered-gray") latestBitmap.set(`${series.uid}|${entry.key}`, img, img.rows * img.cols * 4);
      return img;
    },
    { urgent }
  );
}
// Grey frames drawn by the server: the last bitmap per frame, shown while a new window loads.
const latestBitmap = new LruCache(cache.maxBytes / 4);

// Low-resolution previews: a server-rendered 128-pixel picture of a slice (a few KB) asked for
// beside its full frame when nothing of the slice is here yet (a series' first image, a jump).
// On a slow line it lands long before the frame and stands in, stretched to the image's size,
// marked "预览 Preview" and with the loading frame on, until the full frame replaces it.
const PREVIEW_EDGE = 128;
const previews = new LruCache(16 * 1024 * 1024);
const previewsAsked = new Set();
let firstPreviewAt = null;

function previewKey(series, entry) {
  return `${series.uid}|${entry.key}`;
}

function requestPreview(series, entry) {
  const key = previewKey(series, entry);
  if (previews.has(key) || previewsAsked.has(key)) return;
  previewsAsked.add(key);
  const params = { viewport: `${PREVIEW_EDGE},${PREVIEW_EDGE}`, quality: 70 };
  if (!entry.info.color && S.wc !== null && S.ww !== null) params.window = renderedWindowParam();
  client
    .renderedThumbnail(study, series.uid, entry.sop, entry.frame, params)
    .then((blob) => createImageBitmap(blob))
    .then((bitmap) => {
      const img = { kind: "bitmap", bitmap, rows: entry.info.rows, cols: entry.info.cols, preview: true };
      previews.set(key, img, bitmap.width * bitmap.height * 4);
      if (S.cur === series && currentEntry() === entry) requestDraw();
    })
    .catch(() => {}) // the full frame is on its way anyway
    .finally(() => previewsAsked.delete(key));
}

/** Count a loaded slice for the series' progress bar (and how big slices are). */
function noteLoaded(series, i, bytes) {
  if (!series.loaded) series.loaded = new Set();
  series.loaded.add(i);
  series.sliceBytes = bytes;
  updateProgress(series);
}

/** How many slices of the series the cache can hold (all of a typical CT). */
function loadable(series) {
  const per = series.sliceBytes || 512 * 512 * 2;
  return Math.max(1, Math.floor((cache.maxBytes * LOAD_SHARE_OF_CACHE) / per));
}

/** Queue the rest of the series, nearest to the current slice first (1 ahead, 1 behind, 2
 * ahead...). Re-run on every move: queued slices not yet started are re-ordered. */
function prefetch() {
  const s = S.cur;
  // Until the first image is on screen it has the whole link: on 8 Mbit/s, three prefetches
  // beside it made it arrive ~3x later.
  if (!s || !s.stack || firstRender) return;
  loader.dropPrefetches();
  const n = s.stack.length;
  const limit = Math.min(n, loadable(s));
  let queued = 0;
  for (let d = 1; d < n && queued < limit; d++) {
    for (const i of [S.index + d, S.index - d]) {
      if (i < 0 || i >= n || queued >= limit) continue;
      queued++;
      if (!(s.loaded && s.loaded.has(i) && cache.get(cacheKey(s, s.stack[i], modeOf(s, s.stack[i]))))) {
        swallow(loadImage(s, i));
      }
    }
  }
}

/** The series' progress bar in the strip: slices displayable now out of all. */
function updateProgress(series) {
  if (!series.el || !series.stack) return;
  let bar = series.el.querySelector(".lcv-progress");
  if (!bar) {
    bar = document.createElement("span");
    bar.className = "lcv-progress";
    bar.setAttribute("role", "progressbar");
    bar.append(document.createElement("span"));
    series.el.append(bar);
  }
  const n = series.stack.length;
  const done = series.loaded ? series.loaded.size : 0;
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", String(n));
  bar.setAttribute("aria-valuenow", String(done));
  bar.setAttribute("aria-label", `已加载 ${done}/${n} loaded`);
  bar.title = `已加载 ${done}/${n} loaded`;
  bar.firstChild.style.width = `${n ? (100 * done) / n : 0}%`;
  bar.dataset.complete = String(done >= n);
}

let renderedRefetch = null;
/** Make sure the current image is (being) loaded; redraw when it arrives. */
function ensureCurrent() {
  const s = S.cur;
  const entry = currentEntry();
  if (!entry) return;
  const mode = modeOf(s, entry);
  const want = () => S.cur === s && currentEntry() === entry;
  const go = () =>
    loadImage(s, S.index, { urgent: true }).then(
      () => want() && requestDraw(),
      (err) => {
        if (err && err.name === "AbortError") return;
        if (want()) {
          setStatus("");
          S.failed = { series: s, index: S.index };
          updateOverlays();
          showError("无法加载图像。", "Could not load the image.", err);
        }
      }
    );
  const cached = cache.get(cacheKey(s, entry, mode));
  const d = shown();
  if (!cached && mode === "raw" && (!d || Math.abs(d.index - S.index) > 1)) requestPreview(s, entry);
  if (mode === "rendered-gray" && latestBitmap.has(`${s.uid}|${entry.key}`)) {
    // A server-rendered window change: keep showing the old picture, ask once the user pauses.
    clearTimeout(renderedRefetch);
    renderedRefetch = setTimeout(go, 250);
  } else {
    go();
  }
}

// ---- series ------------------------------------------------------------------------------

async function loadSeriesList() {
  let list;
  try {
    list = await client.searchSeries(study);
  } catch (err) {
    showError("无法加载序列列表。", "Could not load the series list.", err);
    setStatus("无法加载 Could not load");
    throw err;
  }
  S.series = list
    .map((q) => ({
      uid: value(q, "0020000E"),
      number: num(q, "00200011", Number.MAX_SAFE_INTEGER),
      modality: value(q, "00080060", ""),
      description: value(q, "0008103E", ""),
      count: num(q, "00201209", 0),
      stack: null,
      loading: null,
      view: null,
      mode: "raw",
      el: null,
    }))
    .filter((s) => s.uid && !NON_IMAGE.has(s.modality))
    .sort((a, b) => a.number - b.number || (a.uid < b.uid ? -1 : 1));
  if (!S.series.length) {
    const err = new Error("no image series");
    showError("该检查没有可显示的影像。", "This study has no images to show.");
    setStatus("没有影像 No images");
    throw err;
  }
  buildStrip();
}

function loadStack(series) {
  if (!series.loading) {
    series.loading = client.seriesMetadata(study, series.uid).then((meta) => {
      series.stack = buildStack(meta);
      series.meta0 = series.stack.length ? series.stack[0].meta : meta[0];
      series.fps = series.stack.length ? cineRate(series.stack[0].meta) : null;
      // Some archives lose non-Latin text in their QIDO index; the metadata has the real one.
      series.description = value(series.meta0, "0008103E", series.description);
      updateStripItem(series);
      return series;
    });
    series.loading.catch(() => {
      series.loading = null; // allow a retry
    });
  }
  return series.loading;
}

function saveView() {
  if (!S.cur) return;
  S.cur.view = { index: S.index, wc: S.wc, ww: S.ww, invert: S.invert, zoom: S.zoom, pan: { ...S.pan } };
}

/** Switch to a series; restores that series' last view, or starts at its default one. */
async function selectSeries(series, { user = false, restore = true } = {}) {
  if (S.cur === series && series.stack) return;
  saveView();
  stopCine();
  S.cur = series;
  for (const s of S.series) if (s.el) s.el.setAttribute("aria-current", s === series ? "true" : "false");
  setStatus("加载中… Loading…");
  try {
    await loadStack(series);
  } catch (err) {
    if (S.cur === series) {
      setStatus("");
      showError("无法加载序列信息。", "Could not load the series metadata.", err);
    }
    throw err;
  }
  if (S.cur !== series) return;
  if (!series.stack.length) {
    setStatus("");
    showError("该序列没有可显示的图像。", "This series has no displayable images.");
    return;
  }
  const v = restore && series.view;
  S.index = v ? Math.min(v.index, series.stack.length - 1) : 0;
  S.invert = v ? v.invert : false;
  S.zoom = v ? v.zoom : 1;
  S.pan = v ? { ...v.pan } : { x: 0, y: 0 };
  S.wc = v ? v.wc : null;
  S.ww = v ? v.ww : null;
  S.cine.fps = series.fps || S.cine.fps;
  ui.fps.value = String(S.cine.fps);
  ui.cine.hidden = series.stack.length < 2;
  root.classList.toggle("lcv-single", series.stack.length < 2);
  ui.slider.max = String(series.stack.length - 1);
  if (S.wc === null) {
    const info = series.stack[S.index].info;
    if (!info.color) {
      const w = info.windowCenter !== null ? defaultWindow(info) : null;
      if (w) [S.wc, S.ww] = [w.center, w.width];
    }
  }
  updateMprLink(series);
  syncControls();
  ensureCurrent();
  prefetch();
  requestDraw();
  if (user) userChanged();
}

/** MPR needs a volume: offered for CT and MR stacks of enough slices. */
function updateMprLink(series) {
  const volume = ["CT", "MR", "PT"].includes(series.modality) && series.stack.length >= 3;
  ui.mpr.hidden = !volume;
  ui.mpr.href = `/viewer/${encodeURIComponent(study)}/mpr?series=${encodeURIComponent(series.uid)}`;
}

// ---- series strip ------------------------------------------------------------------------

function buildStrip() {
  ui.strip.textContent = "";
  for (const s of S.series) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "lcv-series";
    b.dataset.series = s.uid;
    b.setAttribute("aria-current", "false");
    const thumb = document.createElement("span");
    thumb.className = "lcv-thumb";
    const cap = document.createElement("span");
    cap.className = "lcv-cap";
    b.append(thumb, cap);
    b.addEventListener("click", () => {
      swallow(selectSeries(s, { user: true }));
    });
    b.addEventListener("pointerenter", () => swallow(loadStack(s)), { once: true });
    s.el = b;
    ui.strip.append(b);
    updateStripItem(s);
  }
}

function updateStripItem(s) {
  if (!s.el) return;
  const n = s.stack ? s.stack.length : s.count;
  const cap = s.el.querySelector(".lcv-cap");
  cap.textContent = "";
  const line1 = document.createElement("b");
  line1.textContent = `${Number.isFinite(s.number) && s.number < Number.MAX_SAFE_INTEGER ? "S" + s.number + " " : ""}${s.modality}`;
  const line2 = document.createElement("span");
  line2.textContent = s.description || "";
  const line3 = document.createElement("span");
  line3.className = "en";
  line3.textContent = n ? `${n} 幅 images` : "";
  cap.append(line1, line2, line3);
  s.el.title = `${s.description || s.modality} · ${n || "?"} 幅 images`;
}

let thumbnailsSupported = true;
async function loadThumbnail(s) {
  const params = { viewport: "96,96" };
  let blob = null;
  if (thumbnailsSupported) {
    try {
      blob = await client.thumbnail(study, s.uid, params);
    } catch (err) {
      if (err instanceof HttpError && [400, 404, 405, 406, 415, 501].includes(err.status)) thumbnailsSupported = false;
    }
  }
  if (!blob) {
    // Rendered middle instance: from the metadata we already have, else a light QIDO search.
    let sop;
    let frame = null;
    if (s.stack && s.stack.length) {
      const mid = s.stack[Math.floor(s.stack.length / 2)];
      sop = mid.sop;
      if (mid.frames > 1) frame = mid.frame;
    } else {
      const list = await client.searchInstances(study, s.uid);
      list.sort((a, b) => num(a, "00200013", 0) - num(b, "00200013", 0));
      const mid = list[Math.floor(list.length / 2)];
      sop = mid && value(mid, "00080018");
    }
    if (!sop) return;
    blob = await client.renderedThumbnail(study, s.uid, sop, frame, params);
  }
  const img = document.createElement("img");
  img.alt = s.description || s.modality;
  img.decoding = "async";
  const url = URL.createObjectURL(blob);
  img.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
  img.src = url;
  const box = s.el.querySelector(".lcv-thumb");
  box.textContent = "";
  box.append(img);
}

async function loadThumbnails() {
  // Two at a time, after the first image: the picture the doctor waits for comes first.
  const queue = [...S.series];
  const worker = async () => {
    while (queue.length) {
      const s = queue.shift();
      try {
        await loadThumbnail(s);
      } catch (err) {
        const box = s.el && s.el.querySelector(".lcv-thumb");
        if (box) box.textContent = "—";
      }
    }
  };
  await Promise.all([worker(), worker()]);
}

// ---- geometry ----------------------------------------------------------------------------

let cssW = 1;
let cssH = 1;

function imageSize() {
  const e = currentEntry();
  if (S.drawn && S.drawn.img) return { rows: S.drawn.img.rows, cols: S.drawn.img.cols };
  return e ? { rows: e.info.rows || 1, cols: e.info.cols || 1 } : { rows: 1, cols: 1 };
}

function quarterTurned() {
  return S.rotation === 90 || S.rotation === 270;
}

function scale() {
  const { rows, cols } = imageSize();
  const [w, h] = quarterTurned() ? [rows, cols] : [cols, rows];
  return Math.min(cssW / w, cssH / h) * S.zoom;
}

/** The view's turn and flips as a 2x2 matrix [a, b, c, d]: screen = [[a, b], [c, d]] x image
 * (both measured from the image centre). Flips act on the image, then it turns clockwise. */
function viewMatrix() {
  const t = (S.rotation * Math.PI) / 180;
  const c = Math.round(Math.cos(t));
  const s = Math.round(Math.sin(t));
  const fx = S.flipH ? -1 : 1;
  const fy = S.flipV ? -1 : 1;
  return [c * fx, -s * fy, s * fx, c * fy];
}

/** Image direction of a screen direction: the inverse (the transpose) of viewMatrix. */
function screenToImageDir([sx, sy]) {
  const [a, b, c, d] = viewMatrix();
  return [a * sx + c * sy, b * sx + d * sy];
}

/** Image pixel coordinates -> canvas CSS pixels. Pan is in image pixels along the screen. */
function toCanvas(ix, iy) {
  const { rows, cols } = imageSize();
  const k = scale();
  const [a, b, c, d] = viewMatrix();
  const dx = ix - cols / 2;
  const dy = iy - rows / 2;
  return [cssW / 2 + (a * dx + b * dy + S.pan.x) * k, cssH / 2 + (c * dx + d * dy + S.pan.y) * k];
}

function toImage(cx, cy) {
  const { rows, cols } = imageSize();
  const k = scale();
  const [dx, dy] = screenToImageDir([(cx - cssW / 2) / k - S.pan.x, (cy - cssH / 2) / k - S.pan.y]);
  return [dx + cols / 2, dy + rows / 2];
}

function eventPoint(e) {
  const r = ui.canvas.getBoundingClientRect();
  return [e.clientX - r.left, e.clientY - r.top];
}

/** Set the zoom while keeping image point `ip` under canvas point `cp`. */
function zoomAbout(zoom, ip, cp) {
  const { rows, cols } = imageSize();
  S.zoom = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, zoom));
  const k = scale();
  const [a, b, c, d] = viewMatrix();
  const dx = ip[0] - cols / 2;
  const dy = ip[1] - rows / 2;
  S.pan.x = (cp[0] - cssW / 2) / k - (a * dx + b * dy);
  S.pan.y = (cp[1] - cssH / 2) / k - (c * dx + d * dy);
}

function resize() {
  const r = ui.viewport.getBoundingClientRect();
  cssW = Math.max(1, r.width);
  cssH = Math.max(1, r.height);
  const dpr = window.devicePixelRatio || 1;
  ui.canvas.width = Math.round(cssW * dpr);
  ui.canvas.height = Math.round(cssH * dpr);
  root.style.setProperty("--stage-top", `${Math.max(0, root.getBoundingClientRect().top + window.scrollY)}px`);
  requestDraw();
}

// ---- drawing -----------------------------------------------------------------------------

let drawPending = false;
let renderWaiters = [];
const off = document.createElement("canvas");
const offCtx = off.getContext("2d");
let offKey = "";

function requestDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    draw();
  });
}

function pickImage() {
  const s = S.cur;
  const entry = currentEntry();
  if (!entry) return null;
  const mode = modeOf(s, entry);
  const img = cache.get(cacheKey(s, entry, mode));
  if (img) return { key: cacheKey(s, entry, mode), img };
  const preview = previews.get(previewKey(s, entry));
  if (preview) return { key: "preview:" + entry.key, img: preview, preview: true };
  if (mode === "rendered-gray") {
    const stale = latestBitmap.get(`${s.uid}|${entry.key}`);
    if (stale) return { key: "stale:" + entry.key, img: stale, stale: true };
  }
  return null;
}

function draw() {
  const s = S.cur;
  const entry = currentEntry();
  updateOverlays();
  if (!entry) return;
  const picked = pickImage();
  if (!picked) {
    setStatus("加载中… Loading…");
    // Keep this series' previous picture, labelled as what it is, until this one arrives
    // (painted again: a resize clears the canvas); another series' picture must not stand
    // under this series' labels.
    if (shown()) paint(shown());
    else clearCanvas();
    ensureCurrent();
    return;
  }
  setStatus("");
  S.drawn = { ...picked, series: s, index: S.index, entry };
  if (picked.preview) {
    // A stand-in: drawn and labelled as the slice it is, still "loading"; the full frame
    // follows (ensureCurrent asked for it) and only that counts as the first image.
    if (firstPreviewAt === null) firstPreviewAt = performance.now();
    paint(S.drawn);
    updateOverlays();
    document.dispatchEvent(new CustomEvent("viewer:rendered", { detail: state() }));
    return;
  }
  refreshPixelValues(s, entry);
  if (S.failed && S.failed.series === s && S.failed.index === S.index) S.failed = null;
  if (picked.img.kind === "gray" && (S.wc === null || S.ww === null)) {
    const w = defaultWindow(entry.info, picked.img);
    [S.wc, S.ww] = [w.center, w.width];
    syncControls();
  }
  paint(S.drawn);
  updateOverlays();
  if (S.announceAfterDraw) {
    // The move was announced while its frame was loading (with the slice then on the canvas):
    // announce again now that the requested slice is what the canvas shows.
    S.announceAfterDraw = false;
    userChanged();
  }
  const detail = state();
  document.dispatchEvent(new CustomEvent("viewer:rendered", { detail }));
  const waiters = renderWaiters;
  renderWaiters = [];
  for (const w of waiters) w(detail);
  if (firstRender) {
    firstRender(detail);
    firstRender = null;
    enableJpegLs();
    prefetch(); // now the rest of the series
  }
}

/** Draw one displayed record ({key, img, entry}) with its measurements. */
function paint(displayed) {
  const { img, entry } = displayed;
  clearCanvas();
  let source;
  if (img.kind === "gray") {
    const k = `${displayed.key}|${S.wc}|${S.ww}|${S.invert}`;
    if (offKey !== k) {
      if (off.width !== img.cols || off.height !== img.rows) {
        off.width = img.cols;
        off.height = img.rows;
      }
      const data = offCtx.createImageData(img.cols, img.rows);
      renderGray(img, entry.info, { center: S.wc, width: Math.max(1, S.ww), invert: S.invert }, data);
      offCtx.putImageData(data, 0, 0);
      offKey = k;
    }
    source = off;
  } else {
    source = img.bitmap;
  }
  const k = scale();
  const dpr = window.devicePixelRatio || 1;
  const [a, b, c, d] = viewMatrix();
  ctx.imageSmoothingEnabled = k < 3 || Boolean(img.preview); // a stretched preview reads better smooth
  ctx.imageSmoothingQuality = "high";
  // Server-rendered grey pictures cannot be re-windowed here, but the invert toggle still works.
  if (img.kind === "bitmap" && S.invert) ctx.filter = "invert(1)";
  // Canvas transform (x' = a x + c y + e): our matrix's rows are [a b] and [c d].
  ctx.setTransform(dpr * k * a, dpr * k * c, dpr * k * b, dpr * k * d, dpr * (cssW / 2 + S.pan.x * k), dpr * (cssH / 2 + S.pan.y * k));
  ctx.drawImage(source, -img.cols / 2, -img.rows / 2, img.cols, img.rows);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.filter = "none";
  drawMeasurements();
  drawScaleBar(entry);
  updateOrientation(entry);
}

function clearCanvas() {
  const dpr = window.devicePixelRatio || 1;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, ui.canvas.width, ui.canvas.height);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
}

function nextRender() {
  return new Promise((resolve) => renderWaiters.push(resolve));
}

const INK = "#ffd400";
const INK_SELECTED = "#4fd1ff";
const INK_OTHERS = "#ff9f43"; // saved by another reader

function textAt(lines, x, y) {
  const step = coarse ? 17 : 15;
  lines.forEach((line, i) => {
    ctx.lineWidth = 3;
    ctx.strokeStyle = "rgba(0,0,0,.8)";
    ctx.strokeText(line, x, y + i * step);
    ctx.fillText(line, x, y + i * step);
  });
}

function dot(p, r = 3.5) {
  ctx.beginPath();
  ctx.arc(p[0], p[1], r, 0, Math.PI * 2);
  ctx.fill();
}

function polyline(points) {
  ctx.beginPath();
  points.forEach((p, i) => (i ? ctx.lineTo(p[0], p[1]) : ctx.moveTo(p[0], p[1])));
  ctx.stroke();
}

/** One measurement's marks on the canvas, in canvas coordinates; returns where its label goes. */
function drawShape(m, pts) {
  const [a, b, c] = pts;
  switch (m.type) {
    case "length":
      polyline([a, b]);
      dot(a);
      dot(b);
      return [Math.max(a[0], b[0]) + 8, (a[1] + b[1]) / 2];
    case "angle": {
      polyline(c ? [a, b, c] : [a, b]);
      pts.forEach((p) => dot(p));
      return [b[0] + 10, b[1] - 6];
    }
    case "rect":
    case "ellipse": {
      const x0 = Math.min(a[0], b[0]);
      const y0 = Math.min(a[1], b[1]);
      const w = Math.abs(b[0] - a[0]);
      const h = Math.abs(b[1] - a[1]);
      ctx.beginPath();
      if (m.type === "rect") ctx.rect(x0, y0, w, h);
      else ctx.ellipse(x0 + w / 2, y0 + h / 2, w / 2, h / 2, 0, 0, Math.PI * 2);
      ctx.stroke();
      return [x0 + w + 8, y0 + 12];
    }
    case "probe":
      polyline([[a[0] - 7, a[1]], [a[0] + 7, a[1]]]);
      polyline([[a[0], a[1] - 7], [a[0], a[1] + 7]]);
      return [a[0] + 9, a[1] - 8];
    case "arrow": {
      polyline([b, a]);
      const t = Math.atan2(a[1] - b[1], a[0] - b[0]);
      const head = 11;
      ctx.beginPath();
      ctx.moveTo(a[0], a[1]);
      ctx.lineTo(a[0] - head * Math.cos(t - 0.45), a[1] - head * Math.sin(t - 0.45));
      ctx.lineTo(a[0] - head * Math.cos(t + 0.45), a[1] - head * Math.sin(t + 0.45));
      ctx.closePath();
      ctx.fill();
      return [b[0] + 6, b[1] + 4];
    }
  }
  return a;
}

function drawMeasurements() {
  const e = shownEntry();
  if (!e) return;
  const list = S.measurements.filter((m) => m.seriesUid === S.cur.uid && m.sopInstanceUid === e.sop && m.frame === e.frame);
  if (pending) list.push(pending);
  ctx.save();
  ctx.font = `600 ${coarse ? 15 : 13}px system-ui, sans-serif`;
  for (const m of list) {
    const ink = m === S.selected ? INK_SELECTED : m.author && !notes.isMine(m.author) ? INK_OTHERS : INK;
    ctx.strokeStyle = ink;
    ctx.fillStyle = ink;
    ctx.lineWidth = 2;
    const at = drawShape(m, m.points.map((p) => toCanvas(p[0], p[1])));
    const text = m === pending && m.type === "arrow" ? "" : label(m);
    if (text) textAt(text.split("\n"), at[0], at[1]);
  }
  ctx.restore();
}

/** Millimetres per CSS pixel along the screen's x axis, or null without pixel spacing. */
function mmPerScreenPixel(entry) {
  const sp = entry && entry.info.spacing;
  if (!sp) return null;
  const [ix, iy] = screenToImageDir([1, 0]);
  return (Math.abs(ix) * sp[1] + Math.abs(iy) * sp[0]) / scale();
}

function drawScaleBar(entry) {
  const per = mmPerScreenPixel(entry);
  if (!per) return;
  const mm = scaleBarMm(per, cssW);
  const px = mm / per;
  // Bottom centre, above the orientation letter: the corners hold the text overlays.
  const x0 = cssW / 2 - px / 2;
  const x1 = cssW / 2 + px / 2;
  const y = cssH - 26;
  ctx.save();
  ctx.strokeStyle = "#f2f5f8";
  ctx.fillStyle = "#f2f5f8";
  ctx.lineWidth = 2;
  ctx.shadowColor = "#000";
  ctx.shadowBlur = 3;
  polyline([[x0, y - 5], [x0, y], [x1, y], [x1, y - 5]]);
  ctx.font = "12px system-ui, sans-serif";
  ctx.textAlign = "left";
  ctx.fillText(`${mm} mm${entry.info.spacingSource === "PixelSpacing" ? "" : " ≈"}`, x1 + 6, y + 1);
  ctx.restore();
  root.dataset.scaleBarMm = String(mm);
}

/** Patient-direction letters at the viewport's edges, following the turn and flips. */
function updateOrientation(entry) {
  const letters = entry ? edgeLetters(entry.info.orientation, screenToImageDir) : null;
  for (const side of ["top", "right", "bottom", "left"]) {
    ui.orient[side].textContent = letters ? letters[side] : "";
  }
}

function updateOverlays() {
  const s = S.cur;
  const d = shown();
  const e = d ? d.entry : null;
  const n = s && s.stack ? s.stack.length : 0;
  ui.counter.textContent = n ? `${S.index + 1}/${n}` : "0/0";
  if (document.activeElement !== ui.slider) ui.slider.value = String(S.index);
  if (!s) return;
  const meta = (e && e.meta) || s.meta0 || {};
  ui.ov.tl.textContent = [personName(meta, "00100010"), value(meta, "00100020", ""), fmtDate(value(meta, "00080020", ""))]
    .filter(Boolean)
    .join("\n");
  ui.ov.tr.textContent = [`S${value(meta, "00200011", s.number)} · ${s.modality || value(meta, "00080060", "")}`, s.description,
    e && notes.isKey(s.uid, e.sop, e.frame) ? "★ 关键图像 Key image" : ""]
    .filter(Boolean)
    .join("\n");
  const lines = [];
  if (e && !e.info.color && S.wc !== null) lines.push(`窗宽 W ${Math.round(S.ww)}  窗位 L ${Math.round(S.wc)}`);
  if (e && e.info.color) lines.push("彩色 Colour");
  if (S.drawn && S.drawn.img && S.drawn.img.kind === "bitmap" && !S.drawn.preview && e && !e.info.color) lines.push("服务器渲染 server-rendered");
  lines.push(`缩放 Zoom ${(S.zoom * 100).toFixed(0)}%`);
  const turned = [S.rotation ? `旋转 Rot ${S.rotation}°` : "", S.flipH ? "水平翻转 Flip H" : "", S.flipV ? "垂直翻转 Flip V" : ""];
  if (turned.some(Boolean)) lines.push(turned.filter(Boolean).join(" · "));
  ui.ov.bl.textContent = lines.join("\n");
  const br = [];
  const failed = S.failed && S.failed.series === s && S.failed.index === S.index;
  if (failed) br.push(`⚠ 图像 ${S.index + 1} 加载失败 Im ${S.index + 1} failed to load`);
  else if (d && d.preview && d.index === S.index) br.push("预览 Preview · 正在加载全质量 loading full quality");
  else if (!d || d.index !== S.index) br.push(`→ 加载中 Loading Im ${S.index + 1}/${n}`);
  ui.viewport.dataset.loading = String(Boolean(n) && (!d || d.index !== S.index || Boolean(d.preview)));
  root.querySelector('[data-action="key"]').setAttribute("aria-pressed", String(Boolean(e && notes.isKey(s.uid, e.sop, e.frame))));
  if (d) br.push(`图像 Im ${d.index + 1}/${n}`);
  if (e && e.frames > 1) br.push(`帧 Fr ${e.frame}/${e.frames}`);
  if (e && Number.isFinite(e.info.sliceLocation)) br.push(`位置 Loc ${e.info.sliceLocation.toFixed(1)} mm`);
  else if (d && positionAt(d.index) !== null) br.push(`位置 Pos ${positionAt(d.index).toFixed(1)} mm`);
  if (e && Number.isFinite(e.info.sliceThickness)) br.push(`层厚 Thk ${e.info.sliceThickness} mm`);
  if (e) br.push(e.info.spacing ? (e.info.spacingSource === "PixelSpacing" ? "" : "≈ 探测器间距 detector spacing") : "无像素间距 no pixel spacing (px)");
  ui.ov.br.textContent = br.filter(Boolean).join("\n");
}

function fmtDate(d) {
  return /^\d{8}$/.test(d) ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : d;
}

function syncControls() {
  const color = isColor();
  for (const b of root.querySelectorAll("[data-tool]")) {
    b.setAttribute("aria-pressed", String(b.dataset.tool === S.tool));
    if (b.dataset.tool === "wl") b.disabled = color;
  }
  ui.preset.disabled = color;
  const match = Object.entries(PRESETS).find(([, [w, c]]) => S.ww === w && S.wc === c);
  ui.preset.value = match ? match[0] : "";
  root.querySelector('[data-action="invert"]').setAttribute("aria-pressed", String(S.invert));
  root.querySelector('[data-action="play"]').setAttribute("aria-pressed", String(S.cine.playing));
  ui.playLabel.innerHTML = S.cine.playing ? '暂停<span class="en">Pause</span>' : '播放<span class="en">Play</span>';
  root.querySelector('[data-action="play"] .ic').textContent = S.cine.playing ? "⏸" : "▶";
  ui.viewport.dataset.activeTool = S.tool;
}

// ---- navigation --------------------------------------------------------------------------

function go(index, { user = true } = {}) {
  const s = S.cur;
  if (!s || !s.stack || !s.stack.length) return;
  const i = Math.max(0, Math.min(s.stack.length - 1, Math.round(index)));
  if (i === S.index) return;
  S.index = i;
  ensureCurrent();
  prefetch();
  requestDraw();
  if (user) {
    S.announceAfterDraw = true;
    userChanged();
  }
}

function step(delta) {
  go(S.index + delta);
}

function setWindow(center, width, { user = true } = {}) {
  if (isColor()) return;
  S.wc = center;
  S.ww = Math.max(1, width);
  syncControls();
  if (S.cur && S.cur.mode === "rendered") ensureCurrent();
  requestDraw();
  if (user) userChanged();
}

function applyPreset(name) {
  const e = currentEntry();
  if (!e || e.info.color) return;
  if (name === "default") {
    const img = S.drawn && S.drawn.img && S.drawn.img.kind === "gray" ? S.drawn.img : null;
    const w = defaultWindow(e.info, img);
    setWindow(w.center, w.width);
  } else if (PRESETS[name]) {
    const [w, c] = PRESETS[name];
    setWindow(c, w);
  }
}

function resetView() {
  S.zoom = 1;
  S.pan = { x: 0, y: 0 };
  S.invert = false;
  S.rotation = 0;
  S.flipH = false;
  S.flipV = false;
  applyPreset("default");
  syncControls();
  requestDraw();
  userChanged();
}

// ---- cine --------------------------------------------------------------------------------

let cineFrame = 0;
let cineLast = 0;
let cineWaiting = false;

function startCine() {
  if (!S.cur || !S.cur.stack || S.cur.stack.length < 2) return;
  S.cine.playing = true;
  cineLast = performance.now();
  syncControls();
  cineFrame = requestAnimationFrame(cineTick);
}

function stopCine() {
  S.cine.playing = false;
  cancelAnimationFrame(cineFrame);
  syncControls();
}

function cineTick(now) {
  if (!S.cine.playing) return;
  cineFrame = requestAnimationFrame(cineTick);
  if (cineWaiting || now - cineLast < 1000 / S.cine.fps) return;
  const s = S.cur;
  const next = (S.index + 1) % s.stack.length;
  // Advance only onto frames we have, so playback never shows a stale picture.
  cineWaiting = true;
  loadImage(s, next, { urgent: true })
    .then(() => {
      if (S.cine.playing && S.cur === s) {
        cineLast = now;
        S.index = next;
        prefetch();
        requestDraw();
      }
    }, () => {})
    .finally(() => {
      cineWaiting = false;
    });
}

// ---- pointer, touch, wheel and keys ------------------------------------------------------

const pointers = new Map();
let gesture = null;
let pending = null; // a measurement being drawn

function startGesture(e) {
  const p = eventPoint(e);
  const tool = e.pointerType === "mouse" ? (e.button === 2 ? "wl" : e.button === 1 ? "pan" : S.tool) : S.tool;
  gesture = {
    tool: tool === "wl" && isColor() ? "pan" : tool,
    start: p,
    wc: S.wc,
    ww: S.ww,
    zoom: S.zoom,
    pan: { ...S.pan },
    index: S.index,
    anchor: toImage(p[0], p[1]),
    moved: false,
  };
  if (gesture.tool === "wl" && (S.wc === null || S.ww === null)) {
    const e0 = currentEntry();
    const img = S.drawn && S.drawn.img && S.drawn.img.kind === "gray" ? S.drawn.img : null;
    const w = defaultWindow(e0.info, img);
    gesture.wc = w.center;
    gesture.ww = w.width;
  }
  const type = TYPE_OF_TOOL[gesture.tool];
  if (type && shown()) {
    const ip = toImage(p[0], p[1]);
    if (pending && pending.type === "angle" && pending.points.length === 3) {
      pending = makeMeasurement(shown(), "angle", [pending.points[0], pending.points[1], ip]); // the second arm
    } else {
      // On the slice the user sees, loaded or not; a probe is one click.
      pending = makeMeasurement(shown(), type, TOOL_POINTS[type] === 1 ? [ip] : [ip, ip]);
    }
  }
}

/** Move the point being drawn (the last one) to image point ip. */
function dragPendingTo(ip) {
  const pts = pending.points.slice(0, -1);
  pending = makeMeasurement(shown(), pending.type, [...pts, ip]);
  requestDraw();
}

function wlSensitivity() {
  const img = S.drawn && S.drawn.img;
  const e = currentEntry();
  if (img && img.kind === "gray" && e) {
    const range = Math.abs((img.max - img.min) * e.info.slope);
    return Math.max(0.05, range / 600);
  }
  return Math.max(0.5, (S.ww || 256) / 300);
}

function moveGesture(e) {
  const p = eventPoint(e);
  const g = gesture;
  const dx = p[0] - g.start[0];
  const dy = p[1] - g.start[1];
  if (Math.abs(dx) + Math.abs(dy) > 3) g.moved = true;
  switch (g.tool) {
    case "wl": {
      const k = wlSensitivity();
      setWindow(g.wc + dy * k, g.ww + dx * k);
      break;
    }
    case "pan": {
      const k = scale();
      S.pan = { x: g.pan.x + dx / k, y: g.pan.y + dy / k };
      requestDraw();
      userChanged();
      break;
    }
    case "zoom": {
      zoomAbout(g.zoom * Math.exp(-dy / 150), g.anchor, g.start);
      requestDraw();
      userChanged();
      break;
    }
    case "scroll": {
      const n = S.cur && S.cur.stack ? S.cur.stack.length : 1;
      const px = Math.max(6, Math.min(24, cssH / Math.max(1, n)));
      go(g.index - Math.trunc(dy / px)); // finger up (negative dy) goes forward
      break;
    }
    default: {
      if (!pending || !TYPE_OF_TOOL[g.tool]) break; // cancelled with Escape
      dragPendingTo(toImage(p[0], p[1]));
      break;
    }
  }
}

/** Measurements drawn on a preview have no pixel values yet: fill them in once the full frame
 * of their image is decoded. */
function refreshPixelValues(series, entry) {
  const img = decodedFrame(series, entry);
  if (!img) return;
  for (const m of S.measurements) {
    const onIt = m.seriesUid === series.uid && m.sopInstanceUid === entry.sop && m.frame === entry.frame;
    const lacking = ["rect", "ellipse"].includes(m.type) ? !Number.isFinite(m.values.mean) : m.type === "probe" && !Number.isFinite(m.values.value);
    if (onIt && lacking && notes.isMine(m.author)) m.values = measure(m.type, m.points, entry.info, img);
  }
}

/** Whether the last drag of `pending` is long enough on screen to be meant (not a stray click). */
function draggedFarEnough(m) {
  const pts = m.points.slice(-2).map((q) => toCanvas(q[0], q[1]));
  return pts.length < 2 || Math.hypot(pts[0][0] - pts[1][0], pts[0][1] - pts[1][1]) >= 4;
}

function endGesture() {
  if (gesture && TYPE_OF_TOOL[gesture.tool] && pending) {
    if (pending.type === "angle" && pending.points.length === 2) {
      // First arm drawn: the second follows the pointer until the next click (or tap).
      if (draggedFarEnough(pending)) pending = makeMeasurement(shown(), "angle", [...pending.points, pending.points[1]]);
      else pending = null;
    } else {
      if (draggedFarEnough(pending)) addMeasurement(pending);
      pending = null;
    }
    requestDraw();
  }
  gesture = null;
}

function addMeasurement(m) {
  S.measurements.push(m);
  notes.changed();
  renderPanel();
  userChanged();
  if (m.type === "arrow") {
    // An arrow is for its words: the panel opens and its text box takes the typing at once.
    openPanel(true);
    const input = root.querySelector(`[data-role="m-list"] li:last-child input`);
    if (input) input.focus();
  }
}

/** The decoded grey frame of `entry` if it is in the cache (pixel statistics need it). */
function decodedFrame(series, entry) {
  if (modeOf(series, entry) !== "raw") return null;
  const img = cache.get(cacheKey(series, entry, "raw"));
  return img && img.kind === "gray" ? img : null;
}

function makeMeasurement(displayed, type, points, { series = S.cur, values = null, text = "", author = null } = {}) {
  const entry = displayed.entry;
  const sp = entry.info.spacing; // [row spacing: vertical, column spacing: horizontal]
  const img = decodedFrame(series, entry);
  return {
    type,
    seriesUid: series.uid,
    sopInstanceUid: entry.sop,
    frame: entry.frame,
    index: displayed.index,
    points: points.map((q) => [q[0], q[1]]),
    // Values saved by another reader stand as saved until the frame is here to compute them.
    values: values && !img ? values : measure(type, points, entry.info, img),
    unit: sp ? (entry.info.spacingSource === "PixelSpacing" ? "mm" : "mm*") : "px",
    valueUnit: valueUnit(series.modality),
    text,
    author,
  };
}

function pinchInfo() {
  const [a, b] = [...pointers.values()];
  return { dist: Math.hypot(a.x - b.x, a.y - b.y) || 1, mid: [(a.x + b.x) / 2, (a.y + b.y) / 2] };
}

ui.canvas.addEventListener("pointerdown", (e) => {
  if (!currentEntry()) return;
  ui.canvas.focus({ preventScroll: true });
  ui.canvas.setPointerCapture(e.pointerId);
  // A primary pointer means no other contact is down: forget any whose "up" we never saw.
  if (e.isPrimary) pointers.clear();
  const [x, y] = eventPoint(e);
  pointers.set(e.pointerId, { x, y });
  e.preventDefault();
  if (pointers.size === 2) {
    // Two fingers: pinch zoom + pan, whatever the tool; drop the one-finger gesture.
    pending = null;
    const pi = pinchInfo();
    gesture = { tool: "pinch", d0: pi.dist, zoom: S.zoom, anchor: toImage(pi.mid[0], pi.mid[1]) };
    requestDraw();
  } else if (pointers.size === 1) {
    startGesture(e);
  }
});

ui.canvas.addEventListener("pointermove", (e) => {
  const ptr = pointers.get(e.pointerId);
  if (!ptr && pending && pending.type === "angle" && pending.points.length === 3 && shown()) {
    const p = eventPoint(e); // a mouse hovering: the second arm of an angle follows it
    dragPendingTo(toImage(p[0], p[1]));
    return;
  }
  if (!ptr) return;
  [ptr.x, ptr.y] = eventPoint(e);
  if (!gesture) return;
  if (gesture.tool === "pinch") {
    if (pointers.size < 2) return;
    const pi = pinchInfo();
    zoomAbout(gesture.zoom * (pi.dist / gesture.d0), gesture.anchor, pi.mid);
    requestDraw();
    userChanged();
  } else {
    moveGesture(e);
  }
});

function pointerGone(e) {
  const ptr = pointers.get(e.pointerId);
  if (!ptr) return;
  // The release point counts as the last move: a busy page may have coalesced the moves away.
  if (e.type === "pointerup" && pointers.size === 1 && gesture && gesture.tool !== "pinch") {
    [ptr.x, ptr.y] = eventPoint(e);
    moveGesture(e);
  }
  pointers.delete(e.pointerId);
  if (gesture && gesture.tool === "pinch") {
    if (pointers.size === 0) gesture = null;
    return; // lifting one finger of a pinch must not start a new gesture
  }
  if (pointers.size === 0) endGesture();
}
ui.canvas.addEventListener("pointerup", pointerGone);
ui.canvas.addEventListener("pointercancel", pointerGone);
ui.canvas.addEventListener("lostpointercapture", pointerGone);
ui.canvas.addEventListener("contextmenu", (e) => e.preventDefault());

let wheelAccum = 0;
ui.canvas.addEventListener(
  "wheel",
  (e) => {
    if (!currentEntry()) return;
    e.preventDefault();
    const dy = e.deltaMode === 1 ? e.deltaY * 33 : e.deltaMode === 2 ? e.deltaY * cssH : e.deltaY;
    if (e.ctrlKey || e.metaKey) {
      const p = eventPoint(e);
      zoomAbout(S.zoom * Math.exp(-dy * 0.002), toImage(p[0], p[1]), p);
      requestDraw();
      userChanged();
      return;
    }
    if (Math.abs(dy) >= 50) {
      wheelAccum = 0;
      step(Math.sign(dy)); // a mouse notch: one image
    } else {
      wheelAccum += dy; // a touchpad: accumulate
      if (Math.abs(wheelAccum) >= 40) {
        step(Math.sign(wheelAccum));
        wheelAccum = 0;
      }
    }
  },
  { passive: false }
);

document.addEventListener("keydown", (e) => {
  if (!S.cur || !S.cur.stack) return;
  const t = e.target;
  if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
  if (e.altKey || e.ctrlKey || e.metaKey) return;
  const n = S.cur.stack.length;
  const page = Math.max(1, Math.round(n / 10));
  const keys = {
    ArrowDown: () => step(1),
    ArrowRight: () => step(1),
    ArrowUp: () => step(-1),
    ArrowLeft: () => step(-1),
    PageDown: () => step(page),
    PageUp: () => step(-page),
    Home: () => go(0),
    End: () => go(n - 1),
    Escape: () => {
      if (!ui.help.hidden) return toggleHelp(false);
      pending = null;
      requestDraw();
    },
    Delete: () => deleteMeasurement(S.selected || S.measurements[S.measurements.length - 1]),
    Backspace: () => deleteMeasurement(S.selected || S.measurements[S.measurements.length - 1]),
    "?": () => toggleHelp(),
    "[": () => turn(-90),
    "]": () => turn(90),
    h: () => flip("h"),
    v: () => flip("v"),
    i: () => clickAction("invert"),
    "0": () => resetView(),
    k: () => toggleKeyImage(),
    "*": () => toggleKeyImage(),
  };
  for (const [key, tool] of Object.entries(TOOL_KEYS)) keys[key] = () => setTool(tool);
  if (e.key === " " && t && t.tagName !== "BUTTON") {
    e.preventDefault();
    toggleCine();
    return;
  }
  const f = keys[e.key];
  if (f) {
    e.preventDefault();
    f();
  }
});

// ---- toolbar -----------------------------------------------------------------------------

// One key per pointer tool, shown on its button and in the help overlay.
const TOOL_KEYS = { s: "scroll", w: "wl", p: "pan", z: "zoom", l: "measure", a: "angle", r: "rect", e: "ellipse", u: "probe", t: "arrow" };
const TOOLS = new Set(Object.values(TOOL_KEYS));

function setTool(tool) {
  if (!TOOLS.has(tool)) return;
  S.tool = tool;
  pending = null;
  syncControls();
  requestDraw();
}

function turn(degrees) {
  S.rotation = (((S.rotation + degrees) % 360) + 360) % 360;
  requestDraw();
  userChanged();
}

function flip(axis) {
  if (axis === "h") S.flipH = !S.flipH;
  else S.flipV = !S.flipV;
  requestDraw();
  userChanged();
}

function clickAction(action) {
  const b = root.querySelector(`[data-action="${action}"]`);
  if (b) b.click();
}

function toggleHelp(show = ui.help.hidden) {
  ui.help.hidden = !show;
  if (show) ui.help.querySelector("button").focus();
  else ui.canvas.focus({ preventScroll: true });
}

function deleteMeasurement(m) {
  const i = S.measurements.indexOf(m);
  if (i < 0) return;
  S.measurements.splice(i, 1);
  if (S.selected === m) S.selected = null;
  notes.changed();
  renderPanel();
  requestDraw();
  userChanged();
}

function toggleCine() {
  if (S.cine.playing) stopCine();
  else startCine();
  userChanged();
}

root.addEventListener("click", (e) => {
  const b = e.target.closest("button");
  if (!b || !root.contains(b)) return;
  if (b.dataset.tool) return setTool(b.dataset.tool);
  switch (b.dataset.action) {
    case "invert":
      S.invert = !S.invert;
      syncControls();
      requestDraw();
      userChanged();
      break;
    case "reset":
      resetView();
      break;
    case "clear":
      S.measurements = S.measurements.filter((m) => m.author && !notes.isMine(m.author)); // others' stay theirs
      S.selected = null;
      notes.changed();
      renderPanel();
      requestDraw();
      userChanged();
      break;
    case "rotate-left":
      turn(-90);
      break;
    case "rotate-right":
      turn(90);
      break;
    case "flip-h":
      flip("h");
      break;
    case "flip-v":
      flip("v");
      break;
    case "help":
      toggleHelp();
      break;
    case "key":
      toggleKeyImage();
      break;
    case "save-measurements":
      saveMeasurements();
      break;
    case "save-keys":
      saveKeyImages();
      break;
    case "pick":
      pickMeasurement(Number(b.dataset.index));
      break;
    case "remove":
      deleteMeasurement(S.measurements[Number(b.dataset.index)]);
      break;
    case "pick-key": {
      const k = notes.keys[Number(b.dataset.index)];
      if (k) showImage(k.seriesUid, k.sopInstanceUid, k.frame);
      break;
    }
    case "panel":
      openPanel(!root.classList.contains("lcv-panel-open"));
      break;
    case "play":
      toggleCine();
      break;
    case "prev":
      step(-1);
      break;
    case "next":
      step(1);
      break;
    case "dismiss":
      ui.banner.hidden = true;
      break;
  }
});

ui.preset.addEventListener("change", () => {
  if (ui.preset.value) applyPreset(ui.preset.value);
});
ui.slider.addEventListener("input", () => go(Number(ui.slider.value)));
ui.fps.addEventListener("change", () => {
  const v = Math.round(Number(ui.fps.value));
  S.cine.fps = Math.min(60, Math.max(1, Number.isFinite(v) && v > 0 ? v : 10));
  ui.fps.value = String(S.cine.fps);
  userChanged();
});

// ---- measurements panel and key images ---------------------------------------------------

const TYPE_NAMES = { length: "长度 Length", angle: "角度 Angle", rect: "矩形 Rect", ellipse: "椭圆 Ellipse", probe: "点测 Probe", arrow: "箭头 Arrow" };

function el(tag, props = {}, text = "") {
  const node = document.createElement(tag);
  Object.assign(node, props);
  if (text) node.textContent = text;
  return node;
}

/** "S2 Im 14": where an image is, as the reader says it. */
function placeOf(seriesUid, sop, frame) {
  const s = S.series.find((x) => x.uid === seriesUid);
  const i = s && s.stack ? s.stack.findIndex((x) => x.sop === sop && x.frame === (frame || 1)) : -1;
  return `S${s && s.number !== Number.MAX_SAFE_INTEGER ? s.number : "?"} Im ${i >= 0 ? i + 1 : "?"}`;
}

function measurementItem(m, i) {
  const li = el("li");
  if (m === S.selected) li.setAttribute("aria-current", "true");
  const pick = el("button", { type: "button", className: "lcv-pick" });
  pick.dataset.action = "pick";
  pick.dataset.index = String(i);
  pick.append(el("span", { className: "lcv-kind" }, `${TYPE_NAMES[m.type]} · ${placeOf(m.seriesUid, m.sopInstanceUid, m.frame)}`));
  const text = m.type === "arrow" ? "" : label(m);
  if (text) pick.append(el("span", { className: "lcv-val" }, text.replace(/\n/g, " · ")));
  if (m.author && !notes.isMine(m.author)) pick.append(el("span", { className: "lcv-by" }, `${m.author} 已保存 saved`));
  li.append(pick);
  if (notes.isMine(m.author)) {
    const remove = el("button", { type: "button", className: "lcv-remove", title: "删除 Delete" }, "✕");
    remove.dataset.action = "remove";
    remove.dataset.index = String(i);
    remove.setAttribute("aria-label", `删除 Delete ${TYPE_NAMES[m.type]}`);
    li.append(remove);
  }
  if (m.type === "arrow") {
    const input = el("input", { type: "text", value: m.text || "", maxLength: 200, readOnly: !notes.isMine(m.author) });
    input.setAttribute("aria-label", "箭头文字 Arrow text");
    input.placeholder = "标注文字 Label";
    input.dataset.index = String(i);
    li.append(input);
  }
  return li;
}

function keyItem(k, i) {
  const li = el("li");
  const pick = el("button", { type: "button", className: "lcv-pick" }, `★ ${placeOf(k.seriesUid, k.sopInstanceUid, k.frame)}`);
  pick.dataset.action = "pick-key";
  pick.dataset.index = String(i);
  li.append(pick);
  return li;
}

function openPanel(open) {
  root.classList.toggle("lcv-panel-open", open);
  root.querySelector('[data-action="panel"]').setAttribute("aria-pressed", String(open));
  resize();
}

function renderPanel() {
  ui.mList.replaceChildren(...S.measurements.map(measurementItem));
  ui.mEmpty.hidden = S.measurements.length > 0;
  ui.mCount.textContent = `(${S.measurements.length})`;
  ui.kList.replaceChildren(...notes.keys.map(keyItem));
  ui.kEmpty.hidden = notes.keys.length > 0;
  ui.kCount.textContent = `(${notes.keys.length})`;
  root.querySelector('[data-action="save-measurements"]').disabled = !notes.available || !notes.dirty;
  root.querySelector('[data-action="save-keys"]').disabled = !notes.available || !notes.keysDirty;
  const e = shownEntry();
  root.querySelector('[data-action="key"]').setAttribute("aria-pressed", String(Boolean(e && notes.isKey(S.cur.uid, e.sop, e.frame))));
}

function beijingTime() {
  return new Date().toLocaleTimeString("zh-CN", { timeZone: "Asia/Shanghai", hour12: false, hour: "2-digit", minute: "2-digit" });
}

function say(where, text, bad = false) {
  where.textContent = text;
  where.classList.toggle("lcv-bad", bad);
}

/** Show an image of the study: its series, then its slice. */
async function showImage(seriesUid, sop, frame) {
  const s = S.series.find((x) => x.uid === seriesUid);
  if (!s) return;
  await selectSeries(s, { user: true });
  const i = s.stack.findIndex((x) => x.sop === sop && x.frame === (frame || 1));
  if (i >= 0) go(i);
}

function pickMeasurement(i) {
  const m = S.measurements[i];
  if (!m) return;
  S.selected = m;
  renderPanel();
  showImage(m.seriesUid, m.sopInstanceUid, m.frame).then(requestDraw);
}

function toggleKeyImage() {
  const e = shownEntry();
  if (!e || !notes.available) return;
  notes.toggleKey(S.cur.uid, e.sop, e.frame);
  say(ui.kStatus, "未保存 Not saved yet");
  renderPanel();
  updateOverlays();
  userChanged();
}

async function saveMeasurements() {
  const mine = S.measurements.filter((m) => notes.isMine(m.author));
  say(ui.mStatus, "保存中… Saving…");
  try {
    const saved = await notes.saveMeasurements(mine.map(plainMeasurement));
    say(ui.mStatus, `已保存 ${saved.count} 项 · ${beijingTime()} Saved`);
  } catch (err) {
    say(ui.mStatus, `保存失败 Not saved: ${err.message}`, true);
  }
  renderPanel();
}

async function saveKeyImages() {
  say(ui.kStatus, "保存中… Saving…");
  try {
    await notes.saveKeys();
    say(ui.kStatus, `已保存 ${notes.keys.length} 幅 · ${beijingTime()} Saved`);
  } catch (err) {
    say(ui.kStatus, `保存失败 Not saved: ${err.message}`, true);
  }
  renderPanel();
}

/** Saved measurements (every reader's newest report) and key images of the study. */
async function loadNotes() {
  let documents = [];
  try {
    documents = await notes.load();
  } catch {
    notes.available = false;
  }
  if (!notes.available) {
    const why = "无法读取或保存测量与关键图像（权限或网络） Saved measurements and key images are not available here";
    say(ui.mStatus, why, true);
    say(ui.kStatus, why, true);
  }
  for (const doc of documents) {
    for (const m of doc.measurements || []) {
      const s = S.series.find((x) => x.uid === m.seriesUid);
      if (s && !s.stack) await swallow(loadStack(s));
      const made = adoptMeasurement({ ...m, author: doc.author || null });
      if (made) S.measurements.push(made);
    }
  }
  for (const k of notes.keys) {
    const s = S.series.find((x) => x.uid === k.seriesUid);
    if (s && !s.stack) await swallow(loadStack(s));
  }
  notes.dirty = false;
  root.dataset.notesLoaded = "true";
  renderPanel();
  requestDraw();
}

ui.mList.addEventListener("input", (e) => {
  const m = S.measurements[Number(e.target.dataset.index)];
  if (!m || e.target.readOnly) return;
  m.text = e.target.value.slice(0, 200);
  notes.changed();
  root.querySelector('[data-action="save-measurements"]').disabled = !notes.available;
  requestDraw();
});

// ---- the next study and background prefetch ----------------------------------------------

let idle = null;

/** The viewer wants nothing from the network now: no frame loading or queued, nothing held. */
function lineIsIdle() {
  return loader.active === 0 && loader.queue.length === 0 && !gesture && Boolean(S.drawn);
}

/** Priors (the page lists them, most relevant first) and then the next study on the reader's
 * list load in the background while the line is idle. Not in a pane of a comparison, layout
 * or reading page: the page holding the panes is the one reader. */
function startIdlePrefetch() {
  const next = nextOnWorklist(study);
  if (next) {
    ui.next.href = `/studies/${encodeURIComponent(next)}/view`;
    ui.next.hidden = false;
  }
  if (document.body.classList.contains("embedded")) return;
  const priors = Array.from(root.querySelectorAll("[data-prior]"), (a) => a.dataset.prior).slice(0, 1);
  const studies = [...priors, ...(next ? [next] : [])].filter((uid) => uid !== study);
  if (!studies.length) return;
  const background = new DicomWebClient(root.dataset.base || "/dicom-web");
  background.useDecoder(JPEG_LS_LOSSLESS, "image/jls", (bytes) => Promise.resolve(bytes)); // the same requests; no decoding
  idle = new IdlePrefetcher(background, { isIdle: lineIsIdle });
  idle.run(studies).catch(() => {}); // a failed background fetch costs nothing but itself
}

// ---- API for tests and the shared view ---------------------------------------------------

/**
 * Bring the view to `st` (a state() object, possibly partial). Never emits statechange.
 * The pointer tool stays local: a follower keeps the tool they chose.
 */
async function apply(st) {
  if (!st || typeof st !== "object") return state();
  await ready;
  // A local change not yet announced is superseded: announcing it now would echo this state back.
  clearTimeout(changeTimer);
  changeTimer = null;
  if (st.seriesUid && (!S.cur || st.seriesUid !== S.cur.uid)) {
    const s = S.series.find((x) => x.uid === st.seriesUid);
    if (!s) throw new Error(`unknown series ${st.seriesUid}`);
    await selectSeries(s, { restore: false });
  }
  const n = S.cur && S.cur.stack ? S.cur.stack.length : 0;
  if (Number.isFinite(st.index) && n) {
    S.index = Math.max(0, Math.min(n - 1, Math.round(st.index)));
  }
  if (Number.isFinite(st.position) && n) {
    const nearest = indexNearest(st.position);
    if (nearest >= 0) S.index = nearest;
  }
  if (Number.isFinite(st.windowCenter) && Number.isFinite(st.windowWidth) && !isColor()) {
    S.wc = st.windowCenter;
    S.ww = Math.max(1, st.windowWidth);
  }
  if (typeof st.invert === "boolean") S.invert = st.invert;
  if (Number.isFinite(st.zoom)) S.zoom = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, st.zoom));
  if (st.pan && Number.isFinite(st.pan.x) && Number.isFinite(st.pan.y)) S.pan = { x: st.pan.x, y: st.pan.y };
  if (Array.isArray(st.measurements)) {
    S.measurements = st.measurements.map(adoptMeasurement).filter(Boolean);
    S.selected = null;
    renderPanel();
  }
  if ([0, 90, 180, 270].includes(st.rotation)) S.rotation = st.rotation;
  if (typeof st.flipH === "boolean") S.flipH = st.flipH;
  if (typeof st.flipV === "boolean") S.flipV = st.flipV;
  if (st.cine && Number.isFinite(st.cine.fps)) S.cine.fps = Math.min(60, Math.max(1, st.cine.fps));
  if (st.cine && typeof st.cine.playing === "boolean" && st.cine.playing !== S.cine.playing) {
    if (st.cine.playing) startCine();
    else stopCine();
  }
  syncControls();
  // Resolves after the next draw; if the picture cannot load, after 15 s with the state anyway.
  const rendered = Promise.race([nextRender(), new Promise((r) => setTimeout(() => r(state()), 15000))]);
  ensureCurrent();
  prefetch();
  requestDraw();
  return rendered;
}

/** A measurement from plain JSON (the shared view, a saved report) on this study's images, or
 * null when its image or points do not fit. Older states without a type are lengths. */
function adoptMeasurement(m) {
  const type = m && TOOL_POINTS[m.type] ? m.type : "length";
  const s = S.series.find((x) => x.uid === m.seriesUid);
  const entry = s && s.stack && s.stack.find((x) => x.sop === m.sopInstanceUid && x.frame === (m.frame || 1));
  const pts = Array.isArray(m.points) && m.points.length === TOOL_POINTS[type] && m.points.flat().every(Number.isFinite) ? m.points : null;
  if (!entry || !pts) return null;
  const index = Number.isFinite(m.index) ? m.index : s.stack.indexOf(entry);
  return makeMeasurement({ entry, index }, type, pts, { series: s, values: m.values || null, text: String(m.text || "").slice(0, 200), author: m.author || null });
}

let firstRender = null;
let failFirst = null;
const ready = new Promise((resolve, reject) => {
  firstRender = resolve;
  failFirst = reject;
});
ready.catch(() => {}); // the page shows the error itself

window.lancangViewer = {
  ready,
  state,
  apply,
  setTool,
  /** Image pixel (x, y) -> viewport client coordinates, for tests and annotations. */
  imageToClient(x, y) {
    const r = ui.canvas.getBoundingClientRect();
    const [cx, cy] = toCanvas(x, y);
    return { x: r.left + cx, y: r.top + cy };
  },
  clientToImage(x, y) {
    const r = ui.canvas.getBoundingClientRect();
    const [ix, iy] = toImage(x - r.left, y - r.top);
    return { x: ix, y: iy };
  },
  /** Slice positions of the current series (mm along its normal; null without geometry). */
  positions() {
    if (!S.cur || !S.cur.stack) return null;
    if (S.cur.positions === undefined) S.cur.positions = slicePositions(S.cur.stack);
    return S.cur.positions ? S.cur.positions.map((p) => round(p)) : null;
  },
  /** Slices of the current series displayable from the cache now, out of all. */
  progress() {
    const s = S.cur;
    return { loaded: s && s.loaded ? s.loaded.size : 0, total: s && s.stack ? s.stack.length : 0 };
  },
  /** When (performance.now(), ms) the first low-resolution preview was painted, or null. */
  firstPreviewAt() {
    return firstPreviewAt;
  },
  /** What the background prefetch has fetched: {studies, frames, bytes, stopped}. */
  idle() {
    return idle ? { ...idle.done, studies: [...idle.done.studies] } : null;
  },
  /** The study's key images as this reader has them (saved or not). */
  keyImages() {
    return notes.keys.map((k) => ({ ...k }));
  },
  series() {
    return S.series.map((s) => ({ uid: s.uid, number: s.number, modality: s.modality, description: s.description, count: s.stack ? s.stack.length : s.count }));
  },
};

// ---- start -------------------------------------------------------------------------------

async function main() {
  syncControls();
  new ResizeObserver(resize).observe(ui.viewport);
  window.addEventListener("resize", resize);
  resize();
  if (!study) {
    showError("缺少检查标识。", "No study was given.");
    setStatus("");
    throw new Error("no study uid");
  }
  await loadSeriesList();
  // The series asked for, else the first series that has images.
  let lastErr = null;
  const asked = S.series.find((s) => s.uid === params.get("series"));
  for (const s of asked ? [asked, ...S.series.filter((x) => x !== asked)] : S.series) {
    try {
      await selectSeries(s);
      if (s.stack && s.stack.length) break;
    } catch (err) {
      lastErr = err;
    }
  }
  if (!S.cur || !S.cur.stack || !S.cur.stack.length) throw lastErr || new Error("no images");
  ready.then(() => loadThumbnails(), () => {});
  ready.then(() => loadNotes(), () => {});
  ready.then(() => startIdlePrefetch(), () => {});
}

main().catch((err) => {
  if (failFirst) failFirst(err);
});
