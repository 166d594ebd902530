// The maas console: every view is drawn here from the public API, with the signed-in key as
// the Bearer header. The key lives in this tab's sessionStorage only (never localStorage, a
// URL or a log). Server text is always set as textContent, never parsed as HTML.
"use strict";

const KEY = "maas.key";
const state = { cards: [], accepted: [], who: null, page: "catalog" };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else if (name === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const reply = await fetch(path, {
    method: options.method || (options.body !== undefined ? "POST" : "GET"), headers,
    body: options.body !== undefined ? JSON.stringify(options.body) : undefined,
  });
  if (options.raw) return reply;
  const text = await reply.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = { error: text }; }
  if (!reply.ok) {
    const message = (body && (body.error?.message || body.error || body.detail)) || reply.statusText;
    throw new ApiError(reply.status, `${reply.status}: ${typeof message === "string" ? message : JSON.stringify(message)}`);
  }
  return body;
}

function showError(err) {
  const box = document.getElementById("error");
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  box.hidden = false;
  box.textContent = err.message || String(err);
  if (err.status === 401 && state.who) signOut(err.message);
}

// ---- sign in and pages ---------------------------------------------------------------------

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    state.who = await api("/v2/tenant");
  } catch (err) {
    sessionStorage.removeItem(KEY);
    state.who = null;
    showError(err);
    return;
  }
  showError(null);
  document.getElementById("who").textContent =
    `tenant ${state.who.tenant} · key ${state.who.key.prefix}…`;
  document.getElementById("signin").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("signout").hidden = false;
  await show("catalog");
}

function signOut(reason) {
  sessionStorage.removeItem(KEY);
  state.who = null;
  for (const id of ["catalog", "playground", "usage", "keys"]) document.getElementById(id).hidden = true;
  document.getElementById("signin").hidden = false;
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = reason ? "signed out" : "";
}

