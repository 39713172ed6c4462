// The bell in the page header: the unread count stays current while the page is open
// (asked every 5 s while the tab is visible: an emergency cannot wait, and at once when it becomes visible again).
// Urgent ones (an emergency consult, a critical result) also show as a banner on every page,
// each with one button that marks it read and goes straight where it leads (the room).
"use strict";
(() => {
  const badge = document.getElementById("bell-count");
  if (!badge) return;
  const banner = document.getElementById("urgent-banner");
  const title = document.title.replace(/^\(\d+\) /, "");
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function item(notice) {
    const form = document.createElement("form");
    form.method = "post";
    form.action = `/notifications/${notice.id}/open`;
    form.className = "urgent-item";
    form.dataset.kind = notice.kind;
    const token = document.createElement("input");
    token.type = "hidden"; token.name = "csrf_token"; token.value = csrf;
    const text = document.createElement("strong");
    text.textContent = notice.title;
    const go = document.createElement("button");
    go.type = "submit";
    go.className = "primary";
    go.textContent = notice.kind === "consult.emergency" ? "立即进入会诊室 Join now" : "查看并确认 Open";
    form.append(token, text, go);
    return form;
  }

  function show(urgent) {
    if (!banner) return;
    const shown = [...banner.querySelectorAll("form")].map((f) => f.action).join();
    const wanted = urgent.map((n) => new URL(`/notifications/${n.id}/open`, location.href).href).join();
    if (shown === wanted) return;  // unchanged: do not disturb a hand on the button
    banner.replaceChildren(...urgent.map(item));
    banner.hidden = urgent.length === 0;
  }

  async function refresh() {
    if (document.hidden) return;
    try {
      const response = await fetch("/api/me/notifications/count", { credentials: "same-origin" });
      if (!response.ok) return;
      const { unread, urgent } = await response.json();
      badge.textContent = String(unread);
      badge.hidden = unread === 0;
      document.title = unread ? `(${unread}) ${title}` : title;
      show(urgent || []);
    } catch (_) { /* offline for a moment: keep the last count */ }
  }
  setInterval(refresh, 5000);
  document.addEventListener("visibilitychange", refresh);
  refresh();
})();
