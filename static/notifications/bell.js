// Keeps the bell's unread count live over /notifications/live/, reconnecting with backoff.
// Other scripts may send frames through window.parleyNotifications.send({...}), and hear every frame
// as a "parley:frame" event on document (the sidebar's room_activity, room_read...), and each
// (re)connection as "parley:live-open" (what was missed meanwhile is theirs to re-read).
(function () {
  "use strict";
  const bell = document.querySelector("[data-notifications-live]");
  if (!bell) return;
  const counter = bell.querySelector("[data-unread-count]");
  let socket = null;
  let delay = 1000;
  const pending = [];

  function show(count) {
    counter.textContent = String(count);
    counter.hidden = count === 0;
    document.dispatchEvent(new CustomEvent("parley:unread", { detail: { count: count } }));
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + bell.dataset.notificationsLive);
    socket.addEventListener("open", function () {
      delay = 1000;
      document.dispatchEvent(new CustomEvent("parley:live-open"));
      while (pending.length) socket.send(JSON.stringify(pending.shift()));
    });
    socket.addEventListener("message", function (event) {
      let frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame.type === "unread" && Number.isInteger(frame.count)) show(frame.count);
      document.dispatchEvent(new CustomEvent("parley:frame", { detail: frame }));
    });
    socket.addEventListener("close", function (event) {
      // Signed out (4401), or no access (4403): retrying cannot help, and the page itself says why.
      if (event.code === 4401 || event.code === 4403) return;
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    });
  }

  window.parleyNotifications = {
    send: function (frame) {
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
      else if (pending.length < 10) pending.push(frame);
    },
  };
  connect();
})();
