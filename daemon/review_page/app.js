// The review page: every name is shown with textContent, never as HTML.
"use strict";
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const input = document.getElementById("digits");
let queue = [];
let position = 0;

function text(id, value) { document.getElementById(id).textContent = value; }

async function call(method, url, body) {
  const options = { method, headers: { "X-CSRF-Token": csrf } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function show() {
  const item = queue[position];
  document.getElementById("current").hidden = !item;
  document.getElementById("empty").hidden = !!item;
  text("count", `(${queue.length - position} waiting)`);
  if (!item) return;
  const q = encodeURIComponent(item.name);
  text("name", item.name);
  const confidence = item.confidence == null ? "" : ` (${item.confidence.toFixed(3)})`;
  const second = item.runner_up
    ? `, runner-up ${item.runner_up} (${(item.runner_up_confidence || 0).toFixed(3)})` : "";
  const status = item.status ? `${item.status}: ` : "";
  text("reading", `${status}read ${item.digits || "nothing"}${confidence}${second}` +
    (item.note ? ` · ${item.note}` : ""));
  document.getElementById("scan").src = `/api/image?name=${q}`;
  document.getElementById("strip").src = `/api/strip?name=${q}`;
  input.value = item.digits || "";
  input.focus();
  input.select();
}

async function refresh() {
  const data = await call("GET", "/api/queue");
  queue = data.items;
  position = 0;
  show();
  const rows = await call("GET", "/api/history");
  const body = document.getElementById("history");
  body.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const value of [row.time.slice(11, 19), row.file, row.digits || "—", row.note, row.moved_to]) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

async function decide(digits) {
  const item = queue[position];
  if (!item) return;
  try {
    await call("POST", "/api/decide", { name: item.name, digits });
    text("message", "");
  } catch (error) {
    text("message", error.message);
  }
  await refresh();
}

document.addEventListener("keydown", async (event) => {
  if (event.key === "Enter" && input.value.trim()) {
    event.preventDefault();
    await decide(input.value.trim());
  } else if (event.key === "n") {
    event.preventDefault();
    await decide("none");
  } else if (event.key === "s") {
    event.preventDefault();
    position += 1;
    show();
  } else if (event.key === "u") {
    event.preventDefault();
    try {
      await call("POST", "/api/undo");
      text("message", "");
    } catch (error) {
      text("message", error.message);
    }
    await refresh();
  } else if (event.key.length === 1 && !/[0-9]/.test(event.key)) {
    event.preventDefault();
  }
});

refresh();
