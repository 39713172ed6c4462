// The study list by keyboard: "/" searches, arrows move between rows, Enter opens the study,
// V opens it in the viewer. Rows are links for the mouse as well (click anywhere on a row).
(function () {
  "use strict";
  const table = document.getElementById("study-list");
  const search = document.getElementById("study-q");
  const rows = table ? Array.from(table.querySelectorAll("tbody tr[data-href]")) : [];

  function move(from, step) {
    const index = Math.max(0, Math.min(rows.length - 1, rows.indexOf(from) + step));
    if (rows[index]) rows[index].focus();
  }

  document.addEventListener("keydown", function (event) {
    const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(event.target.tagName);
    if (event.key === "/" && !typing && search) {
      event.preventDefault();
      search.focus();
      search.select();
      return;
    }
    if (typing) {
      if (event.key === "ArrowDown" && event.target === search && rows[0]) { event.preventDefault(); rows[0].focus(); }
      return;
    }
    const row = event.target.closest ? event.target.closest("tr[data-href]") : null;
    if (event.key === "ArrowDown" || event.key === "j") { event.preventDefault(); row ? move(row, 1) : rows[0] && rows[0].focus(); }
    else if (event.key === "ArrowUp" || event.key === "k") { event.preventDefault(); row ? move(row, -1) : rows[0] && rows[0].focus(); }
    else if (event.key === "Enter" && row) { window.location.href = row.dataset.href; }
    else if ((event.key === "v" || event.key === "V") && row) { window.location.href = row.dataset.view; }
  });

  // Empty filters stay out of the address: a link to a search reads like the search.
  const form = document.querySelector("form.study-filters");
  if (form) {
    form.addEventListener("submit", function () {
      form.querySelectorAll("input, select").forEach(function (field) {
        if (!field.value) field.disabled = true;
      });
    });
  }

  // The order of this list, for the viewer's "next study" and its background prefetch.
  try {
    sessionStorage.setItem("lancang.worklist", JSON.stringify(rows.map(function (row) {
      return decodeURIComponent(row.dataset.view.split("/")[2]);
    })));
  } catch (_) { /* storage off: no "next study" */ }

  rows.forEach(function (row) {
    row.addEventListener("click", function (event) {
      if (event.target.closest("a")) return;
      window.location.href = row.dataset.href;
    });
  });
})();
