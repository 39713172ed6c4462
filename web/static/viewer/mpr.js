// Lancang MPR page (多平面重建): one CT/MR series loaded whole into a volume in the browser, and
// its acquired plane and the two orthogonal planes through a shared crosshair point.
//
// Data path as in the viewer (viewer.js): WADO-RS series metadata -> buildStack -> every frame as
// a native little-endian octet-stream (gzip on the wire, inflated by the browser) -> decodeGray
// -> modality LUT into one typed array (volume.js). The geometry is checked first
// (volume.js checkGeometry): a series that is not a regular grid gets a message, not a picture.
//
// For tests: window.lancangMpr = {ready, state(), pixels(view), setPoint([i, j, k]), setSlab(mm)};
// `ready` resolves with state() once the views are drawn or the series is refused.

import { DicomWebClient, HttpError, num, value } from "./dicomweb.js";
import { byRole } from "./dom.js";
import { PRESETS, buildStack, decodeGray, defaultWindow } from "./imaging.js";
import { JPEG_LS_LOSSLESS, jpegLsDecoder } from "./jpegls.js";
import {
  REFUSALS, VIEWS, Volume, anatomicalPlane, checkGeometry, edgeLetters, patientPoint, planePosition, pointInView,
  reslice, slabHalf, viewLayout, viewSize, viewToPoint, windowPixels,
} from "./volume.js";

const PLANE_NAMES = { axial: ["轴位", "Axial"], coronal: ["冠状位", "Coronal"], sagittal: ["矢状位", "Sagittal"] };
const LINE_COLOURS = { axial: "#ff6b6b", coronal: "#58d68d", sagittal: "#f4c542" };
// Browsers open six connections per host over HTTP/1.1; more requests only queue.
const CONCURRENCY = 6;
const MARGIN = 18; // CSS px around the picture, for the orientation letters
const WHEEL_STEP = 100; // wheel delta (px) per plane: one mouse-wheel notch

const root = document.getElementById("mpr");
const ui = byRole(root, [
  "grid", "progress", "progress-bar", "progress-text", "message", "preset", "slab", "status",
  "series-label", "back", "slider", "counter",
]);
const study = root.dataset.study;
const client = new DicomWebClient(root.dataset.base || "/dicom-web");
client.useDecoder(JPEG_LS_LOSSLESS, "image/jls", jpegLsDecoder()); // a third fewer bytes than gzip

const S = {
  status: "loading", // loading | ready | refused | error
  message: "",
  code: "",
  series: root.dataset.series || "",
  modality: "",
  loaded: 0,
  total: 0,
  volume: null,
  point: [0, 0, 0],
  slab: 0,
  wc: null,
  ww: null,
  initialWindow: null,
  tool: "cross",
  active: "axial",
  drawn: 0,
  timings: { loadMs: null, resliceMs: {} },
};

const views = {};
for (const name of VIEWS) {
  const el = ui.grid.querySelector(`[data-view="${name}"]`);
  const part = (p) => el.querySelector(`[data-part="${p}"]`);
  const canvas = el.querySelector("canvas");
  views[name] = {
    name, el, canvas, ctx: canvas.getContext("2d"),
    parts: { name: part("name"), note: part("note"), position: part("position"), window: part("window"),
      top: part("or-top"), right: part("or-right"), bottom: part("or-bottom"), left: part("or-left") },
    cssW: 1, cssH: 1, rect: null, picture: null, pictureKey: "", windowKey: "", offscreen: document.createElement("canvas"),
    wheel: 0,
  };
}

// ---- loading -----------------------------------------------------------------------------

function setProgress() {
  ui.progressBar.max = Math.max(1, S.total);
  ui.progressBar.value = S.loaded;
  ui.progressText.textContent = S.total ? `加载中 ${S.loaded}/${S.total}` : "加载中 Loading…";
}

