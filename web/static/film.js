/* Cloud film viewer for phones on weak mobile data.
 * One image at a time, sized for the screen (a few fixed widths the server caches),
 * the instance's small preview as a placeholder while it loads, the next images
 * prefetched once the current one is shown. Swipe, buttons, slider or arrow keys. */
(function () {
  "use strict";
  var dataNode = document.getElementById("film-data");
  var img = document.getElementById("film-image");
  if (!dataNode || !img) return;
  var data = JSON.parse(dataNode.textContent);
  var stage = document.getElementById("film-stage");
  var counter = document.getElementById("film-counter");
  var scrub = document.getElementById("film-scrub");
  var seriesButtons = document.querySelectorAll(".film-series-item");
  var saveLink = document.getElementById("film-save");
  var prefetched = {};          // url -> Image, so prefetches are not garbage-collected early
  var seriesIndex = 0, pos = 0, frames = expand(0), pending = null;

  function expand(index) {
    var out = [];
    data.series[index].items.forEach(function (item) {
      for (var f = 0; f < item[1]; f++) out.push([item[0], f]);
    });
    return out;
  }

  function screenWidth() {
    // More than 2 device pixels per CSS pixel costs mobile data without a visible gain.
    var dpr = Math.min(window.devicePixelRatio || 1, 2);
    var want = Math.round((stage.clientWidth || window.innerWidth) * dpr);
    for (var i = 0; i < data.widths.length; i++) if (data.widths[i] >= want) return data.widths[i];
    return data.widths[data.widths.length - 1];
  }

  function imageUrl(item) {
    return data.base + "/img/" + item[0] + "/" + item[1] + ".jpg?w=" + screenWidth();
  }

  function previewUrl(item) {
    return data.base + "/pv/" + item[0] + ".jpg";
  }

  function prefetch() {
    [pos + 1, pos + 2, pos - 1].forEach(function (j) {
      if (j < 0 || j >= frames.length) return;
      var url = imageUrl(frames[j]);
      if (prefetched[url]) return;
      var im = new Image();
      im.decoding = "async";
      im.src = url;
      prefetched[url] = im;
    });
  }

  function load(url) {
    if (img.getAttribute("data-src") === url) return;
    stage.classList.add("loading");
    img.setAttribute("data-src", url);
    img.src = url;
  }

  function show(index, immediate) {
    if (!frames.length) return;
    pos = Math.max(0, Math.min(frames.length - 1, index));
    var item = frames[pos];
    resetZoom();
    if (saveLink) {
      saveLink.href = data.base + "/img/" + item[0] + "/" + item[1] + ".jpg?w=" + data.widths[data.widths.length - 1];
      saveLink.setAttribute("download", "影像-" + (seriesIndex + 1) + "-" + (pos + 1) + ".jpg");
    }
    counter.textContent = (pos + 1) + " / " + frames.length;
    if (scrub) scrub.value = pos + 1;
    stage.style.backgroundImage = "url(" + previewUrl(item) + ")";
    var url = imageUrl(item);
    clearTimeout(pending);
    // While the slider is dragged only placeholders change; the image follows when it rests.
    if (immediate || prefetched[url]) load(url);
    else pending = setTimeout(function () { load(url); }, 120);
  }

  function selectSeries(index) {
    seriesIndex = index;
    frames = expand(index);
    if (scrub) {
      scrub.max = frames.length;
      scrub.hidden = frames.length < 2;
    }
    seriesButtons.forEach(function (b, i) { b.classList.toggle("current", i === index); });
    show(0, true);
    stage.scrollIntoView({ behavior: "smooth", block: "nearest" });
  }

  img.addEventListener("load", function () {
    stage.classList.remove("loading", "failed");
    prefetch();
  });
  img.addEventListener("error", function () {
    stage.classList.remove("loading");
    stage.classList.add("failed");
  });
  if (img.complete && img.naturalWidth) prefetch();

  document.getElementById("film-prev").addEventListener("click", function () { show(pos - 1, true); });
  document.getElementById("film-next").addEventListener("click", function () { show(pos + 1, true); });
  if (scrub) scrub.addEventListener("input", function () { show(scrub.value - 1, false); });
  seriesButtons.forEach(function (button) {
    button.addEventListener("click", function () { selectSeries(Number(button.getAttribute("data-series"))); });
  });
  document.addEventListener("keydown", function (e) {
    if (e.key === "ArrowRight") show(pos + 1, true);
    if (e.key === "ArrowLeft") show(pos - 1, true);
  });

  // Zoom: two fingers pinch (1x to 5x), one finger then moves the enlarged image, a double
  // tap toggles 2x. Swiping to the next image works only at 1x, so zooming never turns a page.
  var zoom = { scale: 1, x: 0, y: 0 }, pinch = null, drag = null, tap = null, lastTap = 0;
  function applyZoom() {
    img.style.transform = zoom.scale === 1 ? "" :
      "translate(" + zoom.x + "px," + zoom.y + "px) scale(" + zoom.scale + ")";
    stage.classList.toggle("zoomed", zoom.scale > 1);
  }
  function resetZoom() { zoom = { scale: 1, x: 0, y: 0 }; applyZoom(); }
  function spread(touches) {
    return Math.hypot(touches[0].clientX - touches[1].clientX, touches[0].clientY - touches[1].clientY);
  }

  // Swipe: a mostly horizontal move of 40 px or more; vertical moves scroll the page.
  var startX = null, startY = null;
  stage.addEventListener("touchstart", function (e) {
    if (e.touches.length === 2) {
      pinch = { distance: spread(e.touches), scale: zoom.scale };
      startX = null;
      return;
    }
    if (e.touches.length !== 1) { startX = null; return; }
    tap = { x: e.touches[0].clientX, y: e.touches[0].clientY, t: Date.now() };
    if (zoom.scale > 1) {
      drag = { x: e.touches[0].clientX - zoom.x, y: e.touches[0].clientY - zoom.y };
      startX = null;
      return;
    }
    startX = e.touches[0].clientX;
    startY = e.touches[0].clientY;
  }, { passive: true });
  stage.addEventListener("touchmove", function (e) {
    if (pinch && e.touches.length === 2) {
      e.preventDefault();  // the page itself does not zoom: the image does
      zoom.scale = Math.max(1, Math.min(5, pinch.scale * spread(e.touches) / pinch.distance));
      if (zoom.scale === 1) zoom.x = zoom.y = 0;
      applyZoom();
    } else if (drag && e.touches.length === 1) {
      e.preventDefault();
      zoom.x = e.touches[0].clientX - drag.x;
      zoom.y = e.touches[0].clientY - drag.y;
      applyZoom();
    }
  }, { passive: false });
  stage.addEventListener("touchend", function (e) {
    if (e.touches.length < 2) pinch = null;
    if (e.touches.length === 0) drag = null;
    // A double tap is two short touches that did not move, close together: never a swipe.
    var end = e.changedTouches[0];
    if (tap && e.touches.length === 0 && Date.now() - tap.t < 250 &&
        Math.hypot(end.clientX - tap.x, end.clientY - tap.y) < 10) {
      if (Date.now() - lastTap < 300) {
        if (zoom.scale === 1) { zoom.scale = 2; applyZoom(); } else resetZoom();
        lastTap = 0;
      } else lastTap = Date.now();
    }
    tap = null;
    if (startX === null) return;
    var t = e.changedTouches[0];
    var dx = t.clientX - startX, dy = t.clientY - startY;
    startX = null;
    if (Math.abs(dx) >= 40 && Math.abs(dx) > Math.abs(dy)) show(dx < 0 ? pos + 1 : pos - 1, true);
  }, { passive: true });
})();
