// DICOMweb (PS3.18) client for the viewer: QIDO-RS searches, WADO-RS metadata, frames and
// rendered images, plus the small parsers they need (Content-Type parameters, multipart/related,
// DICOM JSON attribute access). No dependencies; every request is same-origin with cookies.

export const EXPLICIT_LE = "1.2.840.10008.1.2.1";
const IMPLICIT_LE = "1.2.840.10008.1.2";
// Both transfer syntaxes carry the same little-endian native pixel bytes.
const NATIVE_LE = new Set([EXPLICIT_LE, IMPLICIT_LE]);

export class HttpError extends Error {
  constructor(status, url, detail = "") {
    super(`HTTP ${status}${detail ? ": " + detail : ""}`);
    this.name = "HttpError";
    this.status = status;
    this.url = url;
  }
}

// ---- DICOM JSON (PS3.18 F.2) -------------------------------------------------------------

/** All values of a tag ("00280010") in a DICOM JSON object, or [] */
export function values(obj, tag) {
  const el = obj && obj[tag];
  return el && Array.isArray(el.Value) ? el.Value : [];
}

/** First value of a tag, or `fallback`. Numbers given as strings (DS/IS) are converted. */
export function value(obj, tag, fallback = undefined) {
  const v = values(obj, tag)[0];
  return v === undefined || v === null || v === "" ? fallback : v;
}

export function num(obj, tag, fallback = undefined) {
  const v = value(obj, tag);
  const n = typeof v === "number" ? v : parseFloat(v);
  return Number.isFinite(n) ? n : fallback;
}

export function nums(obj, tag) {
  return values(obj, tag).map((v) => (typeof v === "number" ? v : parseFloat(v))).filter(Number.isFinite);
}

/** A person name for display: the ideographic (e.g. Chinese) form first, then alphabetic. */
export function personName(obj, tag) {
  const v = value(obj, tag);
  if (!v) return "";
  if (typeof v === "string") return v.replace(/\^+/g, " ").trim();
  // Chinese names are written without spaces: 王^芳 -> 王芳; Wang^Fang -> Wang Fang.
  const show = (s) => s.replace(/\^+/g, /[\u3400-\u9fff]/.test(s) ? "" : " ").trim();
  if (v.Ideographic && v.Alphabetic) return `${show(v.Ideographic)} (${show(v.Alphabetic)})`;
  return show(v.Ideographic || v.Alphabetic || v.Phonetic || "");
}

// ---- Content-Type and multipart/related (RFC 2046 / RFC 2387) ----------------------------

/** Parse `type/subtype; a=b; c="d; e"` into {type, params}; quoted values may hold ';'. */
export function parseContentType(header) {
  const out = { type: "", params: {} };
  if (!header) return out;
  let i = header.indexOf(";");
  out.type = (i < 0 ? header : header.slice(0, i)).trim().toLowerCase();
  while (i >= 0 && i < header.length) {
    i++;
    while (header[i] === " " || header[i] === "\t") i++;
    const eq = header.indexOf("=", i);
    if (eq < 0) break;
    const name = header.slice(i, eq).trim().toLowerCase();
    let j = eq + 1;
    let val = "";
    if (header[j] === '"') {
      j++;
      while (j < header.length && header[j] !== '"') {
        if (header[j] === "\\" && j + 1 < header.length) j++;
        val += header[j++];
      }
      j = header.indexOf(";", j);
    } else {
      const end = header.indexOf(";", j);
      val = (end < 0 ? header.slice(j) : header.slice(j, end)).trim();
      j = end;
    }
    if (name) out.params[name] = val;
    i = j;
  }
  return out;
}

function bytesOf(text) {
  return new TextEncoder().encode(text);
}

/** Position of `needle` in `hay` at or after `from`, or -1. */
export function indexOfBytes(hay, needle, from = 0) {
  const first = needle[0];
  const last = hay.length - needle.length;
  for (let i = hay.indexOf(first, from); i >= 0 && i <= last; i = hay.indexOf(first, i + 1)) {
    let k = 1;
    while (k < needle.length && hay[i + k] === needle[k]) k++;
    if (k === needle.length) return i;
  }
  return -1;
}

/**
 * Split a multipart body into parts: [{headers: {name: value}, body: Uint8Array}].
 * Tolerant: a missing boundary is read from the first line, a missing close delimiter ends
 * the last part at the end of the body, transport padding after a delimiter is skipped.
 */