/** The series to show: the one asked for, else the study's largest CT/MR (or any) series. */
async function pickSeries() {
  if (S.series) return S.series;
  const found = (await client.searchSeries(study)).map((s) => ({
    uid: value(s, "0020000E"), count: num(s, "00201209", 0), modality: value(s, "00080060", ""),
  })).filter((s) => s.uid);
  const score = (s) => (["CT", "MR", "PT", "NM"].includes(s.modality) ? 1e9 : 0) + s.count;
  found.sort((a, b) => score(b) - score(a));
  if (!found.length) throw Object.assign(new Error("no series"), { code: "empty" });
  history.replaceState(null, "", `${location.pathname}?series=${encodeURIComponent(found[0].uid)}`);
  return found[0].uid;
}

function describeSeries(meta, geometry) {
  const m = meta[0] || {};
  S.modality = value(m, "00080060", "");
  const [dx, dy, dz] = geometry ? geometry.spacing : [];
  ui.seriesLabel.textContent = [
    `S${value(m, "00200011", "?")} · ${S.modality}`, value(m, "0008103E", ""),
    geometry ? `${geometry.dims[2]} 层 slices · ${dy.toFixed(2)}×${dx.toFixed(2)}×${dz.toFixed(2)} mm` : "",
  ].filter(Boolean).join(" · ");
}

/** Every slice into the volume, CONCURRENCY requests at a time; stops at the first failure. */
async function loadSlices(volume, entries) {
  let next = 0;
  let failed = null;
  const one = async (entry, k) => {
    const bytes = await client.frame(study, S.series, entry.sop, entry.frame);
    volume.writeSlice(k, decodeGray(bytes, entry.info), entry.info);
  };
  const worker = async () => {
    while (next < entries.length && !failed) {
      const k = next++;
      try {
        await one(entries[k], k).catch((err) => (err instanceof HttpError && err.status >= 500 ? one(entries[k], k) : Promise.reject(err)));
      } catch (err) {
        failed = failed || err;
        return;
      }
      S.loaded++;
      setProgress();
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, entries.length) }, worker));
  if (failed) throw failed;
}

async function load() {
  const t0 = performance.now();
  S.series = await pickSeries();
  ui.back.href = `/studies/${encodeURIComponent(study)}/view`;
  const meta = await client.seriesMetadata(study, S.series);
  const stack = buildStack(meta);
  const check = checkGeometry(stack);
  describeSeries(meta, check.ok ? check.geometry : null);
  if (!check.ok) return refuse(check);
  const integral = stack.every((e) => Number.isInteger(e.info.slope) && Number.isInteger(e.info.intercept));
  let volume;
  try {
    volume = new Volume(check.geometry, { integral });
  } catch (err) {
    return failLoading(err);
  }
  S.total = stack.length;
  setProgress();
  await loadSlices(volume, check.geometry.entries);
  S.timings.loadMs = Math.round(performance.now() - t0);
  start(volume, check.geometry.entries[0].info);
}

/** Chinese text and its English gloss, as the pages write them. */
function bilingual(zh, en) {
  return [document.createTextNode(zh), Object.assign(document.createElement("span"), { className: "en", textContent: en })];
}

function refuse({ code, zh, en }) {
  S.status = "refused";
  S.code = code;
  S.message = `${zh} / ${en}`;
  ui.message.replaceChildren(...bilingual(zh, en));
  ui.message.hidden = false;
  ui.progress.hidden = true;
  root.dataset.status = S.status;
}

function failLoading(err) {
  if (err && REFUSALS[err.code]) {
    const [zh, en] = REFUSALS[err.code];
    return refuse({ code: err.code, zh, en }); // no series, or a volume that outgrew memory
  }
  console.error("[mpr]", err);
  const raw = err instanceof HttpError && [400, 406, 415, 501].includes(err.status);
  const zh = raw ? "服务器未提供原始像素，无法重建 MPR" : "加载失败，请稍后重试";
  const en = raw ? "The server does not send raw pixels: MPR is not available"
    : `Loading failed${err instanceof HttpError ? ` (HTTP ${err.status})` : ""}: please try again`;
  refuse({ code: raw ? "pixels" : "load", zh, en });
  S.status = "error";
  root.dataset.status = "error";
}

// ---- view state --------------------------------------------------------------------------

