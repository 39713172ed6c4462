// JPEG-LS lossless frames for the viewer: the server sends grey frames as JPEG-LS when asked
// (imaging/jpegls.py: ~0.3 of a CT's raw bytes against gzip's ~0.42 on the line), and a worker
// (jls-worker.js) decodes them to the native little-endian bytes the rest of the viewer reads.

export const JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80";

/** An async (bytes: Uint8Array) => Uint8Array decoder backed by one worker, or null where the
 * browser has no workers or WebAssembly (the client then asks for native frames). */
export function jpegLsDecoder() {
  if (typeof Worker === "undefined" || typeof WebAssembly === "undefined") return null;
  let worker;
  try {
    worker = new Worker("/static/viewer/jls-worker.js");
  } catch {
    return null;
  }
  const waiting = new Map();
  let next = 1;
  worker.onmessage = (event) => {
    const { id, error, pixels } = event.data;
    const job = waiting.get(id);
    if (!job) return;
    waiting.delete(id);
    if (error) job.reject(new Error(`JPEG-LS: ${error}`));
    else job.resolve(new Uint8Array(pixels));
  };
  worker.onerror = (event) => {
    for (const job of waiting.values()) job.reject(new Error(`JPEG-LS worker: ${event.message || "failed"}`));
    waiting.clear();
  };
  return (bytes) =>
    new Promise((resolve, reject) => {
      const id = next++;
      waiting.set(id, { resolve, reject });
      const copy = bytes.slice(); // its buffer moves to the worker
      worker.postMessage({ id, bytes: copy.buffer }, [copy.buffer]);
    });
}
