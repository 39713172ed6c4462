// Measurement geometry and statistics for the viewer's tools, and the orientation and scale
// helpers of its overlay. No DOM here: viewer.js draws, this module computes, so tests and the
// MPR page can use the same numbers.
//
// Coordinates are image pixels with the DICOM SCOORD convention: the top-left corner of the
// image is (0, 0) and the centre of the top-left pixel is (0.5, 0.5). A region contains the
// pixels whose centres lie inside it.

/** Points each tool takes, in drawing order. */
export const TOOL_POINTS = { length: 2, angle: 3, rect: 2, ellipse: 2, probe: 1, arrow: 2 };

/** The measurement type each pointer tool draws ("measure" is the length tool's old name). */
export const TYPE_OF_TOOL = { measure: "length", angle: "angle", rect: "rect", ellipse: "ellipse", probe: "probe", arrow: "arrow" };

/** The unit of modality values: Hounsfield units for CT (the modality LUT gives HU), else none. */
export function valueUnit(modality) {
  return modality === "CT" ? "HU" : "";
}

/** Millimetre distance of an image-pixel step (dx, dy), or null without spacing. */
function mmOf(dx, dy, spacing) {
  return spacing ? Math.hypot(dx * spacing[1], dy * spacing[0]) : null;
}

/** Angle ABC at vertex B in degrees, in physical space (pixels need not be square). */
export function angleDegrees(a, b, c, spacing) {
  const [sy, sx] = spacing || [1, 1];
  const u = [(a[0] - b[0]) * sx, (a[1] - b[1]) * sy];
  const v = [(c[0] - b[0]) * sx, (c[1] - b[1]) * sy];
  const nu = Math.hypot(u[0], u[1]);
  const nv = Math.hypot(v[0], v[1]);
  if (!nu || !nv) return null;
  const cos = Math.max(-1, Math.min(1, (u[0] * v[0] + u[1] * v[1]) / (nu * nv)));
  return (Math.acos(cos) * 180) / Math.PI;
}

/** The pixels of a rectangle or ellipse given by two opposite bounding-box corners, as a
 * predicate over pixel centres plus the integer bounds to scan (clipped to the image). */
export function regionPixels(type, p, q, rows, cols) {
  const x0 = Math.min(p[0], q[0]);
  const x1 = Math.max(p[0], q[0]);
  const y0 = Math.min(p[1], q[1]);
  const y1 = Math.max(p[1], q[1]);
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  const rx = (x1 - x0) / 2;
  const ry = (y1 - y0) / 2;
  const inside =
    type === "ellipse"
      ? (x, y) => rx > 0 && ry > 0 && ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
      : (x, y) => x >= x0 && x <= x1 && y >= y0 && y <= y1;
  return {
    inside,
    cols: [Math.max(0, Math.floor(x0)), Math.min(cols - 1, Math.ceil(x1))],
    rows: [Math.max(0, Math.floor(y0)), Math.min(rows - 1, Math.ceil(y1))],
  };
}

/** Mean, SD (population), min and max of modality values (stored value x slope + intercept)
 * over the region's pixels; null when the region holds no pixel centre. */
export function regionStats(type, p, q, img, info) {
  const { inside, cols, rows } = regionPixels(type, p, q, img.rows, img.cols);
  const { slope, intercept } = info;
  let n = 0;
  let sum = 0;
  let sum2 = 0;
  let min = Infinity;
  let max = -Infinity;
  for (let y = rows[0]; y <= rows[1]; y++) {
    for (let x = cols[0]; x <= cols[1]; x++) {
      if (!inside(x + 0.5, y + 0.5)) continue;
      const v = img.pixels[y * img.cols + x] * slope + intercept;
      n += 1;
      sum += v;
      sum2 += v * v;
      if (v < min) min = v;
      if (v > max) max = v;
    }
  }
  if (!n) return null;
  const mean = sum / n;
  return { mean, sd: Math.sqrt(Math.max(0, sum2 / n - mean * mean)), min, max, pixels: n };
}

/** Area of the region in mm² (or px² without spacing). */
function regionArea(type, p, q, spacing) {
  const w = Math.abs(q[0] - p[0]) * (spacing ? spacing[1] : 1);
  const h = Math.abs(q[1] - p[1]) * (spacing ? spacing[0] : 1);
  return type === "ellipse" ? (Math.PI * w * h) / 4 : w * h;
}

/** The modality value of the pixel under point p, or null outside the image. */
export function probeValue(p, img, info) {
  const x = Math.floor(p[0]);
  const y = Math.floor(p[1]);
  if (x < 0 || y < 0 || x >= img.cols || y >= img.rows) return null;
  return img.pixels[y * img.cols + x] * info.slope + info.intercept;
}

