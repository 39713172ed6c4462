// Image model for the viewer: from WADO-RS metadata to a sorted stack of frames, raw pixel
// decoding, the modality + VOI transforms (PS3.3 C.11.1 / C.11.2.1.2) into RGBA, and a
// byte-bounded LRU cache for decoded frames.

import { value, num, nums, values } from "./dicomweb.js";

const T = {
  SOPInstanceUID: "00080018",
  InstanceNumber: "00200013",
  ImagePositionPatient: "00200032",
  ImageOrientationPatient: "00200037",
  SliceLocation: "00201041",
  SliceThickness: "00180050",
  SamplesPerPixel: "00280002",
  PhotometricInterpretation: "00280004",
  NumberOfFrames: "00280008",
  Rows: "00280010",
  Columns: "00280011",
  PixelSpacing: "00280030",
  ImagerPixelSpacing: "00181164",
  BitsAllocated: "00280100",
  BitsStored: "00280101",
  PixelRepresentation: "00280103",
  WindowCenter: "00281050",
  WindowWidth: "00281051",
  RescaleIntercept: "00281052",
  RescaleSlope: "00281053",
  VOILUTFunction: "00281056",
  FrameTime: "00181063",
  CineRate: "00180040",
  RecommendedDisplayFrameRate: "00082144",
  SharedFunctionalGroups: "52009229",
  PerFrameFunctionalGroups: "52009230",
  PixelMeasuresSequence: "00289110",
  PlanePositionSequence: "00209113",
  PlaneOrientationSequence: "00209116",
  FrameVOILUTSequence: "00289132",
  PixelValueTransformationSequence: "00289145",
  FloatPixelData: "7FE00008",
};

// Enhanced (multi-frame) objects keep some attributes in functional groups (PS3.3 C.7.6.16).
function fromGroups(meta, frameIndex, macroTag, tag) {
  const perFrame = values(meta, T.PerFrameFunctionalGroups)[frameIndex];
  for (const group of [perFrame, values(meta, T.SharedFunctionalGroups)[0]]) {
    const item = group && values(group, macroTag)[0];
    if (item && values(item, tag).length) return item;
  }
  return null;
}

function attr(meta, frameIndex, macroTag, tag) {
  if (values(meta, tag).length) return meta;
  return fromGroups(meta, frameIndex, macroTag, tag) || meta;
}

/** Window presets [width, centre] (HU), shared by the viewer and MPR. */
export const PRESETS = {
  lung: [1500, -600],
  mediastinum: [350, 50],
  bone: [2000, 500],
  brain: [80, 40],
  abdomen: [400, 50],
};

/** Everything needed to decode, display and measure one frame. */
export function frameInfo(meta, frameIndex) {
  const photometric = String(value(meta, T.PhotometricInterpretation, "MONOCHROME2")).trim().toUpperCase();
  const spp = num(meta, T.SamplesPerPixel, 1);
  const ps = attr(meta, frameIndex, T.PixelMeasuresSequence, T.PixelSpacing);
  let spacing = nums(ps, T.PixelSpacing);
  let spacingSource = "PixelSpacing";
  if (!(spacing.length === 2 && spacing[0] > 0 && spacing[1] > 0)) {
    spacing = nums(meta, T.ImagerPixelSpacing);
    spacingSource = "ImagerPixelSpacing";
  }
  if (!(spacing.length === 2 && spacing[0] > 0 && spacing[1] > 0)) {
    spacing = null;
    spacingSource = null;
  }
  const rs = attr(meta, frameIndex, T.PixelValueTransformationSequence, T.RescaleSlope);
  const ri = attr(meta, frameIndex, T.PixelValueTransformationSequence, T.RescaleIntercept);
  const voi = attr(meta, frameIndex, T.FrameVOILUTSequence, T.WindowCenter);
  const wc = num(voi, T.WindowCenter);
  const ww = num(voi, T.WindowWidth);
  const bitsAllocated = num(meta, T.BitsAllocated, 16);
  const color = spp > 1 || photometric === "PALETTE COLOR" || photometric.startsWith("YBR") || photometric === "RGB";
  const pos = attr(meta, frameIndex, T.PlanePositionSequence, T.ImagePositionPatient);
  const ori = attr(meta, frameIndex, T.PlaneOrientationSequence, T.ImageOrientationPatient);
  return {
    rows: num(meta, T.Rows, 0),
    cols: num(meta, T.Columns, 0),
    spp,
    photometric,
    color,
    bitsAllocated,
    bitsStored: num(meta, T.BitsStored, bitsAllocated),
    signed: num(meta, T.PixelRepresentation, 0) === 1,
    slope: num(rs, T.RescaleSlope, 1) || 1,
    intercept: num(ri, T.RescaleIntercept, 0),
    windowCenter: Number.isFinite(wc) && Number.isFinite(ww) && ww > 0 ? wc : null,
    windowWidth: Number.isFinite(wc) && Number.isFinite(ww) && ww > 0 ? ww : null,
    voiFunction: String(value(voi, T.VOILUTFunction, "LINEAR")).toUpperCase(),
    spacing, // [row spacing (vertical), column spacing (horizontal)] in mm
    spacingSource,
    position: nums(pos, T.ImagePositionPatient),
    orientation: nums(ori, T.ImageOrientationPatient),
    sliceLocation: num(meta, T.SliceLocation),
    sliceThickness: num(meta, T.SliceThickness),
    // What our own decoder reads; anything else goes through /rendered.
    rawDecodable: !color && [8, 16, 32].includes(bitsAllocated) && !values(meta, T.FloatPixelData).length,
  };
}

