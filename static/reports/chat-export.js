// Parley reports in the chat box: `/export [json|csv|html] [from] [to]`, the Export
// button, and a line of progress per export, kept current over the room's socket.
// Loaded after chat/room.js and reports/progress.js.
"use strict";
(() => {
  const chat = window.ParleyChat;
  const box = document.getElementById("export-progress");
  const form = document.getElementById("export-form");
  if (!chat || !box) return;
  const P = window.ParleyProgress;
  const lines = new Map(); // job id -> its line in the box

  function line(key) {
    let el = lines.get(key);
    if (!el) {
      el = document.createElement("div");
      el.className = "export-line";
      box.append(el);
      lines.set(key, el);
    }
    el.replaceChildren();
    return el;
  }

  function link(href, text) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  }

  // The server answers with export.progress or export.error frames; nothing is posted.
  function send(args) {
    const id = `export-${Date.now()}-${Math.random().toString(36).slice(2, 10)}`;
    return chat.send({ type: "message", text: `/export ${args}`.trim(), client_id: id });
  }

  chat.commands.export = (args) => {
    if (!send(args)) line("offline").textContent = "Not connected: try the export again in a moment.";
  };

  chat.handlers["export.progress"] = (frame) => {
    const el = line(frame.job);
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = frame.percent;
    const words = [`${frame.format.toUpperCase()} export: ${P.label(frame.status)}`, `${frame.percent.toFixed(1)}%`,
                   P.rows(frame), P.rate(frame), P.eta(frame), frame.error || ""].filter(Boolean);
    el.append(bar, ` ${words.join(" · ")} `);
    if (frame.status === "done" && frame.url) el.append(link(frame.url, "Download"));
    else if (frame.status === "queued" || frame.status === "running") el.append(link(`/reports/${frame.job}/`, "Details / cancel"));
  };

  chat.handlers["export.error"] = (frame) => {
    line("error").textContent = frame.error;
  };

  // The button goes over the socket when it is open; otherwise the form posts.
  if (form) {
    form.addEventListener("submit", (event) => {
      if (send(form.elements.format.value)) event.preventDefault();
    });
  }
})();
