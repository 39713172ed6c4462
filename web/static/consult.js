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
  let data = {};
  try { data = text ? JSON.parse(text) : {}; } catch (_) { data = { detail: response.statusText }; }
  if (!response.ok) {
    const error = new Error(typeof data.detail === "string" ? data.detail : response.statusText);
    error.status = response.status;
    throw error;
  }
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
    if (key.startsWith("consent.") || value instanceof File) continue;  // sent apart (multipart)
    if (key === "emergency") body.emergency = value === "true";
    else if (key === "consult_id") body.consult_id = Number(value);
    else if (key === "preferred_at" && value === "") continue;
    else if (key.endsWith("[]")) (body[key.slice(0, -2)] ||= []).push(value);
    else if (key.startsWith("fields.")) { if (value !== "") (body.fields ||= {})[key.slice(7)] = value; }
    else body[key] = value;
  }
  if (body.minutes) body.minutes = Number(body.minutes);
  return body;
}

/** A refusal next to the control that caused it (after the form's button), not at the page top.
 *  An ended session says so, with a way back to this page once signed in again. */
function showFormError(form, button, message, status) {
  let box = form.querySelector(".form-error");
  if (!box) {
    box = document.createElement("p");
    box.className = "form-error error";
    box.setAttribute("role", "alert");
    if (button) button.after(box); else form.append(box);
  }
  if (status === 401) box.replaceChildren(...signInAgain());
  else box.textContent = message;
  box.hidden = false;
  box.scrollIntoView({ block: "nearest" });
}

/** "请重新登录" with a link that comes back here (what was typed is kept: see the editor). */
function signInAgain() {
  const link = document.createElement("a");
  link.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
  link.target = "_blank";  // sign in beside this page, so the open editor is not left
  link.textContent = "请重新登录 Sign in again";
  return [document.createTextNode("登录已过期，内容已保留在本机。 Your session has ended; what you typed is kept here. "), link];
}

/** Only the fields given: an empty date or file means "not given", not a bad value. */
function filled(fields, prefix = "") {
  const data = new FormData();
  for (const [key, value] of fields.entries()) {
    if (!key.startsWith(prefix) || value === "" || (value instanceof File && !value.size)) continue;
    data.append(key.slice(prefix.length), value);
  }
  return data;
}

/** A form with a file: multipart, with the same error handling as `api`. */
async function upload(path, data) {
  const response = await fetch(path, { method: "POST", credentials: "same-origin", body: data });
  const text = await response.text();
  let answer = {};
  try { answer = text ? JSON.parse(text) : {}; } catch (_) { answer = { detail: response.statusText }; }
  if (!response.ok) {
    const detail = Array.isArray(answer.detail) ? answer.detail.map((d) => d.msg).join("; ") : answer.detail;
    const error = new Error(detail || response.statusText);
    error.status = response.status;
    throw error;
  }
  return answer;
}

/** The request form's consent fields ("consent.*"), recorded on the consult just created. A
 *  refusal is shown beside them with a link to the consult, which exists already. */
async function sendConsent(form, consultId) {
  const fields = new FormData(form);
  if (fields.get("consent.obtained") !== "true") return;
  const data = filled(fields, "consent.");
  data.delete("obtained");
  try {
    await upload(`/api/consults/${consultId}/consent`, data);
  } catch (error) {
    const box = form.querySelector(".consent-fields");
    const where = document.createElement("a");
    where.href = `/consults/${consultId}#consent`;
    where.textContent = `会诊 #${consultId} 已提交，请在此补录 The consult was sent: record consent there`;
    showFormError(form, box, `知情同意未记录 Consent not recorded: ${error.message} `, error.status);
    form.querySelector(".form-error").append(where);
    throw Object.assign(new Error("consent"), { handled: true });
  }
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
    const draft = document.getElementById("report-editor");
    if ("flushDraft" in form.dataset && draft && draft.flush) await draft.flush();
    const data = "multipart" in form.dataset ? await upload(form.dataset.api, filled(new FormData(form)))
      : await api(form.dataset.method || "POST", form.dataset.api, formBody(form));
    if (form.dataset.next === "created" && data.id) await sendConsent(form, data.id);
    flash(form.dataset.done || "已完成 Done", true);
    const next = form.dataset.next === "created" && data.id ? `/consults/${data.id}` : form.dataset.next;
    setTimeout(() => { location.href = next || location.href; }, 400);
  } catch (error) {
    if (!error.handled) showFormError(form, button, error.message, error.status);
  } finally {
    if (button) button.disabled = false;
  }
});