export function parseMultipart(bytes, boundary) {
  if (!boundary) {
    // "--boundary\r\n" on the first line
    if (bytes[0] !== 45 || bytes[1] !== 45) throw new Error("multipart body without boundary");
    const eol = indexOfBytes(bytes, bytesOf("\r\n"));
    boundary = new TextDecoder().decode(bytes.subarray(2, eol < 0 ? bytes.length : eol)).trim();
  }
  const delim = bytesOf("--" + boundary);
  const crlfDelim = bytesOf("\r\n--" + boundary);
  const CRLF = bytesOf("\r\n");
  const HEADER_END = bytesOf("\r\n\r\n");
  const parts = [];
  let pos = indexOfBytes(bytes, delim, 0);
  if (pos < 0) throw new Error("multipart boundary not found in body");
  while (pos >= 0) {
    let p = pos + delim.length;
    if (bytes[p] === 45 && bytes[p + 1] === 45) break; // close delimiter
    const lineEnd = indexOfBytes(bytes, CRLF, p);
    if (lineEnd < 0) break;
    let headerEnd = indexOfBytes(bytes, HEADER_END, lineEnd);
    if (headerEnd < 0) break;
    const headerText = headerEnd > lineEnd ? new TextDecoder().decode(bytes.subarray(lineEnd + 2, headerEnd)) : "";
    const headers = {};
    for (const line of headerText.split("\r\n")) {
      const c = line.indexOf(":");
      if (c > 0) headers[line.slice(0, c).trim().toLowerCase()] = line.slice(c + 1).trim();
    }
    const start = headerEnd + 4;
    const next = indexOfBytes(bytes, crlfDelim, start);
    parts.push({ headers, body: bytes.subarray(start, next < 0 ? bytes.length : next) });
    pos = next < 0 ? -1 : next + 2;
  }
  return parts;
}

// ---- the client --------------------------------------------------------------------------

const enc = encodeURIComponent;

export class DicomWebClient {
  constructor(base) {
    this.base = (base || "/dicom-web").replace(/\/+$/, "");
    this.decoders = {}; // transfer syntax UID -> async (bytes) => native little-endian bytes
    this.acceptLists = true; // some servers (Orthanc's plugin) answer 400 to a list
  }

  async _fetch(path, accept, signal) {
    const url = this.base + path;
    let res;
    try {
      res = await fetch(url, { credentials: "same-origin", headers: { Accept: accept }, signal });
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new HttpError(0, url, "network");
    }
    if (!res.ok) throw new HttpError(res.status, url, res.statusText);
    return res;
  }

  async _json(path, signal) {
    const res = await this._fetch(path, "application/dicom+json, application/json;q=0.9", signal);
    if (res.status === 204) return [];
    const text = await res.text();
    return text.trim() ? JSON.parse(text) : [];
  }

  /** QIDO-RS: the series of a study. */
  searchSeries(study, signal) {
    const fields = ["0008103E", "00201209", "00080021", "00080031"].map((t) => `includefield=${t}`).join("&");
    return this._json(`/studies/${enc(study)}/series?${fields}`, signal);
  }

  /** QIDO-RS: the instances of a series (light: for picking a thumbnail instance). */
  searchInstances(study, series, signal) {
    return this._json(`/studies/${enc(study)}/series/${enc(series)}/instances`, signal);
  }

  /** WADO-RS: metadata of every instance of a series. */
  seriesMetadata(study, series, signal) {
    return this._json(`/studies/${enc(study)}/series/${enc(series)}/metadata`, signal);
  }

  /**
   * WADO-RS: one frame (1-based) as native little-endian bytes.
   * Throws HttpError (e.g. 406) when the server will not give octet-streams, and Error when
   * it answers in a transfer syntax whose bytes we cannot read.
   */
  /** Ask for frames in `syntax` (a compressed one, as `mediaType` parts) and decode them with
   * `decode` (bytes => native little-endian bytes); native frames stay the fallback. */
  useDecoder(syntax, mediaType, decode) {
    if (decode) this.decoders[syntax] = { mediaType, decode };
  }

