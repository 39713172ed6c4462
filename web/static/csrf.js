// Adds the session's CSRF token (from <meta name="csrf-token">) to every same-origin
// unsafe request made with fetch or XMLHttpRequest; forms carry it as a hidden field.
// The server refuses cookie-authenticated POST/PUT/PATCH/DELETE without it (web/csrf.py).
"use strict";
(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const token = meta ? meta.content : "";
  if (!token) return;
  const unsafe = (method) => !["GET", "HEAD", "OPTIONS"].includes(String(method || "GET").toUpperCase());
  const sameOrigin = (url) => new URL(url, location.href).origin === location.origin;

  const originalFetch = window.fetch.bind(window);
  window.fetch = function (input, init) {
    init = init || {};
    const method = init.method || (input instanceof Request ? input.method : "GET");
    const url = input instanceof Request ? input.url : String(input);
    if (unsafe(method) && sameOrigin(url)) {
      const headers = new Headers(init.headers || (input instanceof Request ? input.headers : undefined));
      headers.set("X-CSRF-Token", token);
      init = Object.assign({}, init, { headers });
    }
    return originalFetch(input, init);
  };

  const open = XMLHttpRequest.prototype.open;
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url) {
    this._lancangCsrf = unsafe(method) && sameOrigin(url);
    return open.apply(this, arguments);
  };
  XMLHttpRequest.prototype.send = function () {
    if (this._lancangCsrf) this.setRequestHeader("X-CSRF-Token", token);
    return send.apply(this, arguments);
  };
})();
