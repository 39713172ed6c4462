// What a reader keeps of a study beyond the view: measurements, saved as a DICOM SR
// measurement report (TID 1500), and key images, saved as a Key Object Selection document.
// Both are stored into the study by the server (imaging/annotations.py), so other viewers and
// the film sheet see them; this module only talks to its JSON API and keeps the key-image list.

async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail) && body.detail.length) return body.detail.map((d) => d.msg || String(d)).join("; ");
  } catch {
    // not JSON: the status says enough
  }
  return `HTTP ${response.status}`;
}

export class Annotations {
  /** `me`: the names the server may write as this user's authorship (display name, username). */
  constructor(study, me) {
    this.base = `/api/studies/${encodeURIComponent(study)}`;
    this.me = me.filter(Boolean);
    this.keys = []; // [{seriesUid, sopInstanceUid, frame}] in the reader's order
    this.keysAuthor = null;
    this.dirty = false; // measurements changed since the last save
    this.keysDirty = false;
    this.available = true; // false when the server has no such API for this user (a 403/404)
  }

  isMine(author) {
    return !author || this.me.includes(author);
  }

  changed() {
    this.dirty = true;
  }

  isKey(seriesUid, sop, frame) {
    return this.keys.some((k) => k.sopInstanceUid === sop && (k.frame || 1) === (frame || 1));
  }

  /** Flag or unflag an image; returns whether it is a key image now. */
  toggleKey(seriesUid, sop, frame) {
    const i = this.keys.findIndex((k) => k.sopInstanceUid === sop && (k.frame || 1) === (frame || 1));
    if (i >= 0) this.keys.splice(i, 1);
    else this.keys.push({ seriesUid, sopInstanceUid: sop, frame: frame || 1 });
    this.keysDirty = true;
    return i < 0;
  }

  /** The saved measurement documents ({author, createdAt, measurements}) and key images. */
  async load() {
    const [m, k] = await Promise.all([fetch(`${this.base}/measurements`), fetch(`${this.base}/key-images`)]);
    if (!m.ok || !k.ok) {
      this.available = false;
      return [];
    }
    const keys = await k.json();
    this.keys = (keys.images || []).map((x) => ({ seriesUid: x.seriesUid, sopInstanceUid: x.sopInstanceUid, frame: x.frame || 1 }));
    this.keysAuthor = keys.author || null;
    return (await m.json()).documents || [];
  }

  async saveMeasurements(measurements) {
    const r = await fetch(`${this.base}/measurements`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ measurements }),
    });
    if (!r.ok) throw new Error(await errorText(r));
    this.dirty = false;
    return r.json();
  }

  async saveKeys() {
    const r = await fetch(`${this.base}/key-images`, {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ images: this.keys }),
    });
    if (!r.ok) throw new Error(await errorText(r));
    this.keysDirty = false;
    return r.json();
  }
}
