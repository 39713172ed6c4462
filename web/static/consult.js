// Consult pages: buttons and forms call the JSON API with the browser session, show the
// answer's "detail" on error, and reload on success. The report editor autosaves.
"use strict";

async function api(method, path, body) {
  const response = await fetch(path, {
    method, credentials: "same-origin",
    headers: body === undefined ? {} : {"Content-Type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : {};
  if (!response.ok) throw new Error(data.detail || response.statusText);
  return data;
}

function flash(message, ok) {
  const box = document.getElementById("flash");
  if (!box) return alert(message);
  box.textContent = message;
  box.className = ok ? "ok" : "error";
  box.hidden = false;
}

function formBody(form) {
  const body = {};
  for (const [key, value] of new FormData(form).entries()) {
    if (key.endsWith("[]")) (body[key.slice(0, -2)] ||= []).push(value);
    else if (key.startsWith("fields.")) { if (value !== "") (body.fields ||= {})[key.slice(7)] = value; }
    else body[key] = value;
  }
  if (body.minutes) body.minutes = Number(body.minutes);
  return body;
}

document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (!form.dataset.api) return;
  event.preventDefault();
  const button = form.querySelector("button[type=submit]");
  if (button) button.disabled = true;
  try {
    const data = await api(form.dataset.method || "POST", form.dataset.api, formBody(form));
    flash(form.dataset.done || "已完成 Done", true);
    const next = form.dataset.next === "created" && data.id ? `/consults/${data.id}` : form.dataset.next;
    setTimeout(() => { location.href = next || location.href; }, 400);
  } catch (error) {
    flash(error.message, false);
  } finally {
    if (button) button.disabled = false;
  }
});

// Report editor: save the draft a second after the last keystroke.
const editor = document.getElementById("report-editor");
if (editor) {
  let timer = null;
  const state = document.getElementById("autosave-state");
  const save = async () => {
    try {
      await api("PUT", editor.dataset.api, formBody(editor));
      state.textContent = "已自动保存 Saved " + new Date().toLocaleTimeString("zh-CN", { timeZone: localZone() });
    } catch (error) {
      state.textContent = "保存失败 Not saved: " + error.message;
    }
  };
  editor.addEventListener("input", () => {
    state.textContent = "编辑中… Editing";
    clearTimeout(timer);
    timer = setTimeout(save, 1000);
  });
  const chooser = document.getElementById("template-chooser");
  if (chooser) chooser.addEventListener("change", () => { location.search = "?template=" + chooser.value; });
}

/** The deployment's zone for times on the page (LANCANG_TIMEZONE, in base.html's meta). */
function localZone() {
  const meta = document.querySelector('meta[name="lancang-timezone"]');
  return (meta && meta.content) || "Asia/Shanghai";
}
