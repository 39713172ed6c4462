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

/** A refusal next to the control that caused it (after the form's button), not at the page top. */
function showFormError(form, button, message) {
  let box = form.querySelector(".form-error");
  if (!box) {
    box = document.createElement("p");
    box.className = "form-error error";
    box.setAttribute("role", "alert");
    if (button) button.after(box); else form.append(box);
  }
  box.textContent = message;
  box.hidden = false;
  box.scrollIntoView({ block: "nearest" });
}

document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (!form.dataset.api) return;
  event.preventDefault();
  const shown = form.querySelector(".form-error");
  if (shown) shown.hidden = true;
  const button = form.querySelector("button[type=submit]");
  if (button) button.disabled = true;
  try {
    const data = await api(form.dataset.method || "POST", form.dataset.api, formBody(form));
    flash(form.dataset.done || "已完成 Done", true);
    const next = form.dataset.next === "created" && data.id ? `/consults/${data.id}` : form.dataset.next;
    setTimeout(() => { location.href = next || location.href; }, 400);
  } catch (error) {
    showFormError(form, button, error.message);
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

// Join buttons (consult/_join.html): inactive until the room opens, then live without a reload.
for (const link of document.querySelectorAll("a.join[data-opens]")) {
  const opens = Date.parse(link.dataset.opens);
  const activate = () => { link.removeAttribute("aria-disabled"); link.classList.add("primary-link"); };
  if (Date.now() >= opens) activate();
  else setTimeout(activate, Math.min(opens - Date.now(), 2 ** 31 - 1));
  link.addEventListener("click", (event) => {
    if (link.getAttribute("aria-disabled") === "true") event.preventDefault();
  });
}

// Study picker (new request): filter the checkbox list as one types; chosen studies stay chosen.
const studySearch = document.getElementById("study-search");
if (studySearch) {
  studySearch.addEventListener("input", () => {
    const words = studySearch.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const row of document.querySelectorAll(".study-picker label.pick")) {
      const match = words.every((word) => row.dataset.search.includes(word)) || row.querySelector("input").checked;
      row.hidden = !match;
      if (match) shown += 1;
    }
    document.getElementById("study-none").hidden = shown > 0;
  });
}