// Report editor: save the draft a second after the last keystroke. Until the server has it,
// what was typed is also kept in this browser (localStorage), so an ended session, a lost
// line or a closed tab loses nothing; it is removed once saved.
const editor = document.getElementById("report-editor");
if (editor) {
  let timer = null;
  const state = document.getElementById("autosave-state");
  const backupKey = `lancang-draft-${editor.dataset.consult}`;
  const keep = () => localStorage.setItem(backupKey, JSON.stringify(formBody(editor)));
  const save = async () => {
    try {
      const data = await api("PUT", editor.dataset.api, formBody(editor));
      localStorage.removeItem(backupKey);
      showFieldErrors((data.draft && data.draft.errors) || {});
      const bad = Object.keys((data.draft && data.draft.errors) || {}).length;
      state.textContent = (bad ? `已保存，${bad} 项测量需修改 Saved; ${bad} field(s) to correct · `
                               : "已自动保存 Saved ") + new Date().toLocaleTimeString("zh-CN", { timeZone: localZone() });
    } catch (error) {
      if (error.status === 401) state.replaceChildren(...signInAgain());
      else state.textContent = "保存失败，内容已保留在本机 Not saved (kept here): " + error.message;
    }
  };
  const changed = () => {
    keep();
    state.textContent = "编辑中… Editing";
    clearTimeout(timer);
    timer = setTimeout(() => { timer = null; save(); }, 1000);
  };
  editor.addEventListener("input", changed);
  // Signing signs what the server has: a save still waiting for its second goes first.
  editor.flush = async () => {
    if (timer === null) return;
    clearTimeout(timer);
    timer = null;
    await save();
  };
  restoreBackup(editor, backupKey, changed);
  for (const button of editor.querySelectorAll("button.phrase")) {
    button.addEventListener("click", () => insertPhrase(editor.elements[button.dataset.insert], button.dataset.text));
  }
  const chooser = document.getElementById("template-chooser");
  if (chooser) chooser.addEventListener("change", () => switchTemplate(chooser, editor, backupKey));
}

/** Show each measurement's refusal under it; the value stays as typed. */
function showFieldErrors(errors) {
  for (const input of document.querySelectorAll("#report-editor input[name^='fields.']")) {
    const name = input.name.slice(7);
    const box = document.getElementById(`err-f-${name}`);
    if (errors[name]) input.setAttribute("aria-invalid", "true"); else input.removeAttribute("aria-invalid");
    if (box) { box.textContent = errors[name] || ""; box.hidden = !errors[name]; }
  }
}

/** What this browser kept but the server never got (the page was left before a save). */
function restoreBackup(form, key, changed) {
  let kept = null;
  try { kept = JSON.parse(localStorage.getItem(key) || "null"); } catch (_) { kept = null; }
  if (!kept) return;
  for (const name of ["findings", "impression", "recommendation"]) {
    if (kept[name] !== undefined && form.elements[name]) form.elements[name].value = kept[name];
  }
  for (const [name, value] of Object.entries(kept.fields || {})) {
    const input = form.elements[`fields.${name}`];
    if (input) input.value = value;
  }
  document.getElementById("draft-restored").hidden = false;
  changed();
}

/** One click inserts a template's normal phrase at the cursor (or after what is there). */
function insertPhrase(area, text) {
  if (!area) return;
  const start = area.selectionStart ?? area.value.length;
  const end = area.selectionEnd ?? area.value.length;
  const before = area.value.slice(0, start);
  const joined = before && !before.endsWith("\n") && start === area.value.length ? "\n" : "";
  area.value = before + joined + text + area.value.slice(end);
  area.focus();
  area.selectionStart = area.selectionEnd = (before + joined + text).length;
  area.dispatchEvent(new Event("input", { bubbles: true }));
}

/** Switching templates keeps the three texts; measurements the new template has no place
 *  for are dropped only after asking. The draft is saved with the new template first. */
async function switchTemplate(chooser, form, backupKey) {
  const option = chooser.selectedOptions[0];
  const keeps = new Set((option.dataset.fields || "").split(",").filter(Boolean));
  const lost = [...form.querySelectorAll("input[name^='fields.']")]
    .filter((input) => input.value.trim() && !keeps.has(input.name.slice(7)));
  if (lost.length && !confirm(`切换模板会丢弃 ${lost.length} 项测量值，继续吗？\n` +
                              `Switching drops ${lost.length} measurement(s). Continue?`)) {
    chooser.value = chooser.dataset.current;
    return;
  }
  form.elements.template.value = chooser.value;
  try {
    await api("PUT", form.dataset.api, formBody(form));
    localStorage.removeItem(backupKey);
  } catch (error) {
    localStorage.setItem(backupKey, JSON.stringify(formBody(form)));  // restored after the reload
  }
  location.search = "?template=" + chooser.value;
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

// Booking form: who of the target institution is free at the chosen time (their own
// availability, leave and other bookings), marked in the specialist list as one types.
const booking = document.getElementById("schedule-form");
if (booking) {
  const hint = document.getElementById("free-hint");
  const select = booking.elements.specialist;
  const check = async () => {
    const start = booking.elements.start.value;
    if (!start) return;
    const minutes = booking.elements.minutes.value || "30";
    try {
      const free = await api("GET", `/api/specialists/free?start=${encodeURIComponent(start)}&minutes=${minutes}`);
      const names = new Set(free.map((p) => p.username));
      for (const option of select.options) {
        option.textContent = option.textContent.replace(/^[✓✗] /, "");
        option.textContent = (names.has(option.value) ? "✓ " : "✗ ") + option.textContent;
      }
      hint.textContent = free.length
        ? `有空 Free: ${free.map((p) => p.display_name || p.username).join("、")}`
        : "此时段没有专家有空 Nobody is free then";
      hint.className = "free-hint " + (names.has(select.value) ? "ok" : "bad");
    } catch (error) {
      hint.textContent = error.message;
    }
  };
  for (const name of ["start", "minutes", "specialist"]) booking.elements[name].addEventListener("change", check);
}