function start(volume, info) {
  S.volume = volume;
  const g = volume.geometry;
  S.point = g.dims.map((d) => Math.floor((d - 1) / 2));
  const w = info.windowCenter !== null ? defaultWindow(info)
    : { center: (volume.min + volume.max) / 2, width: Math.max(1, volume.max - volume.min) };
  S.initialWindow = [w.center, w.width];
  [S.wc, S.ww] = S.initialWindow;
  for (const v of Object.values(views)) {
    const [zh, en] = PLANE_NAMES[anatomicalPlane(g, v.name)];
    v.parts.name.replaceChildren(...bilingual(zh, en));
    v.canvas.setAttribute("aria-label", `${zh} ${en}`);
    root.querySelector(`[data-tab="${v.name}"]`).replaceChildren(...bilingual(zh, en));
    v.parts.note.textContent = v.name === "axial" ? "原始层面 Acquired" : "重建 Reformatted";
    const letters = edgeLetters(g, v.name);
    for (const side of ["top", "right", "bottom", "left"]) v.parts[side].textContent = letters[side];
  }
  ui.progress.hidden = true;
  S.status = "ready";
  root.dataset.status = "ready";
  syncControls();
  measure();
}

function clampPoint(p) {
  const dims = S.volume.geometry.dims;
  return p.map((v, a) => Math.max(0, Math.min(dims[a] - 1, Math.round(Number(v) || 0))));
}

function setPoint(p) {
  if (!S.volume) return;
  S.point = clampPoint(p);
  requestDraw();
}

function step(view, delta) {
  const fixed = viewLayout(S.volume.geometry, view).fixed;
  const p = [...S.point];
  p[fixed] += delta;
  setPoint(p);
}

function setWindow(center, width) {
  S.wc = center;
  S.ww = Math.max(1, width);
  syncControls();
  requestDraw();
}

function setSlab(mm) {
  const v = Number(mm);
  S.slab = Number.isFinite(v) && v > 0 ? Math.min(200, v) : 0;
  if (Number(ui.slab.value) !== S.slab) ui.slab.value = String(S.slab);
  requestDraw();
}

function setTool(tool) {
  S.tool = tool;
  for (const b of root.querySelectorAll("[data-tool]")) b.setAttribute("aria-pressed", String(b.dataset.tool === tool));
  ui.grid.dataset.tool = tool;
}

function setActive(view) {
  S.active = view;
  ui.grid.dataset.active = view;
  for (const t of root.querySelectorAll("[data-tab]")) t.setAttribute("aria-selected", String(t.dataset.tab === view));
  measure();
}

function reset() {
  S.point = S.volume.geometry.dims.map((d) => Math.floor((d - 1) / 2));
  setSlab(0);
  setWindow(...S.initialWindow);
}

function syncControls() {
  const match = Object.entries(PRESETS).find(([, [w, c]]) => S.ww === w && S.wc === c);
  ui.preset.value = match ? match[0] : "";
}

// ---- drawing -----------------------------------------------------------------------------

let drawPending = false;
function requestDraw() {
  if (drawPending || S.status !== "ready") return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    drawAll();
  });
}

/** Canvas sizes follow their boxes (CSS px × devicePixelRatio). */
function measure() {
  const dpr = window.devicePixelRatio || 1;
  root.style.setProperty("--stage-top", `${Math.max(0, root.getBoundingClientRect().top + window.scrollY)}px`);
  for (const v of Object.values(views)) {
    const r = v.el.getBoundingClientRect();
    v.cssW = Math.max(1, r.width);
    v.cssH = Math.max(1, r.height);
    v.canvas.width = Math.round(v.cssW * dpr);
    v.canvas.height = Math.round(v.cssH * dpr);
  }
  requestDraw();
}

/** Where the picture sits in the canvas (CSS px), fitted with its physical aspect. */
function pictureRect(v) {
  const { width, height, pixelMm } = viewSize(S.volume.geometry, v.name);
  const mmW = width * pixelMm[0];
  const mmH = height * pixelMm[1];
  const k = Math.max(1e-6, Math.min((v.cssW - 2 * MARGIN) / mmW, (v.cssH - 2 * MARGIN) / mmH));
  const w = mmW * k;
  const h = mmH * k;
  return { x: (v.cssW - w) / 2, y: (v.cssH - h) / 2, w, h, width, height };
}

