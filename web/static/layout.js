// Several series of one study at once (workspace/layout.html): each cell is a compact viewer
// in a same-origin iframe, driven through its window.lancangViewer. A series is dragged from
// the list onto a cell (or, on a touch screen, tapped: it goes to the active cell). Linked,
// scrolling one cell brings the others to the same position along the slice normal.
(function () {
  "use strict";
  const root = document.getElementById("hang");
  const grid = document.getElementById("hang-grid");
  const cells = Array.from(grid.querySelectorAll(".hang-cell"));
  const status = document.getElementById("hang-status");
  const linkButton = document.getElementById("hang-link");
  const COUNTS = { "1x1": 1, "1x2": 2, "2x2": 4 };
  let active = 0;
  let linked = false;
  let tool = "scroll";

  function say(zh, en) {
    window.lancangPanes.say(status, zh, en);
  }

  function frameOf(cell) {
    return cell.querySelector("iframe");
  }

  function viewerReady(cell) {
    return window.lancangPanes.viewerReady(frameOf(cell));
  }

  function cardFor(seriesUid) {
    return root.querySelector('.hang-card[data-series="' + CSS.escape(seriesUid) + '"]');
  }

  function caption(cell, seriesUid) {
    const card = cardFor(seriesUid);
    const text = card ? card.querySelector("strong").textContent + " · " + card.querySelector(".hang-desc").textContent : seriesUid;
    cell.querySelector("[data-role=caption]").textContent = "格 " + (cells.indexOf(cell) + 1) + " · " + text;
    cell.dataset.series = seriesUid;
  }

  function watch(cell, viewer) {
    const frame = frameOf(cell);
    frame.contentDocument.addEventListener("pointerdown", function () { setActive(cells.indexOf(cell)); }, true);
    frame.contentDocument.addEventListener("viewer:statechange", function (event) {
      if (!linked || event.detail.position === null) return;
      cells.forEach(function (other) {
        if (other === cell || other.hidden || !other.viewer) return;
        other.viewer.apply({ position: event.detail.position }); // apply() never emits statechange
      });
    });
    viewer.setTool(tool);
    cell.viewer = viewer;
    caption(cell, viewer.state().seriesUid);
  }

  function load(cell) {
    const frame = frameOf(cell);
    if (frame.getAttribute("src")) return;
    frame.src = frame.dataset.src;
    viewerReady(cell).then(function (viewer) {
      if (viewer) watch(cell, viewer);
      else cell.querySelector("[data-role=caption]").textContent = "影像无法加载 The images could not be loaded";
      readyCount();
    });
  }

  function readyCount() {
    const shown = cells.filter(function (c) { return !c.hidden; });
    if (shown.every(function (c) { return c.viewer; })) root.dataset.ready = String(shown.length);
  }

  function setGrid(name) {
    if (!COUNTS[name]) return;
    grid.dataset.grid = name;
    root.dataset.grid = name;
    cells.forEach(function (cell, i) {
      cell.hidden = i >= COUNTS[name];
      if (!cell.hidden) load(cell);
    });
    root.querySelectorAll("[data-grid]").forEach(function (b) {
      if (b.tagName === "BUTTON") b.setAttribute("aria-pressed", String(b.dataset.grid === name));
    });
    if (active >= COUNTS[name]) setActive(0);
    history.replaceState(null, "", "?grid=" + name);
    delete root.dataset.ready;
    readyCount();
  }

  function setActive(i) {
    active = i;
    cells.forEach(function (cell, j) { cell.dataset.active = String(j === i); });
  }

  function show(cell, seriesUid) {
    return viewerReady(cell).then(function (viewer) {
      if (!viewer) return;
      return viewer.apply({ seriesUid: seriesUid }).then(function () {
        caption(cell, seriesUid);
        say("已放入格 " + (cells.indexOf(cell) + 1), "Shown in cell " + (cells.indexOf(cell) + 1));
      });
    });
  }

  // Drag and drop: while a card is dragged, each cell shows a drop zone above its iframe
  // (an iframe would swallow the drop events).
  root.querySelectorAll(".hang-card").forEach(function (card) {
    card.addEventListener("dragstart", function (event) {
      event.dataTransfer.setData("text/plain", card.dataset.series);
      event.dataTransfer.effectAllowed = "copy";
      root.classList.add("dragging");
    });
    card.addEventListener("dragend", function () { root.classList.remove("dragging"); });
    card.addEventListener("click", function () { show(cells[active], card.dataset.series); });
  });
  cells.forEach(function (cell, i) {
    const zone = cell.querySelector(".hang-drop");
    zone.addEventListener("dragover", function (event) { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      zone.classList.remove("over");
      root.classList.remove("dragging");
      setActive(i);
      const uid = event.dataTransfer.getData("text/plain");
      if (uid) show(cell, uid);
    });
  });

  root.querySelectorAll("button[data-grid]").forEach(function (b) {
    b.addEventListener("click", function () { setGrid(b.dataset.grid); });
  });
  root.querySelectorAll("button[data-tool]").forEach(function (b) {
    b.addEventListener("click", function () {
      tool = b.dataset.tool;
      root.querySelectorAll("button[data-tool]").forEach(function (x) { x.setAttribute("aria-pressed", String(x === b)); });
      cells.forEach(function (cell) { if (cell.viewer) cell.viewer.setTool(tool); });
    });
  });
  linkButton.addEventListener("click", function () {
    linked = !linked;
    linkButton.setAttribute("aria-pressed", String(linked));
    say(linked ? "已同步：按层面位置一起翻页" : "未同步：各格分别翻页",
        linked ? "Linked by slice position" : "Unlinked: each cell scrolls alone");
  });
  document.addEventListener("keydown", function (event) {
    const names = Object.keys(COUNTS);
    const n = Number(event.key);
    if (event.target.tagName === "INPUT" || event.altKey || event.ctrlKey || event.metaKey) return;
    if (n >= 1 && n <= names.length) setGrid(names[n - 1]);
  });

  setActive(0);
  setGrid(grid.dataset.grid);
})();
