// The radiographer's upload page: DICOM files, folders and zip archives, sent to our
// DICOMweb service with STOW-RS (PS3.18 10.5), one instance per request.
//
// * Nothing is read into memory up front: a file is a File (or a slice of a zip archive)
//   until a sender takes it; only a zip entry being inflated, and a 16 KB header per file,
//   are ever held. Zip archives are read here: the central directory, then stored (0) or
//   deflated (8) entries through DecompressionStream, CRC-32 checked.
// * Before sending, the file meta header gives the SOP Instance UID: duplicates in the
//   selection are skipped, and (option, on by default) one QIDO-RS search per 40 files finds
//   what the server already has, so a re-run after a broken connection sends only the rest.
// * 2-3 XMLHttpRequests at once (upload progress events); each file is waiting, sending,
//   stored, already, rejected (with the reason) or failed (retryable: network, 5xx, 0xA700).
//   Retryable failures are retried automatically a couple of times, then wait for the
//   "retry failed" button, which re-sends only those.
// * Plain ES2017, no build step, so older Chromium-based browsers on township PCs work.
// window.lancangUpload exposes state() for tests.
(function () {
  "use strict";

  const root = document.getElementById("upload");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const BASE = (root.dataset.base || "/dicom-web").replace(/\/+$/, "");
  const config = {
    parallel: Math.max(1, Math.min(3, parseInt(root.dataset.parallel, 10) || 3)),
    autoRetries: Math.max(0, parseInt(root.dataset.autoRetries, 10) || 0),
    retryDelaysMs: [3000, 10000],
    stallMs: 90000,          // no upload progress for this long: give up on the attempt
    answerMs: 300000,        // the server's answer after the last byte went out
    chunk: 40,               // files per header scan / QIDO check
  };
  const HEAD_BYTES = 16384;
  const DIRECTORY_CLASS = "1.2.840.10008.1.3.10"; // Media Storage Directory (DICOMDIR)

  // ---- words ------------------------------------------------------------------------------

  const STATES = {
    new: "等待 Waiting",
    checking: "检查中 Checking",
    waiting: "等待 Waiting",
    sending: "上传中 Sending",
    stored: "已存储 Stored",
    already: "已存在 Already stored",
    rejected: "被拒绝 Rejected",
    failed: "失败·可重试 Failed, retry",
    skipped: "已跳过 Skipped",
  };
  // PS3.4 C.4.2.1.4 / PS3.18 10.5.3 failure and warning reasons.
  const REASONS = {
    0xA700: "服务器资源不足，请重试 / out of resources, retry",
    0xA900: "数据与SOP类不符 / data set does not match SOP class",
    0xC000: "无法解析 / cannot understand",
    0x0110: "服务器处理失败 / processing failure",
    0x0111: "同一请求中SOP实例重复 / duplicate SOP instance",
    0x0122: "不支持的SOP类 / SOP class not supported",
    0x0124: "无权限：该检查属于其他机构 / not authorized: the study belongs to another institution",
    0xB000: "部分数据元素被修改 / coercion of data elements",
    0xB006: "部分数据元素被丢弃 / elements discarded",
    0xB007: "数据与SOP类不符 / data set does not match SOP class",
  };
  const hex4 = (code) => "0x" + code.toString(16).toUpperCase().padStart(4, "0");
  function reasonText(code) {
    let text = REASONS[code];
    if (!text) {
      if ((code & 0xFF00) === 0xA700) text = REASONS[0xA700];
      else if ((code & 0xFF00) === 0xA900) text = REASONS[0xA900];
      else if ((code & 0xF000) === 0xC000) text = REASONS[0xC000];
      else text = "其他原因 / other reason";
    }
    return hex4(code) + " " + text;
  }
  const retryableCode = (code) => (code & 0xFF00) === 0xA700;
  const NOT_DICOM = "不是DICOM文件（第128字节处无“DICM”） / not a DICOM file (no “DICM” at offset 128)";

  // ---- small helpers ----------------------------------------------------------------------

  function mb(bytes) {
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(bytes < 10240 ? 1 : 0) + " KB";
    return (bytes / 1048576).toFixed(bytes < 10485760 ? 1 : 0) + " MB";
  }
  function duration(seconds) {
    if (!isFinite(seconds) || seconds < 0) return "—";
    if (seconds < 60) return Math.ceil(seconds) + " 秒 s";
    if (seconds < 3600) return Math.ceil(seconds / 60) + " 分钟 min";
    return (seconds / 3600).toFixed(1) + " 小时 h";
  }
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const key in attrs || {}) {
      if (key === "class") node.className = attrs[key];
      else if (key === "text") node.textContent = attrs[key];
      else node.setAttribute(key, attrs[key]);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }
  function ascii(bytes, start, length) {
    let s = "";
    for (let i = start; i < start + length; i++) s += String.fromCharCode(bytes[i]);
    return s.replace(/[\0 ]+$/, "").trim();
  }
  function randomHex(n) {
    const a = new Uint8Array(n);
    (window.crypto || window.msCrypto).getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  async function mapLimit(list, limit, fn) {
    let next = 0;
    const run = async () => { while (next < list.length) { const i = next++; await fn(list[i]); } };
    await Promise.all(Array.from({ length: Math.min(limit, list.length) }, run));
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  let CRC_TABLE = null;
  function crc32(bytes) {
    if (!CRC_TABLE) {
      CRC_TABLE = new Int32Array(256);
      for (let n = 0; n < 256; n++) {
        let c = n;
        for (let k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320 ^ (c >>> 1) : c >>> 1;
        CRC_TABLE[n] = c;
      }
    }
    let crc = -1;
    for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xFF] ^ (crc >>> 8);
    return (crc ^ -1) >>> 0;
  }

  // ---- DICOM file meta header (PS3.10 7.1: always Explicit VR Little Endian) ---------------

  const LONG_VR = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]);

  /** {sopClass, sop, syntax} from the first bytes of a Part 10 file, or null without "DICM". */
  function parseMeta(b) {
    if (b.length < 132 || b[128] !== 0x44 || b[129] !== 0x49 || b[130] !== 0x43 || b[131] !== 0x4D) return null;
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    const meta = { sopClass: "", sop: "", syntax: "" };
    let p = 132;
    while (p + 8 <= b.length && dv.getUint16(p, true) === 0x0002) {
      const element = dv.getUint16(p + 2, true);
      const vr = String.fromCharCode(b[p + 4], b[p + 5]);
      let length, at;
      if (LONG_VR.has(vr)) {
        if (p + 12 > b.length) break;
        length = dv.getUint32(p + 8, true);
        at = p + 12;
      } else {
        length = dv.getUint16(p + 6, true);
        at = p + 8;
      }
      if (at + length > b.length) break;
      if (element === 0x0002) meta.sopClass = ascii(b, at, length);
      else if (element === 0x0003) meta.sop = ascii(b, at, length);
      else if (element === 0x0010) meta.syntax = ascii(b, at, length);
      p = at + length;
    }
    return meta;
  }
  const isZipMagic = (b) => b.length >= 4 && b[0] === 0x50 && b[1] === 0x4B && b[2] === 0x03 && b[3] === 0x04;

  // ---- zip archives (APPNOTE.TXT 4.3) ------------------------------------------------------

  class ZipError extends Error {}

  async function bytesOf(blob, start, end) {
    return new Uint8Array(await blob.slice(start, end).arrayBuffer());
  }

  function decodeName(bytes, utf8) {
    if (!utf8) {
      // Archives made on Chinese Windows name files in GBK; try UTF-8 strictly first.
      try { return new TextDecoder("utf-8", { fatal: true }).decode(bytes); } catch (e) { /* not UTF-8 */ }
      try { return new TextDecoder("gbk").decode(bytes); } catch (e) { /* no GBK decoder */ }
    }
    return new TextDecoder("utf-8").decode(bytes);
  }

  /** The entries of a zip archive, read from its central directory only. */
  async function readZipDirectory(file) {
    const tailSize = Math.min(file.size, 22 + 65535 + 20);
    const tail = await bytesOf(file, file.size - tailSize, file.size);
    const tv = new DataView(tail.buffer);
    let eocd = -1;
    for (let i = tail.length - 22; i >= 0; i--) {
      if (tv.getUint32(i, true) === 0x06054B50) { eocd = i; break; }
    }
    if (eocd < 0) throw new ZipError("不是有效的ZIP文件 / not a valid zip archive");
    let count = tv.getUint16(eocd + 10, true);
    let size = tv.getUint32(eocd + 12, true);
    let offset = tv.getUint32(eocd + 16, true);
    if (count === 0xFFFF || size === 0xFFFFFFFF || offset === 0xFFFFFFFF) {
      // ZIP64: the locator sits right before the end record.
      const loc = eocd - 20;
      if (loc < 0 || tv.getUint32(loc, true) !== 0x07064B50) throw new ZipError("ZIP64 目录损坏 / damaged zip64 directory");
      const at = Number(tv.getBigUint64 ? tv.getBigUint64(loc + 8, true) : tv.getUint32(loc + 8, true));
      const rec = await bytesOf(file, at, at + 56);
      const rv = new DataView(rec.buffer);
      if (rv.getUint32(0, true) !== 0x06064B50) throw new ZipError("ZIP64 目录损坏 / damaged zip64 directory");
      count = Number(rv.getUint32(32, true)) + rv.getUint32(36, true) * 4294967296;
      size = rv.getUint32(40, true) + rv.getUint32(44, true) * 4294967296;
      offset = rv.getUint32(48, true) + rv.getUint32(52, true) * 4294967296;
    }
    if (offset + size > file.size) throw new ZipError("ZIP文件不完整 / the zip archive is incomplete (truncated download?)");
    const cd = await bytesOf(file, offset, offset + size);
    const dv = new DataView(cd.buffer);
    const entries = [];
    let p = 0;
    for (let n = 0; n < count; n++) {
      if (p + 46 > cd.length || dv.getUint32(p, true) !== 0x02014B50) throw new ZipError("ZIP目录损坏 / damaged zip directory");
      const flags = dv.getUint16(p + 8, true);
      const method = dv.getUint16(p + 10, true);
      const crc = dv.getUint32(p + 16, true);
      let csize = dv.getUint32(p + 20, true);
      let usize = dv.getUint32(p + 24, true);
      const nameLength = dv.getUint16(p + 28, true);
      const extraLength = dv.getUint16(p + 30, true);
      const commentLength = dv.getUint16(p + 32, true);
      let local = dv.getUint32(p + 42, true);
      const name = decodeName(cd.subarray(p + 46, p + 46 + nameLength), (flags & 0x800) !== 0);
      // ZIP64 extended information: only the fields that are 0xFFFFFFFF above, in this order.
      let x = p + 46 + nameLength;
      const xEnd = x + extraLength;
      while (x + 4 <= xEnd) {
        const id = dv.getUint16(x, true), len = dv.getUint16(x + 2, true);
        if (id === 0x0001) {
          let q = x + 4;
          const u64 = () => { const v = dv.getUint32(q, true) + dv.getUint32(q + 4, true) * 4294967296; q += 8; return v; };
          if (usize === 0xFFFFFFFF) usize = u64();
          if (csize === 0xFFFFFFFF) csize = u64();
          if (local === 0xFFFFFFFF) local = u64();
        }
        x += 4 + len;
      }
      p = xEnd + commentLength;
      if (name.endsWith("/") || name.startsWith("__MACOSX/")) continue;
      entries.push({ name, flags, method, crc, csize, usize, local });
    }
    return entries;
  }

  async function entryDataStart(file, entry) {
    if (entry.dataStart === undefined) {
      const h = await bytesOf(file, entry.local, entry.local + 30);
      const hv = new DataView(h.buffer);
      if (h.length < 30 || hv.getUint32(0, true) !== 0x04034B50) throw new ZipError("ZIP条目损坏 / damaged zip entry");
      entry.dataStart = entry.local + 30 + hv.getUint16(26, true) + hv.getUint16(28, true);
    }
    return entry.dataStart;
  }

  let rawInflate = null; // whether DecompressionStream knows "deflate-raw" (Chrome 103+)
  function inflateStream(blob) {
    if (typeof DecompressionStream === "undefined") {
      throw new ZipError("此浏览器不能解压ZIP，请先解压后选择文件夹 / this browser cannot unzip: unzip first and choose the folder");
    }
    if (rawInflate === null) {
      try { new DecompressionStream("deflate-raw"); rawInflate = true; } catch (e) { rawInflate = false; }
    }
    if (rawInflate) return blob.stream().pipeThrough(new DecompressionStream("deflate-raw"));
    // Older browsers: the same data behind a zlib header; the missing Adler-32 trailer makes
    // the stream fail at its very end, after all the data came out (checked by size and CRC).
    return new Blob([new Uint8Array([0x78, 0x01]), blob]).stream().pipeThrough(new DecompressionStream("deflate"));
  }

  /** Inflate a deflated entry: all of it (want = usize) or just its first `want` bytes. */
  async function inflate(blob, usize, want) {
    const out = new Uint8Array(Math.min(usize, want));
    const reader = inflateStream(blob).getReader();
    let n = 0;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (want >= usize && n + value.length > usize) throw new ZipError("解压后大小不符 / inflated size does not match");
        const take = Math.min(value.length, out.length - n);
        out.set(value.subarray(0, take), n);
        n += take;
        if (n >= out.length && want < usize) { reader.cancel().catch(() => {}); break; }
      }
    } catch (err) {
      if (err instanceof ZipError) throw err;
      if (rawInflate || n !== out.length) throw new ZipError("ZIP条目无法解压 / cannot inflate the zip entry: " + err.message);
    }
    if (n !== out.length) throw new ZipError("ZIP条目不完整 / zip entry is incomplete");
    return out;
  }

  function checkEntry(entry) {
    if (entry.flags & 1) throw new ZipError("加密的ZIP条目不支持 / encrypted zip entries are not supported");
    if (entry.method !== 0 && entry.method !== 8) {
      throw new ZipError(`不支持的压缩方式 ${entry.method} / unsupported compression method ${entry.method}`);
    }
  }

  /** A source (size, head(), blob()) for one zip entry. */
  function zipSource(file, entry) {
    return {
      size: entry.usize,
      async head(n) {
        checkEntry(entry);
        const start = await entryDataStart(file, entry);
        const data = file.slice(start, start + entry.csize);
        if (entry.method === 0) return bytesOf(data, 0, Math.min(n, entry.csize));
        return inflate(data, entry.usize, Math.min(n, entry.usize));
      },
      async blob() {
        checkEntry(entry);
        const start = await entryDataStart(file, entry);
        const data = file.slice(start, start + entry.csize);
        const bytes = entry.method === 0 ? await bytesOf(data, 0, entry.csize) : await inflate(data, entry.usize, entry.usize);
        if (bytes.length !== entry.usize || crc32(bytes) !== entry.crc) {
          throw new ZipError("ZIP条目校验失败（CRC） / zip entry is damaged (CRC mismatch)");
        }
        return new Blob([bytes], { type: "application/dicom" });
      },
    };
  }

  function fileSource(file) {
    return {
      file,
      size: file.size,
      head: (n) => bytesOf(file, 0, Math.min(n, file.size)),
      blob: () => Promise.resolve(file),
    };
  }

  // ---- the model -----------------------------------------------------------------------------

  const items = [];             // every file, in the order given
  const bySop = new Map();      // SOP Instance UID -> the first item carrying it in this selection
  const studies = new Map();    // Study Instance UID -> {stored, already}
  const queue = [];             // items ready to send, in order
  let scanCursor = 0;           // items before this index have been scanned
  let scanning = false;
  let pendingZips = 0;          // zip directories being read
  let active = 0;               // requests in flight
  let paused = false;
  let authLost = false;
  let stallTimer = null;
  const inflight = new Set();
  const speed = [];             // [time ms, bytes done] samples for the rate

  function addItem(name, source, extra) {
    const item = Object.assign({
      id: items.length, name, size: source.size, src: source, state: "new", reason: "", code: null,
      loaded: 0, attempts: 0, autoLeft: config.autoRetries, sop: "", study: "", row: null,
    }, extra || {});
    items.push(item);
    listRow(item);
    return item;
  }

  function setState(item, state, reason) {
    item.state = state;
    if (reason !== undefined) item.reason = reason;
    if (state !== "sending") item.loaded = state === "stored" || state === "already" ? item.size : 0;
    touch(item);
  }

  function noteStudy(uid, how) {
    if (!uid) return;
    const s = studies.get(uid) || { stored: 0, already: 0 };
    s[how] += 1;
    studies.set(uid, s);
  }

  // ---- adding files ----------------------------------------------------------------------

  const SYSTEM_FILES = /(^|\/)(\.DS_Store|Thumbs\.db|desktop\.ini|\._[^/]*)$/i;

  function addFiles(list) {
    // list: [{file, path}]
    if (!list.length) return;
    $("up-progress").hidden = false;
    $("up-clear").hidden = true;
    // A folder comes in the file system's order; show it as people name their images.
    list.sort((a, b) => (a.path || a.file.name).localeCompare(b.path || b.file.name, undefined, { numeric: true }));
    for (const { file, path } of list) {
      const name = path || file.name;
      if (/\.zip$/i.test(file.name)) addZip(file, name);
      else if (SYSTEM_FILES.test(name)) addItem(name, fileSource(file), { state: "skipped", reason: "系统文件 / system file" });
      else addItem(name, fileSource(file));
    }
    render();
    scan();
  }

  async function addZip(file, name) {
    pendingZips++;
    try {
      const entries = await readZipDirectory(file);
      for (const entry of entries) {
        const inner = name + " › " + entry.name;
        if (SYSTEM_FILES.test(entry.name)) addItem(inner, zipSource(file, entry), { state: "skipped", reason: "系统文件 / system file" });
        else addItem(inner, zipSource(file, entry));
      }
      if (!entries.length) addItem(name, fileSource(file), { state: "rejected", reason: "空的ZIP压缩包 / empty zip archive" });
    } catch (err) {
      addItem(name, fileSource(file), { state: "rejected", reason: err instanceof ZipError ? err.message : "ZIP: " + err.message });
    } finally {
      pendingZips--;
      render();
      scan();
    }
  }

  // ---- scanning headers and asking the server what it has ---------------------------------

  async function scanOne(item) {
    let head;
    try {
      head = await item.src.head(HEAD_BYTES);
    } catch (err) {
      return setState(item, "rejected", err instanceof ZipError ? err.message : "无法读取文件 / cannot read the file: " + err.message);
    }
    const meta = parseMeta(head);
    if (!meta) {
      if (isZipMagic(head) && item.src.file !== undefined) {
        setState(item, "skipped", "ZIP压缩包，已展开 / zip archive, unpacked below");
        addZip(item.src.file, item.name);
        return;
      }
      return setState(item, "rejected", NOT_DICOM);
    }
    item.sop = meta.sop;
    if (meta.sopClass === DIRECTORY_CLASS) return setState(item, "skipped", "DICOMDIR目录文件，无需上传 / DICOMDIR index file, not needed");
    const first = meta.sop && bySop.get(meta.sop);
    if (first && first !== item) return setState(item, "skipped", `与“${first.name}”重复 / same image as “${first.name}”`);
    if (meta.sop) bySop.set(meta.sop, item);
  }

  /** One QIDO-RS search for the SOP Instance UIDs of a chunk: what the server has is "already". */
  async function precheck(chunk) {
    const wanted = chunk.filter((i) => i.state === "checking" && /^[0-9]+(\.[0-9]+)*$/.test(i.sop) && i.sop.length <= 64);
    if (!wanted.length || !$("up-skip-existing").checked) return;
    const url = `${BASE}/instances?SOPInstanceUID=${wanted.map((i) => i.sop).join(",")}` +
      `&includefield=0020000D&limit=${wanted.length + 10}`;
    try {
      const res = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/dicom+json" } });
      if (!res.ok) return; // the senders will find out anything serious
      const found = new Map();
      for (const ds of await res.json()) {
        const sop = ((ds["00080018"] || {}).Value || [])[0];
        if (sop) found.set(sop, ((ds["0020000D"] || {}).Value || [])[0] || "");
      }
      for (const item of wanted) {
        if (!found.has(item.sop)) continue;
        item.study = found.get(item.sop);
        noteStudy(item.study, "already");
        setState(item, "already", "服务器已有此图像，未重新发送 / already on the server, not sent again");
      }
    } catch (err) {
      /* offline for a moment: just send them */
    }
  }

  async function scan() {
    if (scanning) return;
    scanning = true;
    try {
      while (scanCursor < items.length) {
        const chunk = [];
        while (scanCursor < items.length && chunk.length < config.chunk) {
          const item = items[scanCursor++];
          if (item.state === "new") { item.state = "checking"; touch(item); chunk.push(item); }
        }
        if (!chunk.length) continue;
        await mapLimit(chunk, 4, scanOne);
        await precheck(chunk);
        for (const item of chunk) {
          if (item.state === "checking") { setState(item, "waiting"); queue.push(item); }
        }
        pump();
        await sleep(0); // let the page breathe between chunks
      }
    } finally {
      scanning = false;
      pump();
    }
  }

  // ---- sending (STOW-RS) ------------------------------------------------------------------

  function pump() {
    while (!paused && !authLost && active < config.parallel && queue.length) {
      const item = queue.shift();
      if (item.state !== "waiting") continue;
      active++;
      send(item).catch((err) => setState(item, "failed", "页面错误 / page error: " + err.message)).then(() => {
        active--;
        pump();
      });
    }
    render();
  }

  function post(item, blob) {
    return new Promise((resolve) => {
      const boundary = "lancang-" + randomHex(16);
      const body = new Blob([`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`, blob, `\r\n--${boundary}--\r\n`]);
      const xhr = new XMLHttpRequest();
      const attempt = { xhr, item, last: Date.now(), uploaded: false, why: "" };
      inflight.add(attempt);
      const done = (result) => { inflight.delete(attempt); resolve(result); };
      xhr.open("POST", `${BASE}/studies`);
      xhr.setRequestHeader("Content-Type", `multipart/related; type="application/dicom"; boundary=${boundary}`);
      xhr.setRequestHeader("Accept", "application/dicom+json, application/json");
      xhr.upload.onprogress = (e) => {
        attempt.last = Date.now();
        if (e.lengthComputable && e.total) item.loaded = Math.min(item.size, item.size * e.loaded / e.total);
        touch(item);
      };
      xhr.upload.onload = () => {
        attempt.last = Date.now();
        attempt.uploaded = true;
        item.loaded = item.size;
        item.reason = "服务器处理中 / the server is storing it";
        touch(item);
      };
      xhr.onload = () => done({ status: xhr.status, text: xhr.responseText,
                                changes: xhr.getResponseHeader("Lancang-Changes") });
      xhr.onerror = () => done({ status: 0, why: "网络中断 / network error" });
      xhr.onabort = () => done({ status: 0, why: attempt.why || "已中止 / aborted" });
      xhr.send(body);
    });
  }

  // Abort attempts that stopped moving (a dead mobile link never errors by itself).
  function watchStalls() {
    const now = Date.now();
    for (const a of inflight) {
      const limit = a.uploaded ? config.answerMs : config.stallMs;
      if (now - a.last > limit) {
        a.why = a.uploaded ? "服务器无应答 / no answer from the server" : "网络停滞 / the connection stalled";
        a.xhr.abort();
      }
    }
  }

  function values(ds, tag) {
    const e = ds && ds[tag];
    return e && Array.isArray(e.Value) ? e.Value : [];
  }

  function studyOf(url) {
    const m = /\/studies\/([^/?#]+)/.exec(url || "");  // a sloppy UID may hold letters too
    return m ? decodeURIComponent(m[1]) : "";
  }

  // Index fields a corrected re-send can change (imaging/service.py _correct_index).
  const FIELDS = {
    patient_name: "姓名 name", patient_id: "患者ID patient ID", birth_date: "出生日期 birth date", sex: "性别 sex",
    "study.study_date": "检查日期 study date", "study.study_time": "检查时间 study time",
    "study.accession_number": "检查号 accession", "study.study_id": "检查ID study ID",
    "study.description": "检查描述 study description", "study.referring_physician": "申请医生 referring physician",
    "series.modality": "设备类型 modality", "series.series_number": "序列号 series number",
    "series.description": "序列描述 series description", "series.body_part": "部位 body part",
  };

  /** "replaced the earlier version: 姓名 name 赵^甲 → 钱^乙; …" from the Lancang-Changes header. */
  function replacedText(header) {
    let list = [];
    try { list = header ? JSON.parse(header) : []; } catch (e) { list = []; }
    const changes = (list[0] && list[0].changes) || {};
    const shown = (v) => (/^\d{8}$/.test(v || "") ? `${v.slice(0, 4)}-${v.slice(4, 6)}-${v.slice(6)}` : v || "—");
    const said = Object.entries(changes).map(([field, pair]) =>
      `${FIELDS[field] || field} ${shown(pair[0])} → ${shown(pair[1])}`);
    return "已替换此前版本 / replaced the earlier version" + (said.length ? "：" + said.join("；") : "（内容相同 / same values）");
  }

  /** What a STOW-RS answer means for the one file sent: [state, reason, code]. */
  function verdict(res) {
    if (res.status === 0) return ["failed", res.why];
    let body = null;
    try { body = res.text ? JSON.parse(res.text) : null; } catch (e) { body = null; }
    if (res.status === 401) return ["failed", "登录已过期 / signed out", "auth"];
    if ([200, 202, 409].includes(res.status) && body && !Array.isArray(body)) {
      const stored = values(body, "00081199");
      const failed = values(body, "00081198");
      if (stored.length) {
        const warning = values(stored[0], "00081196")[0];
        const replaced = warning === 0xB000 ? replacedText(res.changes) : "";
        return ["stored", replaced || (warning ? "警告 / warning: " + reasonText(warning) : ""),
                studyOf(values(stored[0], "00081190")[0]) || studyOf(values(body, "00081190")[0])];
      }
      if (failed.length) {
        const code = values(failed[0], "00081197")[0];
        if (typeof code === "number") return [retryableCode(code) ? "failed" : "rejected", reasonText(code), code];
      }
    }
    const detail = body && body.detail ? ": " + String(body.detail).slice(0, 200) : "";
    if (res.status >= 500 || res.status === 429 || res.status === 408) {
      return ["failed", `服务器暂时不可用 / server unavailable (HTTP ${res.status})${detail}`];
    }
    const words = { 403: "无权上传 / not allowed to upload", 413: "文件太大 / file too large",
                    415: "服务器不接受此格式 / unsupported media type", 400: "请求有误 / bad request" };
    return ["rejected", `${words[res.status] || "被拒绝 / refused"} (HTTP ${res.status})${detail}`];
  }

  async function send(item) {
    item.loaded = 0;
    setState(item, "sending", "");
    item.attempts++;
    let blob;
    try {
      blob = await item.src.blob();
    } catch (err) {
      return setState(item, "rejected", err instanceof ZipError ? err.message : "无法读取文件 / cannot read the file: " + err.message);
    }
    const res = await post(item, blob);
    blob = null;
    const [state, reason, extra] = verdict(res);
    if (state === "stored") {
      item.study = extra || "";
      noteStudy(item.study, "stored");
      return setState(item, "stored", reason);
    }
    if (state === "rejected") {
      item.code = typeof extra === "number" ? extra : null;
      return setState(item, "rejected", reason);
    }
    // failed: retryable
    item.code = typeof extra === "number" ? extra : null;
    if (extra === "auth") {
      authLost = true;
      $("up-auth").hidden = false;
      return setState(item, "failed", reason);
    }
    if (item.autoLeft > 0) {
      const delay = config.retryDelaysMs[Math.min(config.autoRetries - item.autoLeft, config.retryDelaysMs.length - 1)];
      item.autoLeft--;
      setState(item, "waiting", `${reason}；${Math.round(delay / 1000)} 秒后自动重试 / retrying in ${Math.round(delay / 1000)} s`);
      setTimeout(() => {
        if (item.state === "waiting") { queue.push(item); pump(); }
      }, delay);
      return;
    }
    setState(item, "failed", reason);
  }

  function retryFailed() {
    authLost = false;
    $("up-auth").hidden = true;
    for (const item of items) {
      if (item.state !== "failed") continue;
      item.autoLeft = config.autoRetries;
      setState(item, "waiting", "");
      queue.push(item);
    }
    pump();
  }

  // ---- the page --------------------------------------------------------------------------

  const list = $("up-list");
  const dirty = new Set();
  let frame = 0;

  function listRow(item) {
    const bar = el("span", { class: "up-bar" });
    item.row = el("li", { class: "up-item", "data-state": item.state, "data-name": item.name },
      el("span", { class: "up-name", title: item.name, text: item.name }),
      el("span", { class: "up-size", text: mb(item.size) }),
      el("span", { class: "up-state", text: STATES[item.state] }),
      el("span", { class: "progress up-file-bar" }, bar),
      el("span", { class: "up-reason", text: item.reason }));
    item.bar = bar;
    list.append(item.row);
    dirty.add(item);
  }

  function touch(item) {
    dirty.add(item);
    if (!frame) frame = requestAnimationFrame(render);
  }

  function paintRow(item) {
    const row = item.row;
    if (row.dataset.state !== item.state) {
      row.dataset.state = item.state;
      row.children[2].textContent = STATES[item.state];
    }
    if (row.children[4].textContent !== item.reason) row.children[4].textContent = item.reason;
    const pct = item.size ? Math.round(100 * item.loaded / item.size) : (item.state === "stored" ? 100 : 0);
    item.bar.style.width = pct + "%";
  }

  function totals() {
    const t = { files: items.length, new: 0, checking: 0, waiting: 0, sending: 0, stored: 0, already: 0,
                rejected: 0, failed: 0, skipped: 0, bytes: 0, done: 0 };
    for (const item of items) {
      t[item.state]++;
      if (item.state === "rejected" || item.state === "skipped" || item.state === "already") continue;
      t.bytes += item.size;
      t.done += item.state === "stored" ? item.size : item.state === "sending" ? item.loaded : 0;
    }
    t.pending = t.new + t.checking + t.waiting + t.sending + pendingZips;
    return t;
  }

  function render() {
    frame = 0;
    for (const item of dirty) paintRow(item);
    dirty.clear();
    const t = totals();
    const now = Date.now();
    speed.push([now, t.done]);
    while (speed.length > 2 && now - speed[0][0] > 15000) speed.shift();
    const [t0, b0] = speed[0];
    const rate = now - t0 > 1500 ? Math.max(0, (t.done - b0) / ((now - t0) / 1000)) : 0;
    const pct = t.bytes ? Math.floor(100 * t.done / t.bytes) : (t.pending ? 0 : 100);
    const overall = $("up-overall");
    overall.firstElementChild.style.width = pct + "%";
    overall.setAttribute("aria-valuenow", String(pct));
    const finished = t.stored + t.already + t.rejected + t.failed + t.skipped;
    let text = `文件 ${finished}/${t.files} files · ${mb(t.done)} / ${mb(t.bytes)} · ${pct}%`;
    if (t.pending && rate > 0) text += ` · ${mb(rate)}/s · 剩余约 ${duration((t.bytes - t.done) / rate)} left`;
    if (paused) text += " · 已暂停 paused";
    $("up-stats").textContent = text;
    $("up-retry").hidden = t.failed === 0;
    $("up-retry-count").textContent = String(t.failed);
    $("up-pause").hidden = t.pending === 0;
    $("up-clear").hidden = t.pending !== 0;
    if (t.pending) {
      if (!stallTimer) stallTimer = setInterval(watchStalls, 5000);
      $("up-summary").hidden = true;
    } else {
      if (stallTimer) { clearInterval(stallTimer); stallTimer = null; }
      if (items.length) summary(t);
    }
  }

  let lastSummary = "";
  function summary(t) {
    const key = JSON.stringify([t.stored, t.already, t.rejected, t.failed, t.skipped, studies.size]);
    if (key === lastSummary && !$("up-summary").hidden) return;
    lastSummary = key;
    const counts = $("up-counts");
    counts.textContent = "";
    for (const [state, label] of [["stored", "已存储 Stored"], ["already", "已存在 Already stored"],
      ["rejected", "被拒绝 Rejected"], ["failed", "失败·可重试 Failed, retry"], ["skipped", "已跳过 Skipped"]]) {
      if (!t[state] && state !== "stored") continue;
      counts.append(el("li", { class: "up-count up-" + state, "data-state": state, "data-count": String(t[state]) },
        el("strong", { text: String(t[state]) }), " " + label));
    }

    const box = $("up-studies");
    box.textContent = "";
    if (studies.size) {
      describeStudies();
      const rows = [];
      for (const [uid, s] of studies) {
        const info = studyInfo.get(uid);
        rows.push(el("tr", { "data-study": uid },
          el("td", { class: "up-study" }, info ? el("strong", { class: "up-patient", text: info }) : null,
             el("span", { class: "up-uid", text: uid })),
          el("td", { text: `${s.stored + s.already} 幅 images` + (s.already ? `（其中已存在 ${s.already} already）` : "") }),
          el("td", { class: "actions" },
            el("a", { class: "button primary-link", href: `/studies/${uid}/view`, text: "阅片 Open viewer" }),
            el("a", { class: "button", href: `/consults/new?study=${encodeURIComponent(uid)}`, text: "申请会诊 Request a consult" }))));
      }
      box.append(el("h3", { text: "已在服务器上的检查 Studies on the server" }),
        el("table", { class: "up-table" },
          el("thead", null, el("tr", null, el("th", { text: "检查 Study" }), el("th", { text: "图像 Images" }), el("th", { text: "" }))),
          el("tbody", null, ...rows)));
    }

    const problems = items.filter((i) => i.state === "rejected" || i.state === "failed");
    const pbox = $("up-problems");
    pbox.textContent = "";
    if (problems.length) {
      pbox.append(el("h3", { text: "未上传的文件及原因 Files not stored, and why" }),
        el("table", { class: "up-table up-problem-table" },
          el("thead", null, el("tr", null, el("th", { text: "文件 File" }), el("th", { text: "状态 Status" }), el("th", { text: "原因 Reason" }))),
          el("tbody", null, ...problems.slice(0, 500).map((i) => el("tr", { "data-state": i.state },
            el("td", { class: "up-name", text: i.name }), el("td", { text: STATES[i.state] }), el("td", { text: i.reason }))))));
      if (problems.length > 500) pbox.append(el("p", { class: "muted", text: `… 另有 ${problems.length - 500} 个 / ${problems.length - 500} more` }));
    }
    $("up-summary").hidden = false;
  }

  // Who the stored studies belong to, from one QIDO-RS search, so the radiographer can check
  // the patient before asking for a consult.
  const studyInfo = new Map(); // uid -> "王芳 · P001 · 2026-11-01 · 胸部CT · CT" ("" while unknown)
  function personName(v) {
    if (!v) return "";
    if (typeof v === "string") return v.replace(/\^+/g, " ").trim();
    const show = (t) => t.replace(/\^+/g, /[\u3400-\u9fff]/.test(t) ? "" : " ").trim();
    return show(v.Ideographic || v.Alphabetic || v.Phonetic || "");
  }
  async function describeStudies() {
    const unknown = Array.from(studies.keys()).filter((uid) => !studyInfo.has(uid)).slice(0, 50);
    if (!unknown.length) return;
    for (const uid of unknown) studyInfo.set(uid, "");
    try {
      const url = `${BASE}/studies?StudyInstanceUID=${unknown.join(",")}&includefield=00081030&includefield=00080061`;
      const res = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/dicom+json" } });
      if (!res.ok) return;
      for (const ds of await res.json()) {
        const uid = values(ds, "0020000D")[0];
        if (!uid) continue;
        const date = String(values(ds, "00080020")[0] || "").replace(/^(\d{4})(\d{2})(\d{2})$/, "$1-$2-$3");
        studyInfo.set(uid, [personName(values(ds, "00100010")[0]), values(ds, "00100020")[0], date,
                            values(ds, "00081030")[0], values(ds, "00080061").join("/")].filter(Boolean).join(" · "));
      }
      lastSummary = "";
      summary(totals());
    } catch (err) { /* the UIDs alone will do */ }
  }

  function resetAll() {
    if (totals().pending) return;
    items.length = 0;
    queue.length = 0;
    bySop.clear();
    studies.clear();
    studyInfo.clear();
    scanCursor = 0;
    list.textContent = "";
    lastSummary = "";
    speed.length = 0;
    $("up-summary").hidden = true;
    $("up-progress").hidden = true;
    $("up-files").value = "";
    $("up-folder").value = "";
  }

  // ---- inputs: buttons, folder, drag and drop ---------------------------------------------

  function fromInput(input) {
    const files = Array.from(input.files || [], (file) => ({ file, path: file.webkitRelativePath || file.name }));
    input.value = ""; // choosing the same folder again must fire "change" again
    addFiles(files);
  }
  $("up-files").addEventListener("change", (e) => fromInput(e.target));
  const folder = $("up-folder");
  if (!("webkitdirectory" in folder)) $("up-folder-label").hidden = true; // e.g. iOS
  folder.addEventListener("change", (e) => fromInput(e.target));

  function entryFile(entry) {
    return new Promise((resolve, reject) => entry.file(resolve, reject));
  }
  async function walk(entry, out) {
    if (entry.isFile) {
      out.push({ file: await entryFile(entry), path: entry.fullPath.replace(/^\//, "") });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child, out);
      }
    }
  }
  const drop = $("up-drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("up-over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("up-over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("up-over");
    const dt = e.dataTransfer;
    // Entries must be taken synchronously, before the event ends.
    const entries = Array.from(dt.items || [], (i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null)).filter(Boolean);
    if (!entries.length) return addFiles(Array.from(dt.files || [], (file) => ({ file, path: file.name })));
    const out = [];
    for (const entry of entries) {
      try { await walk(entry, out); } catch (err) { /* an unreadable folder: skip it */ }
    }
    addFiles(out);
  });
  // A drop that misses the zone must not navigate away from a running upload.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  $("up-pause").addEventListener("click", (e) => {
    paused = !paused;
    e.currentTarget.setAttribute("aria-pressed", String(paused));
    e.currentTarget.firstChild.textContent = paused ? "继续 " : "暂停 ";
    e.currentTarget.lastElementChild.textContent = paused ? "Resume" : "Pause";
    pump();
  });
  $("up-retry").addEventListener("click", retryFailed);
  $("up-clear").addEventListener("click", resetAll);
  $("up-only-problems").addEventListener("change", (e) => list.classList.toggle("up-only-problems", e.target.checked));
  window.addEventListener("beforeunload", (e) => {
    if (totals().pending) { e.preventDefault(); e.returnValue = ""; }
  });

  window.lancangUpload = {
    config,
    state() {
      const t = totals();
      return {
        totals: t, paused, authLost,
        studies: Array.from(studies, ([uid, s]) => Object.assign({ uid }, s)),
        items: items.map((i) => ({ name: i.name, size: i.size, state: i.state, reason: i.reason, code: i.code,
                                   attempts: i.attempts, sop: i.sop, study: i.study })),
      };
    },
    // for tests of the parsers
    _internals: { parseMeta, readZipDirectory, zipSource, crc32, verdict, reasonText },
  };
})();