function updatePicture(v) {
  const key = `${S.point[viewLayout(S.volume.geometry, v.name).fixed]}|${S.slab}`;
  if (v.pictureKey !== key) {
    const t = performance.now();
    v.picture = reslice(S.volume, v.name, S.point, S.slab, v.picture && v.picture.data);
    S.timings.resliceMs[v.name] = Math.round((performance.now() - t) * 100) / 100;
    v.pictureKey = key;
    v.windowKey = "";
  }
  const wkey = `${key}|${S.wc}|${S.ww}`;
  if (v.windowKey === wkey) return;
  const { width, height, data } = v.picture;
  if (v.offscreen.width !== width || v.offscreen.height !== height) {
    v.offscreen.width = width;
    v.offscreen.height = height;
    v.image = v.offscreen.getContext("2d").createImageData(width, height);
  }
  windowPixels(data, S.wc, S.ww, new Uint32Array(v.image.data.buffer));
  v.offscreen.getContext("2d").putImageData(v.image, 0, 0);
  v.windowKey = wkey;
}

function drawAll() {
  if (!S.volume) return;
  for (const v of Object.values(views)) {
    if (!v.el.offsetParent && v.name !== S.active) continue; // hidden tab on a phone
    updatePicture(v);
    drawView(v);
  }
  updateStatus();
  syncSlider();
  S.drawn++;
  document.dispatchEvent(new CustomEvent("mpr:rendered", { detail: state() }));
}

function drawView(v) {
  const dpr = window.devicePixelRatio || 1;
  const ctx = v.ctx;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, v.cssW, v.cssH);
  const r = pictureRect(v);
  v.rect = r;
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(v.offscreen, r.x, r.y, r.w, r.h);
  drawCrosshair(v, r);
  const g = S.volume.geometry;
  const fixed = viewLayout(g, v.name).fixed;
  const half = slabHalf(g, fixed, S.slab);
  const slab = S.slab > 0 ? ` · MIP ${((2 * half + 1) * g.spacing[fixed]).toFixed(1)} mm` : "";
  v.parts.position.textContent = `位置 Pos ${planePosition(g, v.name, S.point).toFixed(1)} mm\n`
    + `${S.point[fixed] + 1}/${g.dims[fixed]}${slab}`;
  v.parts.window.textContent = `窗宽 W ${Math.round(S.ww)}  窗位 L ${Math.round(S.wc)}`;
}

/** The two other planes as lines (dashed at their slab's edges), gapped around the point. */
function drawCrosshair(v, r) {
  const g = S.volume.geometry;
  const { h, v: vert } = viewLayout(g, v.name);
  const [px, py] = pointInView(g, v.name, S.point);
  const sx = r.w / r.width;
  const sy = r.h / r.height;
  const cx = r.x + (px + 0.5) * sx;
  const cy = r.y + (py + 0.5) * sy;
  const owner = (axis) => VIEWS.find((name) => viewLayout(g, name).fixed === axis);
  const gap = 10;
  const ctx = v.ctx;
  ctx.save();
  ctx.lineWidth = 1;
  ctx.strokeStyle = LINE_COLOURS[owner(h)];
  line(ctx, cx, r.y, cx, cy - gap);
  line(ctx, cx, cy + gap, cx, r.y + r.h);
  const halfH = slabHalf(g, h, S.slab);
  ctx.strokeStyle = LINE_COLOURS[owner(vert)];
  line(ctx, r.x, cy, cx - gap, cy);
  line(ctx, cx + gap, cy, r.x + r.w, cy);
  const halfV = slabHalf(g, vert, S.slab);
  ctx.setLineDash([4, 4]);
  if (halfH) {
    ctx.strokeStyle = LINE_COLOURS[owner(h)];
    for (const d of [-halfH, halfH + 1]) line(ctx, cx - 0.5 * sx + d * sx, r.y, cx - 0.5 * sx + d * sx, r.y + r.h);
  }
  if (halfV) {
    ctx.strokeStyle = LINE_COLOURS[owner(vert)];
    for (const d of [-halfV, halfV + 1]) line(ctx, r.x, cy - 0.5 * sy + d * sy, r.x + r.w, cy - 0.5 * sy + d * sy);
  }
  ctx.restore();
}

