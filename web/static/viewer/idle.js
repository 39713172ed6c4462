// Background prefetch while the line is idle: the priors of this study and the next study on
// the reader's list travel before anyone asks for them, so opening them costs no wait on a
// slow line. Requests are the viewer's own (same URLs and Accept headers), so the browser's
// HTTP cache answers them later (the server marks frames and metadata privately cacheable for
// a short time, imaging/dicomweb/common.py); nothing is decoded or kept in page memory here.
//
// One request at a time, and only while `isIdle()` says the viewer itself wants nothing: a
// reader's scroll always goes first. A byte budget bounds it, and a data-saver browser skips it.

import { DicomWebClient, num, value } from "./dicomweb.js";
import { buildStack } from "./imaging.js";

const NON_IMAGE = new Set(["SR", "KO", "PR", "DOC"]);
const POLL_MS = 400;

export class IdlePrefetcher {
  constructor(client, { isIdle, budgetBytes = 256 * 1024 * 1024 }) {
    this.client = client;
    // The viewer asks for a study's first image natively (it must not wait for the JPEG-LS
    // decoder to load): that one frame is fetched the same way, for the cache to answer it.
    this.native = new DicomWebClient(client.base);
    this.isIdle = isIdle;
    this.budget = budgetBytes;
    this.done = { studies: [], frames: 0, bytes: 0, stopped: "" };
  }

  async whenIdle() {
    while (!this.isIdle()) await new Promise((r) => setTimeout(r, POLL_MS));
  }

  /** Fetch every image frame of each study in turn; resolves with what was done. */
  async run(studies) {
    const saver = navigator.connection && navigator.connection.saveData;
    if (saver) {
      this.done.stopped = "save-data";
      return this.done;
    }
    for (const study of studies) {
      if (!(await this.study(study))) break;
      this.done.studies.push(study);
    }
    return this.done;
  }

  async study(study) {
    await this.whenIdle();
    // In the viewer's order (series number, then UID): the first one is the one it opens.
    const series = (await this.client.searchSeries(study))
      .filter((q) => !NON_IMAGE.has(value(q, "00080060", "")))
      .map((q) => ({ uid: value(q, "0020000E"), number: num(q, "00200011", Number.MAX_SAFE_INTEGER) }))
      .sort((a, b) => a.number - b.number || (a.uid < b.uid ? -1 : 1));
    for (const [n, { uid }] of series.entries()) {
      await this.whenIdle();
      const metadata = await this.client.seriesMetadata(study, uid);
      const first = n === 0 ? buildStack(metadata)[0] : null;
      if (first) {
        const bytes = await this.native.frame(study, uid, first.sop, first.frame).catch(() => null);
        if (bytes) {
          this.done.bytes += bytes.length;
          this.done.frames += 1;
        }
      }
      for (const meta of metadata) {
        const sop = value(meta, "00080018");
        const frames = Number(value(meta, "00280008", 1)) || 1;
        for (let f = 1; f <= frames; f++) {
          // The first image is already here, natively; the browser's cache keeps one answer
          // per address, so asking it again as JPEG-LS would push that one out.
          if (first && sop === first.sop && f === first.frame) continue;
          if (this.done.bytes >= this.budget) {
            this.done.stopped = "budget";
            return false;
          }
          await this.whenIdle();
          try {
            const bytes = await this.client.frame(study, uid, sop, f);
            this.done.bytes += bytes.length;
            this.done.frames += 1;
          } catch {
            // A frame the viewer would fetch rendered (colour, compressed): not worth it here.
          }
        }
      }
    }
    return true;
  }
}

/** The study after `study` on the list the reader opened it from (studies.js keeps it). */
export function nextOnWorklist(study) {
  try {
    const list = JSON.parse(sessionStorage.getItem("lancang.worklist") || "[]");
    const i = list.indexOf(study);
    return i >= 0 && i + 1 < list.length ? list[i + 1] : null;
  } catch {
    return null;
  }
}