/**
 * The values of one measurement: {lengthMm?, lengthPx?, angleDeg?, areaMm2?, areaPx2?, mean?,
 * sd?, min?, max?, value?}. `img` is the decoded grey frame ({rows, cols, pixels}) or null (a
 * colour or server-rendered picture: geometry only, no pixel statistics).
 */
export function measure(type, points, info, img) {
  const sp = info.spacing;
  const [a, b, c] = points;
  switch (type) {
    case "length":
    case "arrow": {
      const dx = b[0] - a[0];
      const dy = b[1] - a[1];
      return { lengthMm: mmOf(dx, dy, sp), lengthPx: Math.hypot(dx, dy) };
    }
    case "angle":
      return { angleDeg: c ? angleDegrees(a, b, c, sp) : null };
    case "rect":
    case "ellipse": {
      const stats = img ? regionStats(type, a, b, img, info) : null;
      const area = regionArea(type, a, b, sp);
      return { ...(sp ? { areaMm2: area } : { areaPx2: area }), ...(stats || {}) };
    }
    case "probe":
      return { value: img ? probeValue(a, img, info) : null };
  }
  return {};
}

function fixed(v, digits) {
  return Number.isFinite(v) ? v.toFixed(digits) : "–";
}

/** The label drawn beside a measurement and listed in the panel. */
export function label(m) {
  const v = m.values || {};
  const u = m.valueUnit ? ` ${m.valueUnit}` : "";
  const approx = m.unit === "mm*" ? "≈" : "";
  switch (m.type) {
    case "length":
      return m.unit === "px" ? `${fixed(v.lengthPx, 1)} px` : `${approx}${fixed(v.lengthMm, 1)} mm`;
    case "angle":
      return `${fixed(v.angleDeg, 1)}°`;
    case "rect":
    case "ellipse": {
      const area = m.unit === "px" ? `${fixed(v.areaPx2, 0)} px²` : `${approx}${fixed(v.areaMm2, 1)} mm²`;
      if (!Number.isFinite(v.mean)) return area;
      return `均值 Mean ${fixed(v.mean, 1)}${u} SD ${fixed(v.sd, 1)}\n最小 Min ${fixed(v.min, 0)} 最大 Max ${fixed(v.max, 0)}\n${area}`;
    }
    case "probe":
      return `${fixed(v.value, 0)}${u}`;
    case "arrow":
      return m.text || "";
  }
  return "";
}

// ---- orientation and scale -----------------------------------------------------------------

/** Patient direction letters (LPS: +x left, +y posterior, +z head) of a direction vector:
 * the strongest component first, components weaker than 0.3 left out. */
export function directionLetters(v) {
  const parts = [
    [v[0], "L", "R"],
    [v[1], "P", "A"],
    [v[2], "S", "I"],
  ]
    .filter(([c]) => Math.abs(c) >= 0.3)
    .sort((x, y) => Math.abs(y[0]) - Math.abs(x[0]));
  return parts.map(([c, pos, neg]) => (c > 0 ? pos : neg)).join("");
}

/**
 * Orientation markers at the four edges of the viewport. `orientation` is
 * ImageOrientationPatient (row direction, column direction); `toImage` maps a screen direction
 * [dx, dy] to an image direction (the inverse of the view's rotation and flips).
 */
export function edgeLetters(orientation, toImage) {
  if (!orientation || orientation.length !== 6) return null;
  const row = orientation.slice(0, 3);
  const col = orientation.slice(3, 6);
  const patient = (screen) => {
    const [ix, iy] = toImage(screen);
    return [0, 1, 2].map((k) => ix * row[k] + iy * col[k]);
  };
  const right = directionLetters(patient([1, 0]));
  const bottom = directionLetters(patient([0, 1]));
  const opposite = (s) => s.replace(/[LRPASI]/g, (ch) => ({ L: "R", R: "L", P: "A", A: "P", S: "I", I: "S" })[ch]);
  return { right, left: opposite(right), bottom, top: opposite(bottom) };
}

/** A round scale-bar length (mm) near a fifth of the viewport for `mmPerPx` mm per CSS pixel. */
export function scaleBarMm(mmPerPx, viewportPx) {
  const want = (viewportPx / 5) * mmPerPx;
  const steps = [1, 2, 5, 10, 20, 50, 100, 200, 500];
  let best = steps[0];
  for (const s of steps) if (s <= want) best = s;
  return best;
}
