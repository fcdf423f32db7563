// keygate console: plain JavaScript on the management API, no build step, no dependencies.
//
// Everything the page shows is built with `h()` (DOM nodes, never innerHTML), so a key's
// name or an error message can never inject markup. The admin token lives in this tab's
// sessionStorage; a secret lives in the DOM only while its dialog is open. Signed in
// through single sign-on, the tab holds no credential at all: the session is an HttpOnly
// cookie the browser sends, and every write carries `x-keygate-csrf: 1`.

const TOKEN_SLOT = "keygate.admin-token";
/** How this tab is signed in: "token" (the admin token), "sso" (the session cookie), or null. */
let mode = null;
const PER_PAGE = 20;
const $ = (selector, root = document) => root.querySelector(selector);

// ---- DOM and formatting helpers ------------------------------------------------------

/** An element: `h("td", { class: "num" }, "12")`; children may be nodes, text or arrays. */
function h(tag, attrs = {}, ...children) {
  const svg = ["svg", "rect", "line", "text", "title", "g"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child !== undefined && child !== null && child !== false) el.append(child);
  }
  return el;
}

const number = (n) => (n ?? 0).toLocaleString("en-US");

function dateTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return `${d.toLocaleDateString("en-CA")} ${d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" })}`;
}

/** "in 3 days", "2 hours ago": the coarsest unit that is at least 1. */
function relative(iso) {
  const seconds = Math.round((new Date(iso) - Date.now()) / 1000);
  const units = [["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
  const [unit, size] = units.find(([, size]) => Math.abs(seconds) >= size) ?? units[3];
  return new Intl.RelativeTimeFormat("en", { numeric: "auto" }).format(Math.trunc(seconds / size), unit);
}

/** The `<input type=datetime-local>` value for an instant, in the browser's time zone. */
function localInputValue(iso) {
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function notify(message, kind = "info") {
  const notice = $("#notice");
  notice.textContent = message;
  notice.dataset.kind = kind;
}

// ---- IP allowlist entries, checked as the user types (the service checks again) ------

function isIPv4(text) {
  const parts = text.split(".");
  return parts.length === 4 && parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255);
}

function isIPv6(text) {
  if (!/^[0-9a-fA-F:.]+$/.test(text) || text.split("::").length > 2) return false;
  let groups = text.split(":");
  const tail = groups[groups.length - 1];
  let width = 8;
  if (tail.includes(".")) {
    if (!isIPv4(tail)) return false;
    groups = groups.slice(0, -1);
    width = 6;
  }
  const filled = groups.filter((g) => g !== "");
  if (!filled.every((g) => /^[0-9a-fA-F]{1,4}$/.test(g))) return false;
  return text.includes("::") ? filled.length < width : groups.length === width;
}

/** Why `entry` is not an address or CIDR, or null when it is one. */
export function allowlistProblem(entry) {
  const [address, prefix, extra] = entry.split("/");
  if (extra !== undefined) return "has more than one /";
  const v4 = isIPv4(address);
  if (!v4 && !isIPv6(address)) return "is not an IPv4 or IPv6 address";
  if (prefix === undefined) return null;
  const max = v4 ? 32 : 128;
  if (!/^\d{1,3}$/.test(prefix) || Number(prefix) > max) return `needs a prefix length from 0 to ${max}`;
  return null;
}

// ---- The API -------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, error) {
    super(error?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = error?.code;
    this.param = error?.param;
  }
}

/** An API call: with the admin token when the tab has one, else with the session cookie. */
async function api(method, path, body, token = sessionStorage.getItem(TOKEN_SLOT)) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  // The service refuses a write by cookie without it; a cross-site form cannot send it.
  if (method !== "GET" && method !== "HEAD") headers["x-keygate-csrf"] = "1";
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, { message: `The key-service cannot be reached (${e.message}).` });
  }
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data?.error);
  return data;
}

/** Runs an API call for a page; a 401 signs out, anything else is shown in the notice. */
async function guarded(work) {
  try {
    return await work();
  } catch (e) {
    if (e.status === 401) signOut(ended());
    else notify(e.message, "error");
    throw e;
  }
}

const query = (params) => {
  const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v != null));
  return q.toString() ? `?${q}` : "";
};

// ---- Catalog shared by pages: groups, priced models, the base URL --------------------

const catalog = { groups: [], models: [], baseUrl: "" };

async function loadCatalog() {
  const [groups, models, settings] = await Promise.all([
    api("GET", "/api/v1/groups"),
    api("GET", "/api/v1/models"),
    fetch("/console/settings.json").then((r) => r.json()).catch(() => ({})),
  ]);
  catalog.groups = groups.groups;
  catalog.models = models.models;
  catalog.baseUrl = settings.base_url ?? "";
}

/** Every model name the console knows: priced ones and those named by groups. */
function knownModels() {
  const names = new Set(catalog.models.map((m) => m.name));
  for (const g of catalog.groups) for (const m of g.models) if (m !== "*") names.add(m);
  return [...names].sort();
}

const groupModels = (g) => (g.models.includes("*") ? "all models" : g.models.join(", "));
const groupSummary = (g) =>
  `${groupModels(g)}; price ×${g.ratio}` + (g.rpm ? `; ${number(g.rpm)} RPM` : "") + (g.tpm ? `; ${number(g.tpm)} TPM` : "");

// ---- Sign-in -------------------------------------------------------------------------

/** Who signed in (`GET /api/v1/me`): the operator (`account` null) or a tenant, an
 * account's `owner` or `viewer`. The service enforces it; the console only hides what
 * would be refused. */
const who = { kind: "admin", id: "admin", account: null, role: null };
const isTenant = () => who.account != null;
const canWrite = () => who.role !== "viewer";
/** Pages only the operator has: to a tenant these routes do not exist. */
const ADMIN_PAGES = new Set(["groups", "models", "accounts"]);

/** What the sign-in screen says when the API stops accepting this tab. */
function ended() {
  return mode === "sso"
    ? "Your single sign-on session has ended: sign in again."
    : "The admin token was not accepted any more: sign in again.";
}

