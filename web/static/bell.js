// The bell in the page header: the unread count stays current while the page is open
// (asked every 30 s while the tab is visible, and at once when it becomes visible again).
"use strict";
(() => {
  const badge = document.getElementById("bell-count");
  if (!badge) return;
  const title = document.title.replace(/^\(\d+\) /, "");
  async function refresh() {
    if (document.hidden) return;
    try {
      const response = await fetch("/api/me/notifications/count", { credentials: "same-origin" });
      if (!response.ok) return;
      const { unread } = await response.json();
      badge.textContent = String(unread);
      badge.hidden = unread === 0;
      document.title = unread ? `(${unread}) ${title}` : title;
    } catch (_) { /* offline for a moment: keep the last count */ }
  }
  setInterval(refresh, 30000);
  document.addEventListener("visibilitychange", refresh);
})();
