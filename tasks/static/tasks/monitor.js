// Follows /tasks/live/: the server sends the whole overview every few seconds,
// and the tables are rebuilt from it. Text only (textContent): nothing is parsed as HTML.
(function () {
  "use strict";
  const status = document.getElementById("tasks-live");
  const columns = {
    "tasks-queues": [
      (q) => q.queue, (q) => q.ready, (q) => q.deferred, (q) => q.running, (q) => (q.paused ? "paused" : "serving"),
      pauseButton,
    ],
    "tasks-running": [
      (r) => r.task, (r) => r.queue, (r) => r.worker,
      (r) => (r.heartbeat_age === null ? "" : r.heartbeat_age + "s ago"), (r) => r.attempts,
      (r) => (r.done === null ? "" : r.done + "/" + (r.total === null ? "?" : r.total) + " " + r.note),
    ],
    "tasks-workers": [
      (w) => w.worker, (w) => w.in_use,
      (w) => Object.entries(w.queues).map(([queue, count]) => queue + "=" + count).join(", "),
    ],
    "tasks-failures": [(f) => f.task, (f) => f.queue, (f) => f.finished_at, (f) => f.attempts, (f) => f.error],
    "tasks-schedules": [
      (s) => s.name, (s) => s.when, (s) => s.state, (s) => s.next_tick || "", (s) => s.last_tick || "",
      (s) => s.last_outcome || "",
    ],
  };
  const empty = {
    "tasks-running": "Nothing running.", "tasks-workers": "No worker is running a task.", "tasks-failures": "No failures.",
    "tasks-schedules": "No schedules.",
  };

  // A Pause or Resume form for a queue's row: a plain POST with the page's CSRF token.
  function pauseButton(q) {
    const form = document.createElement("form");
    form.method = "post";
    form.action = "/tasks/queues/" + encodeURIComponent(q.queue) + (q.paused ? "/resume/" : "/pause/");
    const token = form.appendChild(document.createElement("input"));
    token.type = "hidden";
    token.name = "csrfmiddlewaretoken";
    token.value = document.getElementById("tasks-csrf").value;
    const button = form.appendChild(document.createElement("button"));
    button.type = "submit";
    button.textContent = q.paused ? "Resume" : "Pause";
    return form;
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
      document.getElementById("tasks-at").textContent = frame.overview.at;
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