/** Frames per second suggested by the header, or null. */
export function cineRate(meta) {
  const r = num(meta, T.RecommendedDisplayFrameRate) || num(meta, T.CineRate);
  if (r > 0) return Math.min(60, r);
  const ft = num(meta, T.FrameTime);
  return ft > 0 ? Math.min(60, Math.round(1000 / ft)) : null;
}

export function normalOf(o) {
  if (o.length !== 6) return null;
  const n = [o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]];
  return Math.hypot(...n) > 0.5 ? n : null;
}

/**
 * Build the display stack of a series: one entry per frame, instances sorted by their
 * position along the slice normal when every image has one (direction chosen to agree with
 * InstanceNumber), else by InstanceNumber; multi-frame instances expand into their frames.
 */
export function buildStack(metadata) {
  const images = metadata
    .filter((m) => num(m, T.Rows, 0) > 0 && value(m, T.SOPInstanceUID))
    .map((meta) => ({
      meta,
      sop: value(meta, T.SOPInstanceUID),
      number: num(meta, T.InstanceNumber, Number.MAX_SAFE_INTEGER),
      frames: Math.max(1, num(meta, T.NumberOfFrames, 1) | 0),
      info: frameInfo(meta, 0),
    }));
  const byNumber = (a, b) => a.number - b.number || (a.sop < b.sop ? -1 : a.sop > b.sop ? 1 : 0);
  images.sort(byNumber);
  const normal = images.length > 1 ? normalOf(images[0].info.orientation) : null;
  if (normal && images.every((im) => im.info.position.length === 3 && im.frames === 1)) {
    const dist = (im) => im.info.position.reduce((s, v, i) => s + v * normal[i], 0);
    const sorted = [...images].sort((a, b) => dist(a) - dist(b) || byNumber(a, b));
    const first = sorted[0].number;
    const last = sorted[sorted.length - 1].number;
    if (first > last) sorted.reverse();
    images.splice(0, images.length, ...sorted);
  }
  const stack = [];
  for (const im of images) {
    for (let f = 1; f <= im.frames; f++) {
      stack.push({
        sop: im.sop,
        frame: f,
        frames: im.frames,
        meta: im.meta,
        info: f === 1 ? im.info : frameInfo(im.meta, f - 1),
        key: `${im.sop}/${f}`,
      });
    }
  }
  return stack;
}

/**
 * Where each stack entry lies along the slice normal (mm), or null when the series has no
 * geometry (projection images, ultrasound): what synchronised scrolling of two studies uses.
 */
export function slicePositions(stack) {
  if (!stack.length) return null;
  const normal = normalOf(stack[0].info.orientation || []);
  if (!normal || !stack.every((e) => e.info.position && e.info.position.length === 3)) return null;
  return stack.map((e) => e.info.position.reduce((s, v, i) => s + v * normal[i], 0));
}

/**
 * Turn native little-endian frame bytes into a typed array of stored values.
 * Returns {pixels, min, max, bytes} where min/max are stored values.
 */
