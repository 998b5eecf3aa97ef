// The page's entry point: login (the key from `?token=` or pasted), the hash router between the
// views (#/searches, #/new, #/search/ID, #/trainings, #/training/ID, #/studies, #/study/ID), and the
// header.
import { api, auth, setOnUnauthorized } from "./api.js";
import { showList, leaveList } from "./list.js";
import { showForm, leaveForm } from "./form.js";
import { showSearch, leaveSearch } from "./search.js";
import { showStudies, showStudy, leaveStudies } from "./study.js";
import { showTraining, showTrainings, leaveTrainings } from "./training.js";

const $ = (id) => document.getElementById(id);
const views = ["login", "list", "new", "search", "trainings", "training", "studies", "study"];

function activate(name) {
  for (const view of views) $(`view-${view}`).hidden = view !== name;
  $("nav").hidden = name === "login";
  $("logout").hidden = name === "login";
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.view === name);
  }
}

function leaveAll() {
  leaveList();
  leaveForm();
  leaveSearch();
  leaveStudies();
  leaveTrainings();
}

export function route() {
  leaveAll();
  if (!auth.key) {
    activate("login");
    $("login-key").focus();
    return;
  }
  const hash = location.hash || "#/searches";
  const match = hash.match(/^#\/search\/([^/]+)$/);
  const study = hash.match(/^#\/study\/([^/]+)$/);
  const training = hash.match(/^#\/training\/([^/]+)$/);
  if (study) {
    activate("study");
    showStudy(decodeURIComponent(study[1]));
  } else if (hash === "#/studies") {
    activate("studies");
    showStudies();
  } else if (match) {
    activate("search");
    showSearch(decodeURIComponent(match[1]));
  } else if (training) {
    activate("training");
    showTraining(decodeURIComponent(training[1]));
  } else if (hash === "#/trainings") {
    activate("trainings");
    showTrainings();
  } else if (hash === "#/new") {
    activate("new");
    showForm();
  } else {
    activate("list");
    showList();
  }
}

function showLogin(message) {
  auth.key = null;
  $("login-error").textContent = message || "";
  route();
}

async function logIn(event) {
  event.preventDefault();
  const key = $("login-key").value.trim();
  if (!key) {
    $("login-error").textContent = "Enter the API key.";
    return;
  }
  auth.key = key;
  try {
    await api("/searches?limit=1");
  } catch (error) {
    auth.key = null;
    $("login-error").textContent = error.status === 401 ? "This key was refused." : error.message;
    return;
  }
  $("login-key").value = "";
  $("login-error").textContent = "";
  if (!location.hash || location.hash === "#/login") location.hash = "#/searches";
  route();
}

setOnUnauthorized(() => showLogin("The server refused the key: log in again."));
$("login-form").addEventListener("submit", logIn);
$("logout").addEventListener("click", () => showLogin("Logged out."));
window.addEventListener("hashchange", route);
// Unhandled rejections (e.g. a request cut by navigation) go to the status line, not the console.
window.addEventListener("unhandledrejection", (event) => {
  event.preventDefault();
  if (event.reason && event.reason.name === "AbortError") return;
  $("connection").textContent = `error: ${event.reason && event.reason.message}`;
  $("connection").className = "error";
});
auth.takeTokenFromUrl();
route();
