// The page: tabs, the API key field, the server's status, and the list of loaded models every
// panel picks from (refreshed after a load or unload, and when the key changes).

import { apiKey, setApiKey, get, loadedModels } from "./api.js";
import { fillModels } from "./ui.js";
import * as similarity from "./similarity.js";
import * as search from "./search.js";
import * as hybrid from "./hybrid.js";
import * as models from "./models.js";
import * as jobs from "./jobs.js";
import * as live from "./live.js";

const PANELS = { similarity, search, hybrid, models, jobs, live };

const state = { models: [], default: null, error: null, listeners: [] };

// Every panel that shows model choices hears about a new list of models.
async function refreshModels() {
  try {
    const found = await loadedModels();
    state.models = found.models;
    state.default = found.default;
    state.error = null;
  } catch (err) { // shown by the Models panel: a 401 says a key is needed, in the API's words
    state.models = [];
    state.default = null;
    state.error = err;
  }
  for (const select of document.querySelectorAll("select[data-tasks]")) fillModels(select, state.models, state.default);
  for (const listener of state.listeners) listener(state);
  return state;
}

async function refreshStatus() {
  const line = document.getElementById("server-status");
  try {
    const health = await get("health");
    const count = health.models.length;
    line.textContent = `Server ${health.status} · embedserve ${health.version} · ${count} model${count === 1 ? "" : "s"} loaded`;
    line.dataset.status = health.status;
  } catch (err) {
    line.textContent = `Server: ${err}`;
    line.dataset.status = "error";
  }
}

function selectTab(tab, focus) {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const other of tabs) {
    const on = other === tab;
    other.setAttribute("aria-selected", String(on));
    other.tabIndex = on ? 0 : -1;
    document.getElementById(other.getAttribute("aria-controls")).hidden = !on;
  }
  if (focus) tab.focus();
  const name = tab.id.replace("tab-", "");
  for (const [panel, module] of Object.entries(PANELS)) {
    if (module.shown) module.shown(panel === name);
  }
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
}

function setUpTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab, false));
    tab.addEventListener("keydown", (event) => {
      const moves = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 };
      if (!(event.key in moves)) return;
      event.preventDefault();
      selectTab(tabs[(moves[event.key] + tabs.length) % tabs.length], true);
    });
  });
  const wanted = document.getElementById(`tab-${location.hash.slice(1)}`);
  selectTab(wanted || tabs[0], false);
  window.addEventListener("hashchange", () => {  // a link to #jobs, or a hash typed into the address bar
    const tab = document.getElementById(`tab-${location.hash.slice(1)}`);
    if (tab) selectTab(tab, false);
  });
}

function setUpKey() {
  const input = document.getElementById("api-key");
  const note = document.getElementById("key-state");
  const say = () => { note.textContent = apiKey() ? "a key is in use (this tab only)" : "no key"; };
  input.value = apiKey();
  say();
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    say();
    refreshStatus();
    refreshModels();
  });
  document.getElementById("forget-key").addEventListener("click", () => {
    setApiKey("");
    input.value = "";
    say();
    refreshModels();
  });
}

(async () => {
  setUpKey();
  for (const module of Object.values(PANELS)) module.init(state, refreshModels);
  setUpTabs();
  await Promise.all([refreshStatus(), refreshModels()]);
  document.body.dataset.ready = "true";
})();