export function decodeGray(bytes, info) {
  const { rows, cols, bitsAllocated, bitsStored, signed } = info;
  const count = rows * cols;
  const bpp = bitsAllocated / 8;
  const need = count * bpp;
  if (bytes.length < need) throw new Error(`frame has ${bytes.length} bytes, expected ${need}`);
  // Typed arrays need aligned offsets: copy into a fresh buffer (also detaches from the response).
  const buf = bytes.slice(0, need).buffer;
  let px;
  if (bitsAllocated === 8) px = signed ? new Int8Array(buf) : new Uint8Array(buf);
  else if (bitsAllocated === 16) px = signed ? new Int16Array(buf) : new Uint16Array(buf);
  else px = signed ? new Int32Array(buf) : new Uint32Array(buf);
  if (bitsStored < bitsAllocated && bitsStored < 32) {
    // Keep only the stored bits (high bits may hold overlays or junk), sign-extending if signed.
    const shift = 32 - bitsStored;
    const mask = bitsStored >= 32 ? 0xffffffff : (1 << bitsStored) - 1;
    for (let i = 0; i < count; i++) {
      const v = px[i];
      px[i] = signed ? (v << shift) >> shift : v & mask;
    }
  }
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < count; i++) {
    const v = px[i];
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return { pixels: px, min, max, bytes: need };
}

/** The default window of a frame: its header, else the full range of its (rescaled) pixels. */
export function defaultWindow(info, decoded) {
  if (info.windowCenter !== null) return { center: info.windowCenter, width: info.windowWidth };
  if (decoded) {
    const a = decoded.min * info.slope + info.intercept;
    const b = decoded.max * info.slope + info.intercept;
    const lo = Math.min(a, b);
    const hi = Math.max(a, b);
    return { center: (lo + hi) / 2, width: Math.max(1, hi - lo) };
  }
  const bits = info.bitsStored || 16;
  const lo = (info.signed ? -(2 ** (bits - 1)) : 0) * info.slope + info.intercept;
  const hi = lo + (2 ** bits - 1) * info.slope;
  return { center: (lo + hi) / 2, width: Math.max(1, hi - lo) };
}

/** Linear VOI (PS3.3 C.11.2.1.2.1) of one modality value into 0..255. */
function voi(x, c, w, exact) {
  if (exact) {
    if (x <= c - w / 2) return 0;
    if (x > c + w / 2) return 255;
    return ((x - c) / w + 0.5) * 255;
  }
  if (w <= 1) return x < c - 0.5 ? 0 : 255;
  if (x <= c - 0.5 - (w - 1) / 2) return 0;
  if (x > c - 0.5 + (w - 1) / 2) return 255;
  return ((x - (c - 0.5)) / (w - 1) + 0.5) * 255;
}

/**
 * Write the grey frame into `imageData` (RGBA, same size) through rescale, window and the
 * photometric inversion (MONOCHROME1 shows low values white). A lookup table over the stored
 * range keeps this one array read per pixel.
 */
export function renderGray(decoded, info, { center, width, invert }, imageData) {
  const { pixels, min, max } = decoded;
  const out = new Uint32Array(imageData.data.buffer);
  const inv = (info.photometric === "MONOCHROME1") !== Boolean(invert);
  const exact = info.voiFunction === "LINEAR_EXACT";
  const { slope, intercept } = info;
  const grey = (g) => {
    const v = inv ? 255 - Math.round(g) : Math.round(g);
    return (0xff000000 | (v << 16) | (v << 8) | v) >>> 0; // little-endian RGBA
  };
  const range = max - min + 1;
  if (range <= 1 << 20) {
    const lut = new Uint32Array(range);
    for (let i = 0; i < range; i++) lut[i] = grey(voi((i + min) * slope + intercept, center, width, exact));
    for (let i = 0, n = pixels.length; i < n; i++) out[i] = lut[pixels[i] - min];
  } else {
    for (let i = 0, n = pixels.length; i < n; i++) out[i] = grey(voi(pixels[i] * slope + intercept, center, width, exact));
  }
  return imageData;
}

/** Least-recently-used cache bounded by an estimate of bytes held. */
export class LruCache {
  constructor(maxBytes) {
    this.maxBytes = maxBytes;
    this.bytes = 0;
    this.map = new Map();
  }
  get(key) {
    const e = this.map.get(key);
    if (!e) return undefined;
    this.map.delete(key);
    this.map.set(key, e);
    return e.value;
  }
  peek(key) {
    const e = this.map.get(key);
    return e && e.value;
  }
  has(key) {
    return this.map.has(key);
  }
  set(key, value, bytes) {
    this.delete(key);
    this.map.set(key, { value, bytes });
    this.bytes += bytes;
    for (const [k, e] of this.map) {
      if (this.bytes <= this.maxBytes || this.map.size <= 1) break;
      this.map.delete(k);
      this.bytes -= e.bytes;
      if (e.value && typeof e.value.close === "function") e.value.close();
    }
  }
  delete(key) {
    const e = this.map.get(key);
    if (!e) return;
    this.map.delete(key);
    this.bytes -= e.bytes;
    if (e.value && typeof e.value.close === "function") e.value.close();
  }
}
