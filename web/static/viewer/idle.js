// Background prefetch while the line is idle: the priors of this study and the next study on
// the reader's list travel before anyone asks for them, so opening them costs no wait on a
// slow line. Requests are the viewer's own (same URLs and Accept headers), so the browser's
// HTTP cache answers them later (the server marks frames and metadata privately cacheable for
// a short time, imaging/dicomweb/common.py); nothing is decoded or kept in page memory here.
//
// One request at a time, and only while `isIdle()` says the viewer itself wants nothing: a
// reader's scroll always goes first. A byte budget bounds it, and a data-saver browser skips it.

import { value } from "./dicomweb.js";

const NON_IMAGE = new Set(["SR", "KO", "PR", "DOC"]);
const POLL_MS = 400;

export class IdlePrefetcher {
  constructor(client, { isIdle, budgetBytes = 256 * 1024 * 1024 }) {
    this.client = client;
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
    const series = (await this.client.searchSeries(study)).filter((q) => !NON_IMAGE.has(value(q, "00080060", "")));
    for (const q of series) {
      const uid = value(q, "0020000E");
      await this.whenIdle();
      const metadata = await this.client.seriesMetadata(study, uid);
      for (const meta of metadata) {
        const sop = value(meta, "00080018");
        const frames = Number(value(meta, "00280008", 1)) || 1;
        for (let f = 1; f <= frames; f++) {
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
