// Small behaviours every page may use, declared in the markup (the CSP allows no inline
// handlers): <img data-fallback="CT"> shows its text when the image cannot load;
// <select data-navigate="/path?x="> opens the path plus the chosen value; <input
// data-select-on-click> selects its text when clicked (for copying a URL).
(function () {
  "use strict";
  function fallback(img) {
    const span = document.createElement("span");
    span.className = "thumb-missing";
    span.textContent = img.dataset.fallback || "?";
    img.replaceWith(span);
  }
  document.addEventListener("error", function (event) {
    const img = event.target;
    if (img && img.tagName === "IMG" && img.dataset.fallback !== undefined) fallback(img);
  }, true);
  function start() {
    document.querySelectorAll("img[data-fallback]").forEach(function (img) {
      if (img.complete && img.naturalWidth === 0) fallback(img);
    });
    document.querySelectorAll("select[data-navigate]").forEach(function (select) {
      select.addEventListener("change", function () { window.location.href = select.dataset.navigate + encodeURIComponent(select.value); });
    });
    document.querySelectorAll("input[data-select-on-click]").forEach(function (input) {
      input.addEventListener("click", function () { input.select(); });
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