function signOut(message = "") {
  mode = null;
  sessionStorage.removeItem(TOKEN_SLOT);
  Object.assign(who, { kind: "admin", id: "admin", account: null, role: null });
  $("#whoami").textContent = "";
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  $("#main").replaceChildren();
  $("#app").hidden = true;
  $("#signin").hidden = false;
  $("#signin-error").textContent = message;
  $("#signin-token").value = "";
  $("#signin-token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $("#signin-token").value.trim();
  const error = $("#signin-error");
  if (!token) {
    error.textContent = "Enter the admin token or an account token.";
    return;
  }
  try {
    await api("GET", "/api/v1/me", undefined, token);
  } catch (e) {
    error.textContent = e.status === 401 ? "That token is not accepted: use the admin token or an account token." : e.message;
    return;
  }
  sessionStorage.setItem(TOKEN_SLOT, token);
  $("#signin-token").value = "";
  mode = "token";
  await start();
}

/** The sign-out button: a single sign-on session is ended at the service too. */
async function signOutClicked() {
  if (mode === "sso") {
    try {
      await fetch("/auth/logout", { method: "POST", headers: { "x-keygate-csrf": "1" }, credentials: "same-origin" });
    } catch {
      // Signed out in this tab all the same; the session lapses by itself.
    }
  }
  signOut("Signed out.");
}

/** Without an admin token: offers single sign-on when the service has it, and goes on
 * with a session the browser already holds (back from the identity provider, or a reload). */
async function resume() {
  const settings = await fetch("/console/settings.json", { cache: "no-store" }).then((r) => r.json()).catch(() => ({}));
  $("#sso-signin").hidden = !settings.sso;
  if (settings.sso) {
    try {
      const me = await api("GET", "/api/v1/me", undefined, null);
      if (me?.kind === "sso") {
        mode = "sso";
        $("#whoami").title = `Signed in through single sign-on as ${me.id}`;
        return start();
      }
    } catch {
      // No session: the sign-in screen.
    }
  }
  signOut();
}

async function start() {
  $("#signin").hidden = true;
  $("#app").hidden = false;
  try {
    Object.assign(who, await guarded(() => api("GET", "/api/v1/me")));
    await guarded(loadCatalog);
  } catch {
    return;
  }
  document.body.dataset.role = who.role ?? "admin";
  for (const link of document.querySelectorAll("nav a[data-admin-only]")) link.hidden = isTenant();
  $("#whoami").textContent = isTenant() ? `${who.account} (${who.role})` : "admin";
  if (!location.hash) location.hash = "#/keys";
  else route();
}

// ---- Pages ---------------------------------------------------------------------------

const pages = { keys: keysPage, usage: usagePage, groups: groupsPage, models: modelsPage, accounts: accountsPage, webhooks: webhooksPage, audit: auditPage };

function route() {
  if ($("#app").hidden) return;
  const name = location.hash.replace(/^#\//, "").split("?")[0];
  const page = pages[name] && !(isTenant() && ADMIN_PAGES.has(name)) ? name : "keys";
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  notify("");
  pages[page]().catch(() => {});
}

function pager(page, perPage, total, go) {
  const pages = Math.max(1, Math.ceil(total / perPage));
  return h("nav", { class: "pager", "aria-label": "Pages" },
    h("button", { type: "button", disabled: page <= 1, onclick: () => go(page - 1) }, "Previous"),
    h("span", {}, `Page ${page} of ${pages} (${number(total)} in all)`),
    h("button", { type: "button", disabled: page >= pages, onclick: () => go(page + 1) }, "Next"));
}

function table(caption, headings, rows, empty) {
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headings.length, class: "empty" }, empty)))));
}

// ---- Keys ----------------------------------------------------------------------------

const keysView = { q: "", status: "", group: "", rotation_due: "", page: 1 };

async function keysPage() {
  const main = $("#main");
  const list = h("div", { id: "key-list" });
  const search = h("input", { id: "key-search", type: "search", value: keysView.q, placeholder: "Part of the name" });
  const status = h("select", { id: "key-status" },
    ["", "active", "disabled", "expired", "exhausted"].map((s) => h("option", { value: s, selected: s === keysView.status }, s || "any")));
  const group = h("select", { id: "key-group" },
    h("option", { value: "" }, "any"),
    catalog.groups.map((g) => h("option", { value: g.name, selected: g.name === keysView.group }, g.name)));
  const due = h("input", { id: "key-rotation-due", type: "checkbox", checked: keysView.rotation_due === "true" });
  const apply = (event) => {
    event?.preventDefault();
    Object.assign(keysView, { q: search.value.trim(), status: status.value, group: group.value, rotation_due: due.checked ? "true" : "", page: 1 });
    refreshKeys(list);
  };
  status.addEventListener("change", apply);
  group.addEventListener("change", apply);
  due.addEventListener("change", apply);
  main.replaceChildren(
    h("div", { class: "page-head" },
      h("h1", {}, "API keys", isTenant() ? h("span", { class: "muted" }, ` of ${who.account}`) : []),
      canWrite() ? h("button", { type: "button", class: "primary", id: "create-key", onclick: () => openKeyDialog() }, "Create API key") : []),
    h("form", { class: "filters", role: "search", onsubmit: apply },
      h("label", { for: "key-search" }, "Search"), search,
      h("label", { for: "key-status" }, "Status"), status,
      h("label", { for: "key-group" }, "Group"), group,
      h("label", { for: "key-rotation-due" }, due, " Rotation due"),
      h("button", { type: "submit" }, "Apply")),
    list);
  await refreshKeys(list);
}

async function refreshKeys(list = $("#key-list")) {
  if (!list) return;
  const { q, status, group, rotation_due, page } = keysView;
  const data = await guarded(() => api("GET", `/api/v1/keys${query({ q, status, group, rotation_due, page, per_page: PER_PAGE })}`));
  list.replaceChildren(
    table("API keys",
      ["Name", "Key", "Status", "Group", "Quota used / remaining", "Expires", "Models", "IP allowlist", "Rate limits", "Last used", "Actions"],
      data.keys.map(keyRow), "No keys yet: create one."),
    pager(data.page, data.per_page, data.total, (p) => { keysView.page = p; refreshKeys(list); }));
}

function quotaCell(key) {
  if (key.unlimited_quota) return [number(key.used_quota), " / ", h("span", { class: "muted" }, "unlimited")];
  const used = `${number(key.used_quota)} / ${number(key.remaining_quota)}`;
  if (!key.resets_at) return used;
  return [used, h("br"), h("span", { class: "muted" }, `per ${key.quota_period}, resets ${relative(key.resets_at)}`)];
}

const CALENDAR_PERIODS = ["total", "day", "week", "month"];

/** "60 RPM · 100,000 TPM · 4 parallel": the key's own limits, empty when it has none. */
function limitsText(key) {
  return [
    key.rpm && `${number(key.rpm)} RPM`,
    key.tpm && `${number(key.tpm)} TPM`,
    key.max_parallel && `${number(key.max_parallel)} parallel`,
  ].filter(Boolean).join(" · ");
}

function expiryCell(key) {
  if (!key.expires_at) return "never";
  return [dateTime(key.expires_at), h("br"), h("span", { class: "muted" }, relative(key.expires_at))];
}

