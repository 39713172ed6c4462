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
import { buildStack, cineRate, decodeGray, defaultWindow, renderGray, slicePositions, LruCache } from "./imaging.js";

const PRESETS = {
  lung: [1500, -600],
  mediastinum: [350, 50],
  bone: [2000, 500],
  brain: [80, 40],
  abdomen: [400, 50],
};
const NON_IMAGE = new Set(["SR", "KO", "PR", "DOC", "RTPLAN", "RTSTRUCT", "RTRECORD", "REG", "FID", "AU", "ECG", "HD"]);
const ZOOM_MIN = 0.1;
const ZOOM_MAX = 40;
// The whole series loads by itself, nearest slices first (ahead before behind at each step),
// as far as the cache holds; the visible slice always jumps the queue.
const LOAD_SHARE_OF_CACHE = 0.8;

const root = document.getElementById("lcv");
const $ = (role) => root.querySelector(`[data-role="${role}"]`);
const ui = {
  canvas: $("canvas"),
  viewport: $("viewport"),
  strip: $("strip"),
  slider: $("slider"),
  counter: $("counter"),
  status: $("status"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  preset: $("preset"),
  cine: $("cine"),
  fps: $("fps"),
  playLabel: $("play-label"),
  ov: { tl: $("ov-tl"), tr: $("ov-tr"), bl: $("ov-bl"), br: $("ov-br") },
};
const ctx = ui.canvas.getContext("2d");
const study = root.dataset.study;
const client = new DicomWebClient(root.dataset.base || "/dicom-web");
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
  measurements: [], // {seriesUid, sopInstanceUid, frame, index, points:[[x,y],[x,y]], mm, px, unit}
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
    loading: !d || d.index !== S.index, // the requested slice (`target`) is not on the canvas yet
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
    measurements: S.measurements.map((m) => ({
      seriesUid: m.seriesUid,
      sopInstanceUid: m.sopInstanceUid,
      frame: m.frame,
      index: m.index,
      points: m.points.map((p) => [round(p[0]), round(p[1])]),
      mm: m.mm === null ? null : round(m.mm),
      px: round(m.px),
      unit: m.unit,
    })),
  };
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
  syncControls();
  ensureCurrent();
  prefetch();
  requestDraw();
  if (user) userChanged();
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

function scale() {
  const { rows, cols } = imageSize();
  return Math.min(cssW / cols, cssH / rows) * S.zoom;
}

/** Image pixel coordinates -> canvas CSS pixels. */
function toCanvas(ix, iy) {
  const { rows, cols } = imageSize();
  const k = scale();
  return [cssW / 2 + (ix - cols / 2 + S.pan.x) * k, cssH / 2 + (iy - rows / 2 + S.pan.y) * k];
}

function toImage(cx, cy) {
  const { rows, cols } = imageSize();
  const k = scale();
  return [(cx - cssW / 2) / k + cols / 2 - S.pan.x, (cy - cssH / 2) / k + rows / 2 - S.pan.y];
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
  S.pan.x = (cp[0] - cssW / 2) / k + cols / 2 - ip[0];
  S.pan.y = (cp[1] - cssH / 2) / k + rows / 2 - ip[1];
}