async function show(page) {
  state.page = page;
  for (const button of document.querySelectorAll("#nav button")) {
    if (button.dataset.page === page) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  for (const id of ["catalog", "playground", "usage", "keys"]) document.getElementById(id).hidden = id !== page;
  showError(null);
  try {
    await { catalog: drawCatalog, playground: drawPlayground, usage: drawUsage, keys: drawKeys }[page]();
  } catch (err) { showError(err); }
}

// ---- status strip ------------------------------------------------------------------------

async function drawStatus() {
  const strip = document.getElementById("status");
  strip.replaceChildren();
  let links = {};
  try { links = await (await fetch("/console-links")).json(); } catch (e) { /* shown below */ }
  try {
    const reply = await fetch("/v2/health/ready");
    const health = await reply.json();
    strip.append(el("span", { class: health.ready ? "ok" : "bad", text: health.ready ? "● ready" : "● not ready" }));
    for (const [model, status] of Object.entries(health.models || {})) {
      strip.append(el("span", { "data-model": model, "data-state": status.toLowerCase(), text: `${model}: ${status.toLowerCase()}` }));
    }
  } catch (err) { strip.append(el("span", { class: "bad", text: "● unreachable" })); }
  if (links.version) strip.append(el("span", { text: `maas ${links.version}` }));
  strip.append(el("a", { href: links.docs || "/docs", text: "API docs" }));
  if (links.dashboard) strip.append(el("a", { href: links.dashboard, text: "Ray dashboard" }));
  if (links.mlflow) strip.append(el("a", { href: links.mlflow, text: "MLflow" }));
  else if (links.mlflow_command) strip.append(el("span", { title: links.mlflow_command, text: "MLflow: run " }, el("code", { text: "mlflow ui" })));
}

// ---- catalog -------------------------------------------------------------------------------

function termsList(agreement) {
  const list = el("dl", { class: "terms" });
  const add = (name, value) => { if (value != null && value !== "" && !(Array.isArray(value) && !value.length)) list.append(el("dt", { text: name }), el("dd", { text: Array.isArray(value) ? value.join(", ") : String(value) })); };
  add("license", agreement.license);
  add("allowed uses", agreement.allowed_uses);
  add("prohibited uses", agreement.prohibited_uses);
  const data = agreement.data_usage || {};
  add("payloads", data.log_payloads ? `logged, kept ${data.retention_days ?? "?"} days` : "not logged");
  if (agreement.training_data) add("training data", JSON.stringify(agreement.training_data));
  return list;
}

function priceText(price) {
  if (!price) return "free";
  const parts = [];
  if (price.per_1k_rows != null) parts.push(`${price.per_1k_rows} ${price.currency} / 1k rows`);
  if (price.per_1k_input_tokens != null || price.per_1k_output_tokens != null)
    parts.push(`${price.per_1k_input_tokens ?? 0} / ${price.per_1k_output_tokens ?? 0} ${price.currency} per 1k input / output tokens`);
  return parts.join("; ") || "free";
}

async function drawCatalog() {
  [state.cards, state.accepted] = await Promise.all([api("/v2/catalog"), api("/v2/tenant/agreements")]);
  for (const card of state.cards) {  // the strip names the version each model serves
    const span = document.querySelector(`#status span[data-model="${CSS.escape(card.name)}"]`);
    if (span && card.production_version != null) span.textContent = `${card.name} v${card.production_version}: ${span.dataset.state}`;
  }
  const box = document.getElementById("cards");
  box.replaceChildren();
  for (const card of state.cards) {
    const accepted = card.agreement && state.accepted.some(a => a.model === card.name && a.version === card.agreement.version);
    const metrics = Object.entries(card.metrics || {}).slice(0, 6).map(([k, v]) => `${k} ${Number(v).toPrecision(4)}`).join(" · ");
    const io = (card.inputs || []).map(t => `${t.name} ${t.datatype} [${t.shape.join(", ")}]`).join(", ");
    const node = el("article", { class: "card", "data-model": card.name, "aria-label": `model ${card.name}` },
      el("h3", { text: card.name }),
      el("p", { text: card.description || "" }),
      el("p", { class: "tags", text: (card.tags || []).map(t => `#${t}`).join(" ") }),
      el("p", { text: `kind ${card.kind || "-"} · production v${card.production_version ?? "-"}${card.variant ? ` (${card.variant})` : ""} · versions ${card.versions.join(", ")}` }),
      Object.keys(card.aliases || {}).length ? el("p", { class: "aliases", text: `aliases ${Object.entries(card.aliases).map(([a, v]) => `${a} → v${v}`).join(", ")}` }) : null,
      io ? el("p", { text: `input ${io}` }) : null,
      card.context_length ? el("p", { text: `context ${card.context_length} tokens` }) : null,
      metrics ? el("p", { class: "metrics", text: metrics }) : null,
      el("p", { class: "price", text: `price: ${priceText(card.price)}` }));
    if (card.agreement) {
      node.append(el("h4", { text: `Agreement v${card.agreement.version}` }), termsList(card.agreement));
      if (accepted) node.append(el("p", { class: "accepted", text: "✓ accepted by your tenant" }));
      else node.append(el("button", { type: "button", class: "accept", text: `Accept agreement v${card.agreement.version}`, on: { click: () => acceptTerms(card) } }));
    }
    box.append(node);
  }
  if (!state.cards.length) box.append(el("p", { text: "This key may use no model." }));
}

async function acceptTerms(card) {
  try {
    await api(`/v2/tenant/agreements/${encodeURIComponent(card.name)}/${card.agreement.version}`, { method: "POST" });
    await drawCatalog();
  } catch (err) { showError(err); }
}

// ---- playground ----------------------------------------------------------------------------

async function drawPlayground() {
  if (!state.cards.length) state.cards = await api("/v2/catalog");
  const select = document.getElementById("pg-model");
  const names = state.cards.map(c => c.name).join("\n");
  if (select.dataset.names === names && document.getElementById("pg-panel").children.length) return;
  const current = select.value;  // the models changed, or nothing is drawn yet: draw afresh
  select.replaceChildren(...state.cards.map(c => el("option", { value: c.name, text: c.name })));
  select.dataset.names = names;
  if (current && state.cards.some(c => c.name === current)) select.value = current;
  drawPanel();
}

function drawPanel() {
  const card = state.cards.find(c => c.name === document.getElementById("pg-model").value);
  const panel = document.getElementById("pg-panel");
  panel.replaceChildren();
  if (!card) return;
  if (card.chat_url) window.maasPlay.chat(panel, card);
  else if (card.embeddings_url) window.maasPlay.embeddings(panel, card);
  else window.maasPlay.tensor(panel, card);
}

// ---- usage ---------------------------------------------------------------------------------

async function drawUsage() {
  const [hours, bucket] = document.getElementById("usage-range").value.split("/");
  const data = await api(`/v2/tenant/usage?hours=${hours}&bucket=${bucket}`);
  window.maasUsage.draw(data, document.getElementById("usage-charts"), document.getElementById("usage-table"));
}

// ---- keys ----------------------------------------------------------------------------------

async function drawKeys() {
  const keys = await api("/v2/tenant/keys");
  const table = document.getElementById("keys-table");
  table.querySelectorAll("tr").forEach(r => r.remove());
  table.append(el("tr", {}, ...["prefix", "models", "limits", "created", "revoked", ""].map(h => el("th", { scope: "col", text: h }))));
  for (const key of keys) {
    const limits = [key.rate_per_s != null ? `${key.rate_per_s}/s` : null, key.quota, key.tokens_per_minute != null ? `${key.tokens_per_minute} tokens/min` : null, key.token_quota].filter(Boolean).join(", ") || "none";
    const mine = key.key_id === state.who.key.key_id;
    const action = key.revoked_at ? el("span", { text: "revoked" }) :
      el("button", { type: "button", class: "revoke", "data-key": key.key_id, text: mine ? "Revoke (this key)" : "Revoke", on: { click: () => revokeKey(key, mine) } });
    table.append(el("tr", { "data-key": key.key_id }, el("td", {}, el("code", { text: key.prefix })), el("td", { text: key.models.join(", ") }),
      el("td", { text: limits }), el("td", { text: key.created_at || "" }), el("td", { text: key.revoked_at || "" }), el("td", {}, action)));
  }
}

async function revokeKey(key, mine) {
  try {
    await api(`/v2/tenant/keys/${encodeURIComponent(key.key_id)}/revoke`, { method: "POST" });
    if (mine) { signOut("revoked"); return; }
    await drawKeys();
  } catch (err) { showError(err); }
}

// ---- start ---------------------------------------------------------------------------------

window.maasConsole = { api, el, showError, state };
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("signin-form").addEventListener("submit", event => {
    event.preventDefault();
    const input = document.getElementById("key");
    const key = input.value.trim();
    input.value = "";
    signIn(key);
  });
  document.getElementById("signout").addEventListener("click", () => signOut());
  for (const button of document.querySelectorAll("#nav button")) button.addEventListener("click", () => show(button.dataset.page));
  document.getElementById("pg-model").addEventListener("change", drawPanel);
  document.getElementById("usage-range").addEventListener("change", () => show("usage"));
  document.getElementById("usage-refresh").addEventListener("click", () => show("usage"));
  drawStatus();
  const saved = sessionStorage.getItem(KEY);
  if (saved) signIn(saved);
});