function keyRow(key) {
  const action = (label, onclick, cls) =>
    h("button", { type: "button", class: cls, onclick, "aria-label": `${label} ${key.name}` }, label);
  return h("tr", { "data-key-id": key.id },
    h("th", { scope: "row" }, key.name),
    h("td", {}, h("code", {}, key.masked_key)),
    h("td", {}, h("span", { class: `badge ${key.status}` }, key.status),
      key.rotation_due ? [" ", h("span", { class: "badge rotation-due", title: `Rotate by ${dateTime(key.rotate_by)}` }, "rotation due")] : []),
    h("td", {}, key.group),
    h("td", { class: "num" }, quotaCell(key)),
    h("td", {}, expiryCell(key)),
    h("td", {}, key.models.length ? key.models.join(", ") : h("span", { class: "muted" }, "group's"),
      capsText(key).flatMap((line) => [h("br"), h("span", { class: "muted" }, line)])),
    h("td", {}, key.ip_allowlist.length ? key.ip_allowlist.join(", ") : h("span", { class: "muted" }, "any")),
    h("td", {}, limitsText(key)),
    h("td", {}, key.last_used_at ? relative(key.last_used_at) : h("span", { class: "muted" }, "never")),
    h("td", { class: "actions" }, canWrite() ? [
      action("Edit", () => openKeyDialog(key)),
      action(key.enabled ? "Disable" : "Enable", () => setEnabled(key, !key.enabled)),
      action("Rotate", () => rotateKey(key)),
      action("Delete", () => deleteKey(key), "danger")] : h("span", { class: "muted" }, "read only")));
}

async function setEnabled(key, enabled) {
  await guarded(() => api("PATCH", `/api/v1/keys/${encodeURIComponent(key.id)}`, { enabled }));
  await refreshKeys();
  notify(`${key.name} is ${enabled ? "enabled" : "disabled"}: gateways enforce it within about a second.`);
}

/** Asks before a destructive action; resolves to true when confirmed. */
function confirmAction(title, message, label, extra = []) {
  const dialog = $("#confirm-dialog");
  $("#confirm-title").textContent = title;
  $("#confirm-message").textContent = message;
  $("#confirm-extra").replaceChildren(...extra);
  $("#confirm-ok").textContent = label;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) =>
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

async function deleteKey(key) {
  const ok = await confirmAction(`Delete ${key.name}?`,
    `Every application using ${key.name} (${key.masked_key}) gets 401 invalid_api_key from the next ` +
      "second on. Its usage history stays. This cannot be undone.", `Delete ${key.name}`);
  if (!ok) return;
  await guarded(() => api("DELETE", `/api/v1/keys/${encodeURIComponent(key.id)}`));
  await refreshKeys();
  notify(`${key.name} is deleted.`);
}

async function rotateKey(key) {
  const grace = h("select", { id: "rotate-grace" },
    h("option", { value: "" }, "none: the old secret stops at once"),
    h("option", { value: "1h" }, "1 hour"),
    h("option", { value: "1d" }, "1 day"));
  const ok = await confirmAction(`Rotate ${key.name}?`,
    `${key.name} gets a new secret; its id, settings and usage stay. Applications still using ` +
      `the old secret (${key.masked_key}) get 401 invalid_api_key once it stops.`,
    `Rotate ${key.name}`, [h("label", { for: "rotate-grace" }, "Old secret keeps working for"), grace]);
  if (!ok) return;
  const body = grace.value ? { grace_period: grace.value } : {};
  const rotated = await guarded(() => api("POST", `/api/v1/keys/${encodeURIComponent(key.id)}/rotate`, body));
  await refreshKeys();
  showSecrets([rotated]);
}

// ---- The create / edit dialog --------------------------------------------------------

let editing = null; // the key being edited, or null when creating

/** The key's own rate limits, as the API and the dialog's inputs name them. */
const LIMITS = ["rpm", "tpm", "max_parallel"];

function openKeyDialog(key = null) {
  editing = key;
  const form = $("#key-form");
  form.reset();
  clearErrors(form);
  $("#key-dialog-title").textContent = key ? `Edit ${key.name}` : "Create API key";
  $("#kf-submit").textContent = key ? "Save" : "Create";
  for (const el of form.querySelectorAll("[data-create-only]")) el.hidden = !!key;
  for (const el of form.querySelectorAll("[data-edit-only]")) el.hidden = !key;

  const groups = $("#kf-group");
  groups.replaceChildren(...catalog.groups.map((g) => h("option", { value: g.name }, `${g.name} (${groupModels(g)}, ×${g.ratio})`)));
  const chosen = new Set(key?.models ?? []);
  const known = knownModels();
  $("#kf-models-known").replaceChildren(...known.map((m, i) =>
    h("label", {}, h("input", { type: "checkbox", name: "model", value: m, id: `kf-model-${i}`, checked: chosen.has(m) }), ` ${m}`)));

  if (key) {
    form.elements.namedItem("name").value = key.name;
    groups.value = key.group;
    form.expiry.value = "keep";
    $("#kf-expiry-keep").textContent = key.expires_at ? `Unchanged (${dateTime(key.expires_at)})` : "Unchanged (never)";
    if (key.expires_at) form.expires_at.value = localInputValue(key.expires_at);
    $("#kf-unlimited").checked = key.unlimited_quota;
    $("#kf-quota").value = key.unlimited_quota ? "" : key.quota;
    const calendar = CALENDAR_PERIODS.includes(key.quota_period);
    form.quota_period.value = calendar ? key.quota_period : "custom";
    form.period_span.value = calendar ? "" : key.quota_period;
    $("#kf-models-other").value = key.models.filter((m) => !known.includes(m)).join(", ");
    $("#kf-ips").value = key.ip_allowlist.join("\n");
    $("#kf-caps").value = Object.entries(key.model_caps).map(([model, c]) =>
      `${model} ${c.budget ?? c.tokens}${c.tokens !== undefined ? " tokens" : ""} ${c.period}`).join("\n");
    for (const field of LIMITS) form.elements.namedItem(field).value = key[field] ?? "";
    if (key.rotate_by) form.rotate_by.value = localInputValue(key.rotate_by);
  } else {
    // The seeds' recommended first key.
    form.elements.namedItem("name").value = "dev-local";
    groups.value = catalog.groups.some((g) => g.name === "default") ? "default" : groups.value;
    form.expiry.value = "1mo";
    form.quota_period.value = "total";
    form.period_span.value = "";
  }
  syncKeyForm();
  $("#key-dialog").showModal();
  form.elements.namedItem("name").select();
}

/** Keeps the dependent fields in step: quota under the switch, custom date, group info. */
function syncKeyForm() {
  const form = $("#key-form");
  const unlimited = $("#kf-unlimited").checked;
  $("#kf-quota").disabled = unlimited;
  $("#kf-quota").required = !unlimited;
  $("#kf-period").disabled = unlimited;
  $("#kf-period-span").disabled = unlimited || form.quota_period.value !== "custom";
  $("#kf-expires-at").disabled = form.expiry.value !== "custom";
  const group = catalog.groups.find((g) => g.name === $("#kf-group").value);
  $("#kf-group-info").textContent = group ? `Group ${group.name}: ${groupSummary(group)}` : "";
  $("#kf-rpm").placeholder = group?.rpm ? `group's limit (${number(group.rpm)})` : "no limit";
  $("#kf-tpm").placeholder = group?.tpm ? `group's limit (${number(group.tpm)})` : "no limit";
  checkAllowlist();
}

