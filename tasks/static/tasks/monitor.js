// Follows /tasks/live/: the server sends the whole overview every few seconds,
// and the tables are rebuilt from it. Text only (textContent): nothing is parsed as HTML.
// Every <time datetime> is shown in the viewer's own time zone.
(function () {
  "use strict";
  const status = document.getElementById("tasks-live");
  const format = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });

  function localize(element) {
    const when = new Date(element.getAttribute("datetime"));
    if (!Number.isNaN(when.getTime())) element.textContent = format.format(when);
  }

  // A <time> for an ISO timestamp ("" for none), already in the viewer's zone.
  function timeCell(iso) {
    if (!iso) return "";
    const element = document.createElement("time");
    element.setAttribute("datetime", iso);
    element.textContent = iso;
    localize(element);
    return element;
  }

  document.querySelectorAll("time[datetime]").forEach(localize);
  const columns = {
    "tasks-queues": [
      (q) => q.queue, (q) => q.ready, (q) => q.deferred, (q) => q.running, (q) => (q.paused ? "paused" : "serving"),
      pauseButton,
    ],
    "tasks-running": [
      (r) => r.task, (r) => r.queue, (r) => timeCell(r.started_at), (r) => (r.age === null ? "" : r.age + "s"),
      (r) => r.worker,
      (r) => (r.heartbeat_age === null ? "" : r.heartbeat_age + "s ago"), (r) => r.attempts,
      (r) => (r.done === null ? "" : r.done + "/" + (r.total === null ? "?" : r.total) + " " + r.note),
    ],
    "tasks-workers": [
      (w) => w.worker, (w) => w.in_use, (w) => (w.slots === null ? "?" : w.slots), (w) => w.by_queue,
    ],
    "tasks-failures": [
      (f) => f.task, (f) => f.queue, (f) => timeCell(f.finished_at), (f) => f.attempts, (f) => f.error, rerunButton,
    ],
    "tasks-schedules": [
      (s) => s.name, (s) => s.when, (s) => s.state, (s) => timeCell(s.next_tick), (s) => timeCell(s.last_tick),
      (s) => s.last_outcome || "",
    ],
  };
  const empty = {
    "tasks-running": "Nothing running.", "tasks-workers": "No worker is running.", "tasks-failures": "No failures.",
    "tasks-schedules": "No schedules.",
  };

  // A one-button form: a plain POST with the page's CSRF token.
  function postButton(action, label) {
    const form = document.createElement("form");
    form.method = "post";
    form.action = action;
    const token = form.appendChild(document.createElement("input"));
    token.type = "hidden";
    token.name = "csrfmiddlewaretoken";
    token.value = document.getElementById("tasks-csrf").value;
    const button = form.appendChild(document.createElement("button"));
    button.type = "submit";
    button.textContent = label;
    return form;
  }

  function pauseButton(q) {
    const action = "/tasks/queues/" + encodeURIComponent(q.queue) + (q.paused ? "/resume/" : "/pause/");
    return postButton(action, q.paused ? "Resume" : "Pause");
  }

  function rerunButton(f) {
    return postButton("/tasks/failures/" + encodeURIComponent(f.id) + "/rerun/", "Re-run");
  }

  function fill(id, rows) {
    const body = document.getElementById(id);
    const cells = columns[id];
    body.replaceChildren();
    if (rows.length === 0 && empty[id]) {
      const td = document.createElement("td");
      td.colSpan = cells.length;
      td.textContent = empty[id];
      body.appendChild(document.createElement("tr")).appendChild(td);
      return;
    }
    for (const row of rows) {
      const tr = body.appendChild(document.createElement("tr"));
      if (row.id) tr.title = row.id;
      for (const cell of cells) {
        const value = cell(row);
        const td = tr.appendChild(document.createElement("td"));
        if (value instanceof Node) td.appendChild(value);
        else td.textContent = String(value);
      }
    }
  }

  let delay = 1000;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + "/tasks/live/");
    socket.onopen = () => { delay = 1000; status.textContent = "live"; };
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type !== "overview") return;
      const at = document.getElementById("tasks-at");
      at.setAttribute("datetime", frame.overview.at);
      localize(at);
      fill("tasks-queues", frame.overview.queues);
      fill("tasks-running", frame.overview.running);
      fill("tasks-workers", frame.overview.workers);
      fill("tasks-failures", frame.overview.failures);
      fill("tasks-schedules", frame.overview.schedules);
    };
    socket.onclose = (event) => {
      // Refused, or access ended (README.md, Close codes): retrying cannot help.
      if (event.code === 4401) { location.assign("/login/?next=" + encodeURIComponent(location.pathname)); return; }
      if (event.code === 4403) { status.textContent = "not allowed: staff only"; return; }
      status.textContent = "reconnecting…";
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }
  connect();
})();
