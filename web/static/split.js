// The reading page's split (consult/read.html): the viewer left, the report right. The handle
// drags (mouse, pen, finger) or moves by arrow keys; the share is remembered on this computer.
(function () {
  "use strict";
  const split = document.getElementById("read-split");
  const handle = document.getElementById("read-handle");
  if (!split || !handle) return;
  const KEY = "lancang.readSplit";
  const MIN = 25;
  const MAX = 80;

  function setShare(percent) {
    const share = Math.round(Math.min(MAX, Math.max(MIN, percent)));
    split.style.setProperty("--read-share", share + "%");
    handle.setAttribute("aria-valuenow", String(share));
    try { localStorage.setItem(KEY, String(share)); } catch (_) { /* private mode: not remembered */ }
    return share;
  }

  let dragging = false;
  handle.addEventListener("pointerdown", function (event) {
    dragging = true;
    handle.setPointerCapture(event.pointerId);
    split.classList.add("resizing"); // the iframe must not swallow the moves
    event.preventDefault();
  });
  handle.addEventListener("pointermove", function (event) {
    if (!dragging) return;
    const box = split.getBoundingClientRect();
    setShare(((event.clientX - box.left) / box.width) * 100);
  });
  function stop() {
    dragging = false;
    split.classList.remove("resizing");
  }
  handle.addEventListener("pointerup", stop);
  handle.addEventListener("pointercancel", stop);
  handle.addEventListener("keydown", function (event) {
    const now = Number(handle.getAttribute("aria-valuenow"));
    if (event.key === "ArrowLeft") setShare(now - 5);
    else if (event.key === "ArrowRight") setShare(now + 5);
    else return;
    event.preventDefault();
  });
  let saved = NaN;
  try { saved = Number(localStorage.getItem(KEY)); } catch (_) { /* not remembered */ }
  setShare(Number.isFinite(saved) && saved > 0 ? saved : 62);
})();