function line(ctx, x0, y0, x1, y1) {
  ctx.beginPath();
  ctx.moveTo(x0, y0);
  ctx.lineTo(x1, y1);
  ctx.stroke();
}

function updateStatus() {
  const g = S.volume.geometry;
  const [x, y, z] = patientPoint(g, S.point);
  const val = S.volume.at(...S.point);
  const unit = S.modality === "CT" ? " HU" : "";
  ui.status.textContent = `十字点 Point (${S.point.join(", ")}) · LPS ${x.toFixed(1)}, ${y.toFixed(1)}, ${z.toFixed(1)} mm`
    + ` · 值 Value ${Math.round(val * 100) / 100}${unit}`;
}

/** The slider pages the active view's plane (phones have no wheel and no arrow keys). */
function syncSlider() {
  const g = S.volume.geometry;
  const fixed = viewLayout(g, S.active).fixed;
  ui.slider.max = String(g.dims[fixed] - 1);
  ui.slider.value = String(S.point[fixed]);
  const [zh] = PLANE_NAMES[anatomicalPlane(g, S.active)];
  ui.counter.textContent = `${zh} ${S.point[fixed] + 1}/${g.dims[fixed]}`;
}

// ---- input -------------------------------------------------------------------------------

let drag = null;

function pictureXY(v, e) {
  const b = v.canvas.getBoundingClientRect();
  const r = v.rect || pictureRect(v);
  return [(e.clientX - b.left - r.x) / r.w * r.width, (e.clientY - b.top - r.y) / r.h * r.height];
}

function moveTo(v, e) {
  const [x, y] = pictureXY(v, e);
  setPoint(viewToPoint(S.volume.geometry, v.name, S.point, x, y));
}

function bindView(v) {
  const c = v.canvas;
  c.addEventListener("contextmenu", (e) => e.preventDefault());
  c.addEventListener("pointerdown", (e) => {
    if (S.status !== "ready" || e.button === 1) return;
    if (S.active !== v.name) setActive(v.name);
    c.focus({ preventScroll: true });
    const wl = (e.pointerType === "mouse" && e.button === 2) || S.tool === "wl";
    drag = { view: v.name, wl, x: e.clientX, y: e.clientY, wc: S.wc, ww: S.ww };
    c.setPointerCapture(e.pointerId);
    if (!wl) moveTo(v, e);
    e.preventDefault();
  });
  c.addEventListener("pointermove", (e) => {
    if (!drag || drag.view !== v.name) return;
    if (!drag.wl) return moveTo(v, e);
    const k = Math.max(0.5, drag.ww / 300);
    setWindow(drag.wc + (e.clientY - drag.y) * k, drag.ww + (e.clientX - drag.x) * k);
  });
  const end = () => {
    drag = null;
  };
  c.addEventListener("pointerup", end);
  c.addEventListener("pointercancel", end);
  c.addEventListener("wheel", (e) => {
    if (S.status !== "ready") return;
    e.preventDefault();
    if (S.active !== v.name) setActive(v.name);
    v.wheel += e.deltaMode === 1 ? e.deltaY * 33 : e.deltaMode === 2 ? e.deltaY * WHEEL_STEP : e.deltaY;
    const steps = Math.trunc(v.wheel / WHEEL_STEP) || (Math.abs(v.wheel) >= WHEEL_STEP / 2 ? Math.sign(v.wheel) : 0);
    if (steps) {
      v.wheel = 0;
      step(v.name, steps);
    }
  }, { passive: false });
  c.addEventListener("keydown", (e) => onKey(v, e));
}