/** "claude-opus-* 5000 day" lines to the API's model_caps; the service checks the rest. */
function modelCaps(text) {
  const caps = {};
  for (const [i, line] of text.split(/\r?\n/).map((l) => l.trim()).entries()) {
    if (!line) continue;
    const m = /^(\S+)\s+(\d+)(\s+tokens)?(?:\s+(\S+))?$/.exec(line);
    if (!m) throw new ApiError(400, { param: "model_caps", message: `Line ${i + 1}: write a model, an amount (add "tokens" to count tokens) and a period, such as "claude-opus-* 5000 day".` });
    caps[m[1]] = { [m[3] ? "tokens" : "budget"]: Number(m[2]), period: m[4] ?? "total" };
  }
  return caps;
}

/** "claude-opus-*: 1,200 / 5,000 per day": a key's limits per model, empty when it has none. */
function capsText(key) {
  return Object.entries(key.model_caps).map(([model, c]) =>
    `${model}: ${number(c.used)} / ${number(c.budget ?? c.tokens)}${c.tokens !== undefined ? " tokens" : ""} per ${c.period}`);
}

function allowlistEntries() {
  return $("#kf-ips").value.split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
}

function checkAllowlist() {
  const problems = allowlistEntries()
    .map((entry, i) => [entry, i, allowlistProblem(entry)])
    .filter(([, , problem]) => problem);
  $("#kf-ips-error").replaceChildren(...problems.map(([entry, i, problem]) => h("li", {}, `Line ${i + 1}: ${entry} ${problem}.`)));
  $("#kf-ips").setAttribute("aria-invalid", problems.length ? "true" : "false");
  return problems.length === 0;
}

function clearErrors(form) {
  for (const el of form.querySelectorAll("[data-error]")) el.replaceChildren();
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

/** Shows an API error next to the field it names (`param`), or above the form. */
function showFieldError(form, error) {
  const param = (error.param ?? "").split(/[[.]/)[0];
  const slot = [...form.querySelectorAll("[data-error]")].find((el) => el.dataset.error.split(" ").includes(param))
    ?? form.querySelector('[data-error="form"]');
  slot.replaceChildren(slot.tagName === "UL" ? h("li", {}, error.message) : error.message);
  const input = form.elements[param] ?? (param === "ip_allowlist" ? $("#kf-ips") : null);
  if (input?.setAttribute) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
}

function keyFormBody() {
  const form = $("#key-form");
  const body = { name: form.elements.namedItem("name").value.trim(), group: $("#kf-group").value };
  const expiry = form.expiry.value;
  if (expiry === "custom") {
    if (!form.expires_at.value) throw new ApiError(400, { param: "expires_at", message: "Pick a date and time." });
    body.expires_at = new Date(form.expires_at.value).toISOString().replace(/\.\d{3}Z$/, "Z");
  } else if (expiry !== "keep") {
    body.expires_in = expiry;
  }
  body.unlimited_quota = $("#kf-unlimited").checked;
  if (!body.unlimited_quota) {
    const quota = form.quota.value.trim();
    if (!/^\d+$/.test(quota)) throw new ApiError(400, { param: "quota", message: "Enter a whole number of credits, or switch on unlimited." });
    body.quota = Number(quota);
    const period = form.quota_period.value;
    body.quota_period = period === "custom" ? form.period_span.value.trim() : period;
  }
  const ticked = [...form.querySelectorAll('input[name="model"]:checked')].map((i) => i.value);
  const other = form.models_other.value.split(",").map((m) => m.trim()).filter(Boolean);
  body.models = [...new Set([...ticked, ...other])];
  body.ip_allowlist = allowlistEntries();
  body.model_caps = modelCaps(form.model_caps.value);
  for (const field of LIMITS) {
    // Empty is null (no limit of the key's own; on edit, it takes one away). The service
    // checks the range.
    const input = form.elements.namedItem(field);
    const value = input.value.trim();
    if (input.validity.badInput || (value !== "" && !/^\d+$/.test(value))) {
      throw new ApiError(400, { param: field, message: "Enter a whole number, or leave it empty for no limit." });
    }
    body[field] = value === "" ? null : Number(value);
  }
  const rotateBy = form.rotate_by.value;
  // On edit, empty clears the date; on create it is simply left out.
  if (rotateBy) body.rotate_by = new Date(rotateBy).toISOString().replace(/\.\d{3}Z$/, "Z");
  else if (editing) body.rotate_by = null;
  if (!editing) body.quantity = Number(form.quantity.value || 1);
  return body;
}

async function submitKeyForm(event) {
  event.preventDefault();
  const form = $("#key-form");
  clearErrors(form);
  if (!form.elements.namedItem("name").value.trim()) return showFieldError(form, { param: "name", message: "A name is required." });
  if (!checkAllowlist()) return $("#kf-ips").focus();
  const submit = $("#kf-submit");
  submit.disabled = true;
  try {
    const body = keyFormBody();
    if (editing) {
      const saved = await api("PATCH", `/api/v1/keys/${encodeURIComponent(editing.id)}`, body);
      $("#key-dialog").close();
      await refreshKeys();
      notify(`${saved.name} is saved.`);
    } else {
      const created = await api("POST", "/api/v1/keys", body);
      $("#key-dialog").close();
      await refreshKeys();
      showSecrets(created.keys);
    }
  } catch (e) {
    if (e.status === 401) signOut(ended());
    else showFieldError(form, e);
  } finally {
    submit.disabled = false;
  }
}

// ---- Secrets, shown once -------------------------------------------------------------

async function copy(text, input) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    input.select(); // Older browsers and plain-HTTP pages: the selection and the old command.
    if (!document.execCommand("copy")) throw new Error("copy failed");
  }
}

function showSecrets(keys) {
  const many = keys.length > 1;
  $("#secret-title").textContent = many ? `Copy your ${keys.length} new keys now` : "Copy your new key now";
  $("#secret-list").replaceChildren(...keys.map((key, i) => {
    const input = h("input", { id: `secret-${i}`, class: "secret", readonly: true, value: key.key, spellcheck: "false" });
    const done = $("#secret-copied");
    return h("li", {},
      h("label", { for: `secret-${i}` }, key.name),
      h("div", { class: "copy-row" }, input,
        h("button", {
          type: "button", class: "primary", "aria-label": `Copy the secret of ${key.name}`,
          onclick: () => copy(key.key, input).then(
            () => { done.textContent = `Copied the secret of ${key.name}.`; },
            () => { done.textContent = "Copying failed: select the secret and copy it by hand."; }),
        }, "Copy")));
  }));
  const base = catalog.baseUrl.replace(/\/$/, "");
  const model = keys[0].models[0] ?? knownModels()[0] ?? "gpt-4o-mini";
  $("#secret-base").textContent = base;
  $("#secret-curl").value =
    `curl ${base}/chat/completions \\\n  -H "Authorization: Bearer ${keys[0].key}" \\\n` +
    `  -H "Content-Type: application/json" \\\n` +
    `  -d '{"model": "${model}", "messages": [{"role": "user", "content": "Hello"}]}'`;
  $("#secret-copied").textContent = "";
  $("#secret-dialog").showModal();
}

