// Parley reports in the chat box: `/export [json|csv|html] [from] [to]` (sugar for an
// export frame), the Export button, and a line of progress per export, kept current
// over the room's socket. Loaded after chat/room.js and reports/progress.js.
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

  const USAGE = "Usage: /export [json|csv|html] [from YYYY-MM-DD] [to YYYY-MM-DD], e.g. /export csv 2026-01-01 2026-01-31";

  // The server answers with export.progress or export.error frames (the server checks
  // the format and the days, as the export form does).
  function send(options) {
    return chat.send({ type: "export", ...options });
  }

  // "/export csv 2026-01-01 2026-01-31" is an export frame with these fields.
  chat.commands.export = (args) => {
    const [format, since, until, ...rest] = args.split(/\s+/).filter(Boolean);
    if (rest.length) {
      line("error").textContent = USAGE;
      return;
    }
    const options = {};
    if (format) options.format = format.toLowerCase();
    if (since) options.since = since;
    if (until) options.until = until;
    if (!send(options)) line("offline").textContent = "Not connected: try the export again in a moment.";
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
      if (!send({ format: form.elements.format.value })) return;
      event.preventDefault();
      form.closest("details")?.removeAttribute("open"); // the room menu: its progress shows by the composer
    });
  }
})();
