// Decodes JPEG-LS frames off the page's thread with CharLS, the JPEG-LS reference codec, built
// as WebAssembly (static/vendor/charls, @cornerstonejs/codec-charls). A classic worker script:
// the vendored glue defines the global CharLSWASM factory.
//   in:  {id, bytes: ArrayBuffer}          one JPEG-LS codestream
//   out: {id, pixels: ArrayBuffer, width, height, bitsPerSample}   little-endian samples
//        {id, error}
"use strict";
importScripts("/static/vendor/charls/charlswasm_decode.js");
const ready = CharLSWASM({ locateFile: (file) => "/static/vendor/charls/" + file });

self.onmessage = async (event) => {
  const { id, bytes } = event.data;
  try {
    const charls = await ready;
    const decoder = new charls.JpegLSDecoder();
    try {
      const input = new Uint8Array(bytes);
      decoder.getEncodedBuffer(input.length).set(input);
      decoder.decode();
      const info = decoder.getFrameInfo();
      const pixels = decoder.getDecodedBuffer().slice(); // out of the WebAssembly memory
      self.postMessage({ id, pixels: pixels.buffer, width: info.width, height: info.height,
                         bitsPerSample: info.bitsPerSample }, [pixels.buffer]);
    } finally {
      decoder.delete();
    }
  } catch (err) {
    self.postMessage({ id, error: String((err && err.message) || err) });
  }
};