/** Takes every secret out of the page the moment its dialog closes, however it closes. */
function forgetSecrets() {
  $("#secret-list").replaceChildren();
  $("#secret-curl").value = "";
  $("#secret-copied").textContent = "";
}

// ---- Usage ---------------------------------------------------------------------------

const usageView = { key_id: "", model: "", range: "24h", page: 1 };
const RANGES = {
  "24h": { label: "last 24 hours, per hour", bucket: "hour", seconds: 86400 },
  "7d": { label: "last 7 days, per hour", bucket: "hour", seconds: 7 * 86400 },
  "30d": { label: "last 30 days, per day", bucket: "day", seconds: 30 * 86400 },
};

async function usagePage() {
  const main = $("#main");
  const keys = await guarded(() => api("GET", `/api/v1/keys${query({ per_page: 100 })}`));
  const keySelect = h("select", { id: "usage-key" }, h("option", { value: "" }, "all keys"),
    keys.keys.map((k) => h("option", { value: k.id, selected: k.id === usageView.key_id }, `${k.name} (${k.masked_key})`)));
  const model = h("input", { id: "usage-model", list: "usage-models", value: usageView.model, placeholder: "any" });
  const models = h("datalist", { id: "usage-models" }, knownModels().map((m) => h("option", { value: m })));
  const range = h("select", { id: "usage-range" },
    Object.entries(RANGES).map(([v, r]) => h("option", { value: v, selected: v === usageView.range }, r.label)));
  const body = h("div", { id: "usage-body" });
  const apply = (event) => {
    event?.preventDefault();
    Object.assign(usageView, { key_id: keySelect.value, model: model.value.trim(), range: range.value, page: 1 });
    refreshUsage(body);
  };
  keySelect.addEventListener("change", apply);
  range.addEventListener("change", apply);
  main.replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Usage")),
    h("form", { class: "filters", onsubmit: apply },
      h("label", { for: "usage-key" }, "Key"), keySelect,
      h("label", { for: "usage-model" }, "Model"), model, models,
      h("label", { for: "usage-range" }, "Period"), range,
      h("button", { type: "submit" }, "Apply")),
    body);
  await refreshUsage(body);
}

async function refreshUsage(body = $("#usage-body")) {
  const { key_id, model, range, page } = usageView;
  const { bucket, seconds } = RANGES[range];
  const to = new Date();
  const from = new Date(to - seconds * 1000);
  const iso = (d) => d.toISOString().replace(/\.\d{3}Z$/, "Z");
  const filter = { key_id, model, from: iso(from), to: iso(to) };
  const [summary, log] = await guarded(() => Promise.all([
    api("GET", `/api/v1/usage/summary${query({ ...filter, bucket })}`),
    api("GET", `/api/v1/usage${query({ ...filter, page, per_page: PER_PAGE })}`),
  ]));
  const size = bucket === "hour" ? 3600 : 86400;
  const start = Math.floor(from / 1000 / size) * size;
  const starts = [];
  for (let t = start; t * 1000 < to; t += size) starts.push(t);
  body.replaceChildren(
    h("div", { class: "charts" },
      chart("Tokens (input + output)", starts, summary.buckets, (b) => b.input_tokens + b.output_tokens, bucket),
      chart("Credits", starts, summary.buckets, (b) => b.cost, bucket)),
    totalsTable(summary.buckets),
    h("h2", {}, "Request log"),
    table("Request log", ["Time", "Key", "Model", "Input", "Cached", "Output", "Credits", "Status"],
      log.usage.map((u) => h("tr", {},
        h("td", {}, dateTime(u.ts)),
        h("td", {}, u.key_name ?? h("span", { class: "muted" }, "deleted key")),
        h("td", {}, u.model),
        h("td", { class: "num" }, number(u.input_tokens)),
        h("td", { class: "num" }, number(u.cached_input_tokens)),
        h("td", { class: "num" }, number(u.output_tokens)),
        h("td", { class: "num" }, number(u.cost), u.priced ? "" : h("span", { class: "muted" }, " (no price)")),
        h("td", {}, String(u.status), u.estimated ? h("span", { class: "badge estimated", title: "The response ended without its usage: tokens estimated" }, "estimated") : ""))),
      "No requests in this period."),
    pager(log.page, log.per_page, log.total, (p) => { usageView.page = p; refreshUsage(body); }));
}

const PALETTE = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626"];

/** A stacked bar chart, one bar per bucket, one colour per model, as inline SVG. */
function chart(title, starts, buckets, value, bucket) {
  const models = [...new Set(buckets.map((b) => b.model))].sort();
  const colour = (m) => PALETTE[models.indexOf(m) % PALETTE.length];
  const byStart = new Map(starts.map((t) => [t, []]));
  for (const b of buckets) byStart.get(Date.parse(b.ts) / 1000)?.push(b);
  const totals = starts.map((t) => byStart.get(t).reduce((sum, b) => sum + value(b), 0));
  const max = Math.max(1, ...totals);
  const [width, height, left, bottom] = [600, 180, 48, 20];
  const barWidth = (width - left) / starts.length;
  const label = (t) => { const d = new Date(t * 1000); return bucket === "hour" ? dateTime(d.toISOString()) : d.toLocaleDateString("en-CA"); };
  const sum = totals.reduce((a, b) => a + b, 0);
  const bars = starts.flatMap((t, i) => {
    let y = height - bottom;
    return byStart.get(t).map((b) => {
      const barHeight = (value(b) / max) * (height - bottom - 10);
      y -= barHeight;
      return h("rect", { x: left + i * barWidth + 1, y, width: Math.max(1, barWidth - 2), height: barHeight, fill: colour(b.model) },
        h("title", {}, `${label(t)}: ${b.model} ${number(value(b))}`));
    });
  });
  return h("figure", { class: "chart" },
    h("figcaption", {}, `${title}: ${number(sum)} in all`),
    h("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${title} per ${bucket}, ${number(sum)} in all` },
      h("line", { x1: left, y1: height - bottom, x2: width, y2: height - bottom, stroke: "#6b7280" }),
      h("text", { x: left - 4, y: 14, "text-anchor": "end", "font-size": 11 }, number(max)),
      h("text", { x: left - 4, y: height - bottom, "text-anchor": "end", "font-size": 11 }, "0"),
      h("text", { x: left, y: height - 4, "font-size": 11 }, label(starts[0])),
      h("text", { x: width, y: height - 4, "text-anchor": "end", "font-size": 11 }, label(starts[starts.length - 1])),
      bars),
    h("ul", { class: "legend" }, models.map((m) => h("li", {}, h("span", { class: "swatch", "data-colour": colour(m) }), m))));
}