function resize() {
  const r = ui.viewport.getBoundingClientRect();
  cssW = Math.max(1, r.width);
  cssH = Math.max(1, r.height);
  const dpr = window.devicePixelRatio || 1;
  ui.canvas.width = Math.round(cssW * dpr);
  ui.canvas.height = Math.round(cssH * dpr);
  root.style.setProperty("--lcv-top", `${Math.max(0, root.getBoundingClientRect().top + window.scrollY)}px`);
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
  const [x0, y0] = toCanvas(0, 0);
  const k = scale();
  ctx.imageSmoothingEnabled = k < 3;
  ctx.imageSmoothingQuality = "high";
  // Server-rendered grey pictures cannot be re-windowed here, but the invert toggle still works.
  if (img.kind === "bitmap" && S.invert) ctx.filter = "invert(1)";
  ctx.drawImage(source, x0, y0, img.cols * k, img.rows * k);
  ctx.filter = "none";
  drawMeasurements();
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

function measurementLabel(m) {
  if (m.unit === "px") return `${m.px.toFixed(1)} px`;
  return `${m.unit === "mm*" ? "≈" : ""}${m.mm.toFixed(1)} mm`;
}

function drawMeasurements() {
  const e = shownEntry();
  if (!e) return;
  const list = S.measurements.filter((m) => m.seriesUid === S.cur.uid && m.sopInstanceUid === e.sop && m.frame === e.frame);
  if (pending) list.push(pending);
  ctx.save();
  ctx.lineWidth = 2;
  ctx.font = `600 ${coarse ? 15 : 13}px system-ui, sans-serif`;
  for (const m of list) {
    const [a, b] = m.points.map((p) => toCanvas(p[0], p[1]));
    ctx.strokeStyle = "#ffd400";
    ctx.fillStyle = "#ffd400";
    ctx.beginPath();
    ctx.moveTo(a[0], a[1]);
    ctx.lineTo(b[0], b[1]);
    ctx.stroke();
    for (const p of [a, b]) {
      ctx.beginPath();
      ctx.arc(p[0], p[1], 3.5, 0, Math.PI * 2);
      ctx.fill();
    }
    const text = measurementLabel(m);
    const tx = Math.max(a[0], b[0]) + 8;
    const ty = (a[1] + b[1]) / 2;
    ctx.lineWidth = 3;
    ctx.strokeStyle = "rgba(0,0,0,.8)";
    ctx.strokeText(text, tx, ty);
    ctx.fillText(text, tx, ty);
    ctx.lineWidth = 2;
  }
  ctx.restore();
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
  ui.ov.tr.textContent = [`S${value(meta, "00200011", s.number)} · ${s.modality || value(meta, "00080060", "")}`, s.description]
    .filter(Boolean)
    .join("\n");
  const lines = [];
  if (e && !e.info.color && S.wc !== null) lines.push(`窗宽 W ${Math.round(S.ww)}  窗位 L ${Math.round(S.wc)}`);
  if (e && e.info.color) lines.push("彩色 Colour");
  if (S.drawn && S.drawn.img && S.drawn.img.kind === "bitmap" && e && !e.info.color) lines.push("服务器渲染 server-rendered");
  lines.push(`缩放 Zoom ${(S.zoom * 100).toFixed(0)}%`);
  ui.ov.bl.textContent = lines.join("\n");
  const br = [];
  const failed = S.failed && S.failed.series === s && S.failed.index === S.index;
  if (failed) br.push(`⚠ 图像 ${S.index + 1} 加载失败 Im ${S.index + 1} failed to load`);
  else if (!d || d.index !== S.index) br.push(`→ 加载中 Loading Im ${S.index + 1}/${n}`);
  ui.viewport.dataset.loading = String(Boolean(n) && (!d || d.index !== S.index));
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
  if (gesture.tool === "measure" && shown()) {
    const ip = toImage(p[0], p[1]);
    pending = makeMeasurement(shown(), ip, ip); // on the slice the user sees, loaded or not
  }
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
    case "measure": {
      if (!pending) break; // cancelled with Escape
      const ip = toImage(p[0], p[1]);
      pending = makeMeasurement(shown(), pending.points[0], ip);
      requestDraw();
      break;
    }
  }
}

function endGesture() {
  if (gesture && gesture.tool === "measure" && pending) {
    const [a, b] = pending.points.map((q) => toCanvas(q[0], q[1]));
    if (Math.hypot(a[0] - b[0], a[1] - b[1]) >= 4) {
      S.measurements.push(pending);
      userChanged();
    }
    pending = null;
    requestDraw();
  }
  gesture = null;
}

function makeMeasurement(displayed, a, b) {
  const entry = displayed.entry;
  const dx = b[0] - a[0];
  const dy = b[1] - a[1];
  const sp = entry.info.spacing; // [row spacing: vertical, column spacing: horizontal]
  const mm = sp ? Math.hypot(dx * sp[1], dy * sp[0]) : null;
  return {
    seriesUid: S.cur.uid,
    sopInstanceUid: entry.sop,
    frame: entry.frame,
    index: displayed.index,
    points: [[a[0], a[1]], [b[0], b[1]]],
    mm,
    px: Math.hypot(dx, dy),
    unit: sp ? (entry.info.spacingSource === "PixelSpacing" ? "mm" : "mm*") : "px",
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
      pending = null;
      requestDraw();
    },
  };
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

function setTool(tool) {
  if (!["scroll", "wl", "pan", "zoom", "measure"].includes(tool)) return;
  S.tool = tool;
  syncControls();
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
      S.measurements = [];
      requestDraw();
      userChanged();
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
    S.measurements = [];
    for (const m of st.measurements) {
      const s = S.series.find((x) => x.uid === m.seriesUid);
      const entry = s && s.stack && s.stack.find((x) => x.sop === m.sopInstanceUid && x.frame === (m.frame || 1));
      const pts = Array.isArray(m.points) && m.points.length === 2 && m.points.flat().every(Number.isFinite) ? m.points : null;
      if (!entry || !pts) continue;
      const prev = S.cur;
      S.cur = s; // makeMeasurement reads the series uid
      const index = Number.isFinite(m.index) ? m.index : s.stack.indexOf(entry);
      const made = makeMeasurement({ entry, index }, pts[0], pts[1]);
      S.cur = prev;
      S.measurements.push(made);
    }
  }
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
  // The first series that has images.
  let lastErr = null;
  for (const s of S.series) {
    try {
      await selectSeries(s);
      if (s.stack && s.stack.length) break;
    } catch (err) {
      lastErr = err;
    }
  }
  if (!S.cur || !S.cur.stack || !S.cur.stack.length) throw lastErr || new Error("no images");
  ready.then(() => loadThumbnails(), () => {});
}

main().catch((err) => {
  if (failFirst) failFirst(err);
});
