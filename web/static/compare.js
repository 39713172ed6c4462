// Two viewers side by side (same-origin iframes): when linked, scrolling one brings the other
// to the slice at the same position along the slice normal, plus the offset between the two
// studies captured when they were linked (the patient never lies at the same table position
// twice: unlink, align by eye, link again). Window/level, zoom and series stay independent.
(function () {
  "use strict";
  const panes = [document.getElementById("pane-current"), document.getElementById("pane-prior")];
  const toggle = document.getElementById("link-toggle");
  const status = document.getElementById("link-status");
  let linked = true;
  let offset = 0; // prior position - current position, in mm
  let geometry = false;

  function say(zh, en) {
    window.lancangPanes.say(status, zh, en);
  }

  const viewerReady = window.lancangPanes.viewerReady;

  function range(positions) {
    return [Math.min.apply(null, positions), Math.max.apply(null, positions)];
  }

  function captureOffset(viewers) {
    const a = viewers[0].state().position;
    const b = viewers[1].state().position;
    offset = a !== null && b !== null ? b - a : 0;
  }

  function initialOffset(viewers) {
    // Overlapping ranges: the scanner's coordinates already agree (offset 0). Else align centres.
    const pa = viewers[0].positions();
    const pb = viewers[1].positions();
    const [a0, a1] = range(pa);
    const [b0, b1] = range(pb);
    offset = a1 >= b0 && b1 >= a0 ? 0 : (b0 + b1) / 2 - (a0 + a1) / 2;
  }

  function describe() {
    if (!geometry) say("无层面位置（如平片）：仅并排显示", "No slice positions (e.g. projection images): side by side only");
    else if (linked) say("已同步，位置差 " + offset.toFixed(1) + " mm", "Linked, offset " + offset.toFixed(1) + " mm");
    else say("未同步：可分别翻页，再点同步", "Unlinked: scroll each, then link again");
  }

  Promise.all(panes.map(viewerReady)).then(function (viewers) {
    if (!viewers[0] || !viewers[1]) { say("影像无法加载", "The images could not be loaded"); return; }
    geometry = Boolean(viewers[0].positions() && viewers[1].positions());
    if (geometry) {
      initialOffset(viewers);
      viewers[1].apply({ position: viewers[0].state().position + offset });
    }
    toggle.disabled = !geometry;
    describe();
    document.documentElement.dataset.compareReady = "1";
    panes.forEach(function (frame, i) {
      frame.contentDocument.addEventListener("viewer:statechange", function (event) {
        if (!linked || !geometry || event.detail.position === null) return;
        const other = viewers[1 - i];
        const target = i === 0 ? event.detail.position + offset : event.detail.position - offset;
        other.apply({ position: target }); // apply() never emits statechange: no echo
      });
    });
    toggle.addEventListener("click", function () {
      linked = !linked;
      if (linked) captureOffset(viewers);
      toggle.setAttribute("aria-pressed", String(linked));
      toggle.innerHTML = linked ? '⇅ 同步 <span class="en">Linked</span>' : '⇵ 未同步 <span class="en">Unlinked</span>';
      describe();
    });
  });
})();