function totalsTable(buckets) {
  const totals = new Map();
  for (const b of buckets) {
    const t = totals.get(b.model) ?? { requests: 0, input: 0, cached: 0, output: 0, cost: 0 };
    t.requests += b.requests; t.input += b.input_tokens; t.cached += b.cached_input_tokens;
    t.output += b.output_tokens; t.cost += b.cost;
    totals.set(b.model, t);
  }
  return table("Totals per model", ["Model", "Requests", "Input tokens", "Cached input", "Output tokens", "Credits"],
    [...totals].map(([model, t]) => h("tr", {}, h("th", { scope: "row" }, model),
      [t.requests, t.input, t.cached, t.output, t.cost].map((n) => h("td", { class: "num" }, number(n))))),
    "No usage in this period.");
}

// ---- Groups, model prices, accounts --------------------------------------------------

/** A small form whose API errors land next to the field they name. */
function adminForm(id, fields, submitLabel, send) {
  const form = h("form", { id, class: "admin-form", novalidate: true },
    h("p", { class: "field-error", "data-error": "form", role: "alert" }),
    fields.map(([name, label, attrs = {}]) => h("div", { class: "field" },
      h("label", { for: `${id}-${name}` }, label),
      h("input", { id: `${id}-${name}`, name, ...attrs }),
      h("p", { class: "field-error", "data-error": name }))),
    h("button", { type: "submit", class: "primary" }, submitLabel));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    try {
      await send(form);
      form.reset();
    } catch (e) {
      if (e.status === 401) signOut(ended());
      else showFieldError(form, e);
    }
  });
  return form;
}

const optionalNumber = (value) => (value.trim() === "" ? undefined : Number(value));

async function groupsPage() {
  await guarded(loadCatalog);
  const form = adminForm("group-form", [
    ["name", "Name", { required: true }],
    ["models", "Models, comma-separated (* = every model)", { placeholder: "*" }],
    ["ratio", "Price multiplier", { type: "number", step: "any", min: 0, placeholder: "1" }],
    ["rpm", "Requests per minute", { type: "number", min: 1, placeholder: "no limit" }],
    ["tpm", "Tokens per minute", { type: "number", min: 1, placeholder: "no limit" }],
  ], "Save group", async (f) => {
    const models = f.models.value.split(",").map((m) => m.trim()).filter(Boolean);
    await api("PUT", `/api/v1/groups/${encodeURIComponent(f.elements.namedItem("name").value.trim())}`, {
      models: models.length ? models : undefined,
      ratio: optionalNumber(f.ratio.value),
      rpm: optionalNumber(f.rpm.value),
      tpm: optionalNumber(f.tpm.value),
    });
    notify(`Group ${f.elements.namedItem("name").value.trim()} is saved.`);
    await groupsPage();
  });
  const edit = (g) => {
    form.elements.namedItem("name").value = g.name; form.models.value = g.models.join(", "); form.ratio.value = g.ratio;
    form.rpm.value = g.rpm ?? ""; form.tpm.value = g.tpm ?? ""; form.models.focus();
  };
  const remove = async (g) => {
    if (!(await confirmAction(`Delete group ${g.name}?`, `Keys of group ${g.name} must move to another group first; the service refuses otherwise.`, `Delete ${g.name}`))) return;
    await guarded(() => api("DELETE", `/api/v1/groups/${encodeURIComponent(g.name)}`));
    notify(`Group ${g.name} is deleted.`);
    await groupsPage();
  };
  $("#main").replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Groups")),
    table("Groups", ["Name", "Models", "Price multiplier", "RPM", "TPM", "Actions"],
      catalog.groups.map((g) => h("tr", {},
        h("th", { scope: "row" }, g.name), h("td", {}, groupModels(g)), h("td", { class: "num" }, `×${g.ratio}`),
        h("td", { class: "num" }, g.rpm ? number(g.rpm) : "—"), h("td", { class: "num" }, g.tpm ? number(g.tpm) : "—"),
        h("td", { class: "actions" },
          h("button", { type: "button", onclick: () => edit(g), "aria-label": `Edit ${g.name}` }, "Edit"),
          h("button", { type: "button", class: "danger", onclick: () => remove(g), "aria-label": `Delete ${g.name}` }, "Delete")))),
      "No groups."),
    h("h2", {}, "Add or change a group"), form);
}

async function modelsPage() {
  await guarded(loadCatalog);
  const form = adminForm("price-form", [
    ["name", "Model", { required: true, placeholder: "gpt-4o-mini" }],
    ["input", "Input, credits per 1M tokens", { type: "number", step: "any", min: 0, required: true }],
    ["cached_input", "Cached input, credits per 1M tokens", { type: "number", step: "any", min: 0, placeholder: "same as input" }],
    ["output", "Output, credits per 1M tokens", { type: "number", step: "any", min: 0, required: true }],
  ], "Save price", async (f) => {
    await api("PUT", `/api/v1/models/${encodeURIComponent(f.elements.namedItem("name").value.trim())}`, {
      input: optionalNumber(f.input.value), output: optionalNumber(f.output.value),
      cached_input: optionalNumber(f.cached_input.value),
    });
    notify(`The price of ${f.elements.namedItem("name").value.trim()} is saved.`);
    await modelsPage();
  });
  $("#main").replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Model prices")),
    h("p", { class: "hint" }, "Credits per 1,000,000 tokens, before the group's multiplier. A model without a price costs nothing."),
    table("Model prices", ["Model", "Input", "Cached input", "Output", "Actions"],
      catalog.models.map((m) => h("tr", {},
        h("th", { scope: "row" }, m.name),
        [m.input, m.cached_input ?? m.input, m.output].map((n) => h("td", { class: "num" }, number(n))),
        h("td", { class: "actions" }, h("button", {
          type: "button", "aria-label": `Edit ${m.name}`,
          onclick: () => { form.elements.namedItem("name").value = m.name; form.input.value = m.input; form.cached_input.value = m.cached_input ?? ""; form.output.value = m.output; form.input.focus(); },
        }, "Edit")))),
      "No prices yet."),
    h("h2", {}, "Set a price"), form);
}