function onKey(v, e) {
  if (S.status !== "ready" || e.ctrlKey || e.metaKey || e.altKey) return;
  const n = S.volume.geometry.dims[viewLayout(S.volume.geometry, v.name).fixed];
  const big = Math.max(1, Math.round(n / 10));
  const at = S.point[viewLayout(S.volume.geometry, v.name).fixed];
  const moves = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: big, PageUp: -big, Home: -at, End: n - 1 - at };
  if (e.key in moves) step(v.name, moves[e.key]);
  else if (e.key === "w" || e.key === "W") setTool("wl");
  else if (e.key === "c" || e.key === "C") setTool("cross");
  else if (e.key === "0") reset();
  else if (["1", "2", "3"].includes(e.key)) {
    setActive(VIEWS[Number(e.key) - 1]);
    views[S.active].canvas.focus({ preventScroll: true });
  } else return;
  e.preventDefault();
}

for (const v of Object.values(views)) bindView(v);
for (const b of root.querySelectorAll("[data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
for (const t of root.querySelectorAll("[data-tab]")) t.addEventListener("click", () => setActive(t.dataset.tab));
root.querySelector('[data-action="reset"]').addEventListener("click", () => S.volume && reset());
ui.preset.addEventListener("change", () => {
  const name = ui.preset.value;
  if (!S.volume || !name) return;
  if (name === "default") setWindow(...S.initialWindow);
  else setWindow(PRESETS[name][1], PRESETS[name][0]);
});
ui.slab.addEventListener("change", () => setSlab(ui.slab.value));
ui.slider.addEventListener("input", () => {
  if (!S.volume) return;
  const p = [...S.point];
  p[viewLayout(S.volume.geometry, S.active).fixed] = Number(ui.slider.value);
  setPoint(p);
});
root.querySelector('[data-action="prev"]').addEventListener("click", () => S.volume && step(S.active, -1));
root.querySelector('[data-action="next"]').addEventListener("click", () => S.volume && step(S.active, 1));
ui.slab.addEventListener("input", () => ui.slab.value !== "" && setSlab(ui.slab.value));
new ResizeObserver(() => measure()).observe(ui.grid);

// ---- the page's interface for tests ------------------------------------------------------

function state() {
  const g = S.volume && S.volume.geometry;
  const viewState = {};
  if (g) {
    for (const v of Object.values(views)) {
      const r = v.rect || pictureRect(v);
      const { width, height, pixelMm } = viewSize(g, v.name);
      const fixed = viewLayout(g, v.name).fixed;
      viewState[v.name] = {
        x: Math.round(r.x * 10) / 10, y: Math.round(r.y * 10) / 10, w: Math.round(r.w * 10) / 10,
        h: Math.round(r.h * 10) / 10, width, height, pixelMm,
        plane: anatomicalPlane(g, v.name), position: planePosition(g, v.name, S.point),
        slabPlanes: 2 * slabHalf(g, fixed, S.slab) + 1, letters: edgeLetters(g, v.name),
      };
    }
  }
  return {
    status: S.status, code: S.code, message: S.message, series: S.series, loaded: S.loaded, total: S.total,
    point: [...S.point], views: viewState, slab: S.slab, windowCenter: S.wc, windowWidth: S.ww,
    active: S.active, tool: S.tool, drawn: S.drawn, dims: g ? [...g.dims] : null, spacing: g ? [...g.spacing] : null,
    volumeType: S.volume ? S.volume.data.constructor.name : null, timings: JSON.parse(JSON.stringify(S.timings)),
  };
}

function pixels(view) {
  if (!S.volume || !VIEWS.includes(view)) return null;
  const { width, height, data } = reslice(S.volume, view, S.point, S.slab);
  return { width, height, data: Array.from(data) };
}

const ready = load().catch(failLoading).then(() => new Promise((resolve) => {
  if (S.status !== "ready") return resolve(state());
  requestAnimationFrame(() => requestAnimationFrame(() => resolve(state())));
}));

window.lancangMpr = {
  ready,
  state,
  pixels,
  setPoint: (p) => {
    setPoint(p);
    return state();
  },
  setSlab: (mm) => {
    setSlab(mm);
    return state();
  },
};