  async frame(study, series, sop, frame, signal) {
    const path = `/studies/${enc(study)}/series/${enc(series)}/instances/${enc(sop)}/frames/${frame}`;
    const native = `multipart/related; type="application/octet-stream"; transfer-syntax=${EXPLICIT_LE}`;
    const compressed = Object.entries(this.decoders).map(([ts, d]) => `multipart/related; type="${d.mediaType}"; transfer-syntax=${ts}`);
    const listed = compressed.length && this.acceptLists;
    let res;
    try {
      res = await this._fetch(path, listed ? [...compressed, `${native}; q=0.5`].join(", ") : native, signal);
    } catch (err) {
      if (!listed || !(err instanceof HttpError) || ![400, 406].includes(err.status)) throw err;
      if (err.status === 400) this.acceptLists = false; // the server reads no lists: native from now on
      res = await this._fetch(path, native, signal);
    }
    const ct = parseContentType(res.headers.get("Content-Type") || "");
    const bytes = new Uint8Array(await res.arrayBuffer());
    let body = bytes;
    let ts = syntaxOf(ct);
    if (ct.type.startsWith("multipart/")) {
      const parts = parseMultipart(bytes, ct.params.boundary);
      if (!parts.length) throw new Error("empty multipart response");
      body = parts[0].body;
      const partType = parseContentType(parts[0].headers["content-type"] || "");
      ts = syntaxOf(partType) || ts;
    } else if (ct.type && ct.type !== "application/octet-stream") {
      throw new Error(`unexpected frame content type ${ct.type}`);
    }
    if (this.decoders[ts]) return this.decoders[ts].decode(body);
    if (ts && !NATIVE_LE.has(ts)) throw new Error(`frame sent as ${ts}`);
    return body;
  }

  /**
   * Fetch an image trying one media type per request: some servers (Orthanc's plugin) answer
   * 400 to a list or to q-values. The first type a server accepts is remembered per `slot`.
   */
  async _image(path, types, slot, signal) {
    const remembered = this._accept && this._accept[slot];
    const order = remembered ? [remembered, ...types.filter((t) => t !== remembered)] : types;
    let lastErr = null;
    for (const type of order) {
      try {
        const res = await this._fetch(path, type, signal);
        const blob = await res.blob();
        if (blob.type && !blob.type.startsWith("image/")) throw new HttpError(415, path, blob.type);
        (this._accept || (this._accept = {}))[slot] = type;
        return blob;
      } catch (err) {
        lastErr = err;
        if (!(err instanceof HttpError) || ![400, 406, 415].includes(err.status)) throw err;
      }
    }
    throw lastErr;
  }

  /** WADO-RS rendered (PS3.18 9.5): a Blob, PNG preferred (lossless). */
  rendered(study, series, sop, frame, params = {}, signal) {
    let path = `/studies/${enc(study)}/series/${enc(series)}/instances/${enc(sop)}`;
    if (frame) path += `/frames/${frame}`;
    path += "/rendered" + query(params);
    return this._image(path, ["image/png", "image/jpeg", "*/*"], "rendered", signal);
  }

  /** A small rendered picture for the series strip (JPEG preferred: small). */
  renderedThumbnail(study, series, sop, frame, params = {}, signal) {
    let path = `/studies/${enc(study)}/series/${enc(series)}/instances/${enc(sop)}`;
    if (frame) path += `/frames/${frame}`;
    path += "/rendered" + query(params);
    return this._image(path, ["image/jpeg", "image/png", "*/*"], "thumb", signal);
  }

  /** WADO-RS series thumbnail; may be unsupported (404/400/406): callers fall back. */
  thumbnail(study, series, params = {}, signal) {
    const path = `/studies/${enc(study)}/series/${enc(series)}/thumbnail` + query(params);
    return this._image(path, ["image/jpeg", "image/png"], "thumb", signal);
  }
}

function syntaxOf(ct) {
  if (ct.params["transfer-syntax"]) return ct.params["transfer-syntax"];
  // Some servers put it inside the quoted type parameter: type="application/octet-stream; transfer-syntax=…"
  const m = /transfer-syntax=([0-9.]+)/i.exec(ct.params.type || "");
  return m ? m[1] : "";
}

function query(params) {
  const q = Object.entries(params)
    .filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => `${enc(k)}=${String(v).split(",").map(enc).join(",")}`);
  return q.length ? "?" + q.join("&") : "";
}