async function accountsPage() {
  const data = await guarded(() => api("GET", "/api/v1/accounts"));
  const numberOf = (input) => (input.value.trim() === "" ? null : Number(input.value));
  const form = adminForm("account-form", [
    ["name", "Account", { required: true }],
    ["balance", "Balance in credits (empty: unlimited)", { type: "number", step: 1 }],
    ["spend_limit", "Spending limit per period (empty: none)", { type: "number", step: 1, min: 0 }],
    ["quota_period", "Period: total, day, week, month or a span such as 72h", { value: "total" }],
  ], "Save account", async (f) => {
    const name = f.elements.namedItem("name").value.trim();
    const exists = data.accounts.some((a) => a.name === name);
    const budget = {
      balance: numberOf(f.balance),
      spend_limit: numberOf(f.spend_limit),
      quota_period: f.quota_period.value.trim() || "total",
    };
    if (exists) await api("PATCH", `/api/v1/accounts/${encodeURIComponent(name)}`, budget);
    else await api("POST", "/api/v1/accounts", { name, ...budget });
    notify(`Account ${name} is saved.`);
    await accountsPage();
  });
  $("#main").replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Accounts")),
    h("p", { class: "hint" }, "Every key draws on its account's balance; a key's own quota can only limit it further."),
    table("Accounts", ["Account", "Balance", "Spent / limit this period", "Actions"],
      data.accounts.map((a) => h("tr", {},
        h("th", { scope: "row" }, a.name),
        h("td", { class: "num" }, a.balance === null ? h("span", { class: "muted" }, "unlimited") : number(a.balance)),
        h("td", { class: "num" }, a.spend_limit === null ? h("span", { class: "muted" }, "no limit")
          : [`${number(a.period_used)} / ${number(a.spend_limit)}`,
            ...(a.resets_at ? [h("br"), h("span", { class: "muted" }, `per ${a.quota_period}, resets ${relative(a.resets_at)}`)] : [])]),
        h("td", { class: "actions" }, h("button", {
          type: "button", "aria-label": `Edit ${a.name}`,
          onclick: () => {
            form.elements.namedItem("name").value = a.name;
            form.balance.value = a.balance ?? "";
            form.spend_limit.value = a.spend_limit ?? "";
            form.quota_period.value = a.quota_period;
            form.balance.focus();
          },
        }, "Edit")))),
      "No accounts."),
    h("h2", {}, "Add an account or set a balance"), form);
}

// ---- Webhooks ------------------------------------------------------------------------

async function webhooksPage() {
  const data = await guarded(() => api("GET", "/api/v1/webhooks"));
  const log = h("div", { id: "delivery-log" });
  const form = adminForm("webhook-form", [
    ["url", "URL (an http or https address)", { required: true, type: "url" }],
    // A tenant's webhooks hear of its own account only (the service sets it).
    ...(isTenant() ? [] : [["account", "Account (empty: every account's events)"]]),
    ["events", "Event types, comma-separated (empty: all)"],
  ], "Create webhook", async (f) => {
    const body = { url: f.url.value.trim() };
    const account = f.account?.value.trim();
    if (account) body.account = account;
    body.events = f.events.value.split(",").map((e) => e.trim()).filter(Boolean);
    const created = await api("POST", "/api/v1/webhooks", body);
    await webhooksPage();
    showWebhookSecret(created);
  });
  $("#main").replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Webhooks")),
    h("p", { class: "hint" }, "Alerts are POSTed to each webhook, signed with its secret (see docs/alerts.md); the secret is shown once."),
    table("Webhooks", ["URL", "Account", "Events", "Enabled", "Actions"],
      data.webhooks.map((w) => h("tr", { "data-webhook-id": w.id },
        h("th", { scope: "row" }, h("code", {}, w.url)),
        h("td", {}, w.account ?? h("span", { class: "muted" }, "all (global)")),
        h("td", {}, w.events.length ? w.events.join(", ") : h("span", { class: "muted" }, "all")),
        h("td", {}, w.enabled ? "yes" : "no"),
        h("td", { class: "actions" },
          h("button", { type: "button", "aria-label": `Deliveries of ${w.url}`, onclick: () => showDeliveries(w, log, 1) }, "Deliveries"),
          canWrite() ? [
            h("button", { type: "button", "aria-label": `Test ${w.url}`, onclick: () => testWebhook(w, log) }, "Test"),
            h("button", { type: "button", "aria-label": `Rotate the secret of ${w.url}`, onclick: () => rotateWebhookSecret(w) }, "Rotate secret"),
            h("button", { type: "button", class: "danger", "aria-label": `Delete ${w.url}`, onclick: () => deleteWebhook(w) }, "Delete")] : []))),
      "No webhooks yet."),
    log,
    canWrite() ? [h("h2", {}, "Add a webhook"), form] : []);
}

function showWebhookSecret(webhook) {
  const field = h("input", { type: "text", readonly: true, value: webhook.secret, id: "webhook-secret", size: 44 });
  $("#delivery-log").replaceChildren(
    h("div", { class: "secret-box", role: "status" },
      h("h2", {}, "Signing secret (shown once)"),
      h("p", {}, `Deliveries to ${webhook.url} carry X-Keygate-Signature: sha256=HMAC(secret, timestamp + "." + body).`),
      field, " ", h("button", { type: "button", onclick: () => copy(webhook.secret, field).catch(() => notify("Copying failed: select the secret and copy it by hand.", "error")) }, "Copy")));
}

async function testWebhook(webhook, log) {
  const queued = await guarded(() => api("POST", `/api/v1/webhooks/${encodeURIComponent(webhook.id)}/test`));
  notify(`Test event ${queued.event_id} queued.`);
  await showDeliveries(webhook, log, 1);
}

async function rotateWebhookSecret(webhook) {
  if (!(await confirmAction("Rotate the signing secret?", `Deliveries to ${webhook.url} will be signed with a new secret from now on.`, "Rotate"))) return;
  const rotated = await guarded(() => api("POST", `/api/v1/webhooks/${encodeURIComponent(webhook.id)}/rotate-secret`));
  showWebhookSecret(rotated);
}

async function deleteWebhook(webhook) {
  if (!(await confirmAction("Delete this webhook?", `${webhook.url} will get no more alerts, and its delivery log goes with it.`, "Delete"))) return;
  await guarded(() => api("DELETE", `/api/v1/webhooks/${encodeURIComponent(webhook.id)}`));
  notify("Webhook deleted.");
  await webhooksPage();
}

async function showDeliveries(webhook, log, page) {
  const data = await guarded(() => api("GET", `/api/v1/webhooks/${encodeURIComponent(webhook.id)}/deliveries${query({ page, per_page: PER_PAGE })}`));
  log.replaceChildren(
    h("h2", {}, `Deliveries to ${webhook.url}`),
    table("Deliveries", ["Event", "Type", "Status", "Attempts", "Last answer", "Created", "Next attempt / delivered"],
      data.deliveries.map((d) => h("tr", {},
        h("td", {}, h("code", {}, d.event_id)),
        h("td", {}, d.event_type),
        h("td", {}, h("span", { class: `badge ${d.status}` }, d.status)),
        h("td", { class: "num" }, number(d.attempts)),
        h("td", {}, d.last_status ? String(d.last_status) : (d.last_error ?? "")),
        h("td", {}, dateTime(d.created_at)),
        h("td", {}, d.delivered_at ? dateTime(d.delivered_at) : (d.next_attempt_at ? relative(d.next_attempt_at) : "")))),
      "Nothing delivered yet."),
    pager(data.page, data.per_page, data.total, (p) => showDeliveries(webhook, log, p)));
}

// ---- Audit log -------------------------------------------------------------------------

const auditView = { action: "", actor_kind: "", actor_id: "", account: "", from: "", to: "", page: 1 };
const AUDIT_ACTIONS = [
  "key.", "key.create", "key.update", "key.rotate", "key.delete",
  "group.", "group.put", "group.delete", "model.put",
  "account.", "account.create", "account.update",
  "token.", "token.create", "token.rotate", "token.revoke",
  "webhook.", "webhook.create", "webhook.update", "webhook.delete", "webhook.rotate_secret",
];

