// What the pages holding several viewers in same-origin iframes share (compare.js, layout.js):
// waiting for a pane's viewer, and a bilingual status line.
"use strict";
window.lancangPanes = {
  /** Resolves with the frame's window.lancangViewer once it has drawn, or null if it failed. */
  viewerReady: function (frame) {
    return new Promise(function (resolve) {
      function check() {
        const viewer = frame.contentWindow && frame.contentWindow.lancangViewer;
        if (viewer) viewer.ready.then(function () { resolve(viewer); }, function () { resolve(null); });
        else setTimeout(check, 100);
      }
      check();
    });
  },
  /** Chinese first, English beside it, into `element`. */
  say: function (element, zh, en) {
    element.textContent = zh + " ";
    const span = document.createElement("span");
    span.className = "en";
    span.textContent = en;
    element.appendChild(span);
  },
};
