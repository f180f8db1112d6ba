// Parley reports: the job page follows its job over /reports/<id>/live/.
// A reload opens a new socket and gets the current state at once; a lost
// socket is reopened with backoff while the job is still going, but not once the
// server has said no (README.md, Close codes): 4401 goes to the login page,
// 4403 and 4404 say the job is not (or no longer) the user's to see.
"use strict";
(() => {
  const box = document.getElementById("job");
  if (!box) return;
  const P = window.ParleyProgress;
  const $ = (id) => document.getElementById(id);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  let retry = 500;
  let finished = !["queued", "running"].includes(box.dataset.status);

  function show(frame) {
    if (frame.type === "error") return;
    $("job-status").textContent = P.label(frame.status);
    $("job-bar").value = frame.percent;
    $("job-percent").textContent = `${frame.percent.toFixed(1)}%`;
    $("job-rows").textContent = P.rows(frame);
    $("job-rate").textContent = P.rate(frame);
    $("job-eta").textContent = P.eta(frame);
    $("job-note").textContent = frame.note || "";
    $("job-error").hidden = !frame.error;
    $("job-error").textContent = frame.error || "";
    const cancel = $("job-cancel");
    if (cancel) cancel.hidden = !["queued", "running"].includes(frame.status);
    if (frame.status === "done") {
      finished = true;
      // Insights: the page itself becomes the report.
      if (box.dataset.kind === "insights") { location.assign(frame.url); return; }
      $("job-done").hidden = false;
    } else if (!["queued", "running"].includes(frame.status)) {
      finished = true;
    }
  }

  function connect() {
    const socket = new WebSocket(`${scheme}//${location.host}${box.dataset.live}`);
    socket.onmessage = (event) => { retry = 500; show(JSON.parse(event.data)); };
    socket.onclose = (event) => {
      if (event.code === 4401) {
        location.assign(`/login/?next=${encodeURIComponent(location.pathname)}`);
        return;
      }
      if (event.code === 4403 || event.code === 4404) {
        $("job-error").hidden = false;
        $("job-error").textContent = "You can no longer see this job.";
        return;
      }
      if (finished) return;
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    };
    const cancel = $("job-cancel");
    if (cancel) {
      cancel.onsubmit = (event) => {
        if (socket.readyState !== WebSocket.OPEN) return; // the form posts instead
        event.preventDefault();
        socket.send(JSON.stringify({ action: "cancel" }));
      };
    }
  }
  connect();
})();