async function auditPage() {
  const accounts = await guarded(() => api("GET", "/api/v1/accounts"));
  const action = h("input", { id: "audit-action", list: "audit-actions", value: auditView.action, placeholder: "any, or a prefix such as key." });
  const actions = h("datalist", { id: "audit-actions" }, AUDIT_ACTIONS.map((a) => h("option", { value: a })));
  const kind = h("select", { id: "audit-actor-kind" },
    ["", "admin", "token", "sso", "cli"].map((k) => h("option", { value: k, selected: k === auditView.actor_kind }, k || "anyone")));
  const actor = h("input", { id: "audit-actor-id", value: auditView.actor_id, placeholder: "token id, SSO subject…", size: 16 });
  const account = h("input", { id: "audit-account", list: "audit-accounts", value: auditView.account, placeholder: "any", size: 12 });
  const accountList = h("datalist", { id: "audit-accounts" }, accounts.accounts.map((a) => h("option", { value: a.name })));
  const from = h("input", { id: "audit-from", type: "datetime-local", value: auditView.from });
  const to = h("input", { id: "audit-to", type: "datetime-local", value: auditView.to });
  const list = h("div", { id: "audit-list" });
  const apply = (event) => {
    event?.preventDefault();
    Object.assign(auditView, {
      action: action.value.trim(), actor_kind: kind.value, actor_id: actor.value.trim(), account: account.value.trim(),
      from: from.value, to: to.value, page: 1,
    });
    refreshAudit(list);
  };
  kind.addEventListener("change", apply);
  $("#main").replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Audit log")),
    h("p", { class: "hint" }, "Every change made through the API or this console: who, from where, and what it was before and after. Secrets are never recorded."),
    h("form", { class: "filters", role: "search", onsubmit: apply },
      h("label", { for: "audit-action" }, "Action"), action, actions,
      h("label", { for: "audit-actor-kind" }, "Who"), kind,
      h("label", { for: "audit-actor-id", class: "visually-hidden" }, "Actor id"), actor,
      h("label", { for: "audit-account" }, "Account"), account, accountList,
      h("label", { for: "audit-from" }, "From"), from,
      h("label", { for: "audit-to" }, "To"), to,
      h("button", { type: "submit" }, "Apply")),
    list);
  await refreshAudit(list);
}

/** A `datetime-local` value (the browser's time zone) as RFC 3339 in UTC, or "". */
const utc = (local) => (local ? new Date(local).toISOString().replace(/\.\d{3}Z$/, "Z") : "");

async function refreshAudit(list = $("#audit-list")) {
  if (!list) return;
  const { action, actor_kind, actor_id, account, from, to, page } = auditView;
  const filter = { action, actor_kind, actor_id, account, from: utc(from), to: utc(to) };
  const data = await guarded(() => api("GET", `/api/v1/audit${query({ ...filter, page, per_page: PER_PAGE })}`));
  list.replaceChildren(
    table("Audit log", ["When", "Who", "Address", "Action", "Target", "Account", "Change"],
      data.entries.map(auditRow), "Nothing recorded for these filters."),
    pager(data.page, data.per_page, data.total, (p) => { auditView.page = p; refreshAudit(list); }));
}

function auditRow(entry) {
  const who = entry.actor.kind === "admin" ? "admin"
    : [`${entry.actor.kind} `, h("code", {}, entry.actor.id), entry.actor.account ? h("span", { class: "muted" }, ` (${entry.actor.account})`) : ""];
  return h("tr", { "data-audit-id": entry.id },
    h("td", {}, h("time", { datetime: entry.at, title: entry.at }, dateTime(entry.at))),
    h("td", {}, who),
    h("td", {}, entry.address ?? h("span", { class: "muted" }, "unknown")),
    h("td", {}, h("code", {}, entry.action)),
    h("td", {}, h("code", {}, entry.target)),
    h("td", {}, entry.account ?? h("span", { class: "muted" }, "global")),
    h("td", {}, changeCell(entry)));
}

/** JSON as `path → text` pairs: {"a": {"b": 1}} gives "a.b" → "1"; lists are shown whole. */
function flatten(value, prefix = "", out = new Map()) {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    const names = Object.keys(value);
    if (!names.length && prefix) out.set(prefix, "{}");
    for (const name of names) flatten(value[name], prefix ? `${prefix}.${name}` : name, out);
  } else if (value !== undefined && (prefix || value !== null)) {
    out.set(prefix || "(value)", JSON.stringify(value));
  }
  return out;
}

/** What changed between two views, field by field: added (+), removed (-), changed (~). */
export function changeLines(before, after) {
  const was = flatten(before ?? {});
  const now = flatten(after ?? {});
  const lines = [];
  for (const path of [...new Set([...was.keys(), ...now.keys()])].sort()) {
    const [a, b] = [was.get(path), now.get(path)];
    if (a === b) continue;
    if (a === undefined) lines.push({ kind: "added", text: `+ ${path}: ${b}` });
    else if (b === undefined) lines.push({ kind: "removed", text: `- ${path}: ${a}` });
    else lines.push({ kind: "changed", text: `~ ${path}: ${a} → ${b}` });
  }
  return lines;
}

/** The change as a list of lines (text nodes only), folded until asked for. */
function changeCell(entry) {
  const lines = changeLines(entry.before, entry.after);
  if (!lines.length) return h("span", { class: "muted" }, entry.before || entry.after ? "no field changed" : "—");
  const label = entry.before == null ? "created" : entry.after == null ? "removed" : "changed";
  return h("details", { class: "change" },
    h("summary", {}, `${lines.length} field${lines.length === 1 ? "" : "s"} ${label}`),
    h("ul", { class: "diff" }, lines.map((line) => h("li", { class: line.kind }, line.text))));
}

// ---- Wiring --------------------------------------------------------------------------

function wire() {
  $("#signin-form").addEventListener("submit", signIn);
  $("#signout").addEventListener("click", signOutClicked);
  window.addEventListener("hashchange", route);

  const keyForm = $("#key-form");
  keyForm.addEventListener("submit", submitKeyForm);
  keyForm.addEventListener("input", syncKeyForm);
  keyForm.addEventListener("change", syncKeyForm);
  keyForm.querySelector("[data-close]").addEventListener("click", () => $("#key-dialog").close());

  $("#secret-done").addEventListener("click", () => $("#secret-dialog").close());
  $("#secret-dialog").addEventListener("close", forgetSecrets);
  // Legends' colour swatches: set through the CSSOM, which the page's CSP allows.
  new MutationObserver(() => {
    for (const swatch of document.querySelectorAll(".swatch[data-colour]")) swatch.style.background = swatch.dataset.colour;
  }).observe($("#main"), { childList: true, subtree: true });

  if (sessionStorage.getItem(TOKEN_SLOT)) {
    mode = "token";
    start();
  } else resume();
}

wire();
