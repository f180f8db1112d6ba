/*
 * The read position on the room page (chat/sidebar.py): the page opens at the first unread message
 * under a "New messages" divider, with "Jump to first unread" and "Mark as read"; as messages come
 * into view the newest one seen is sent as the read position over the notifications socket
 * ({"type": "read", "room", "id"}), which every other tab and device of the user hears (room_read).
 * Nothing is tracked in a room the user has not joined (config.last_read_id is null).
 */
(function () {
  "use strict";
  const chat = window.ParleyChat;
  if (!chat) return;
  const config = chat.config;
  const scroller = document.getElementById("messages");
  const list = document.getElementById("message-list");
  const bar = document.getElementById("unread-bar");
  const barText = document.getElementById("unread-text");
  const SEND_AFTER_MS = 400;
  let sent = config.last_read_id || 0; // the newest id we told the server (or it told us)
  let timer = null;

  function firstUnread() {
    return config.first_unread_id ? list.querySelector(`.msg[data-id="${config.first_unread_id}"]`) : null;
  }

  // The newest stored message whose box shows inside the scroller.
  function newestVisibleId() {
    const view = scroller.getBoundingClientRect();
    const stored = list.querySelectorAll(".msg[data-id]");
    for (let i = stored.length - 1; i >= 0; i--) {
      const box = stored[i].getBoundingClientRect();
      if (box.top < view.bottom && box.bottom > view.top) return Number(stored[i].dataset.id);
      if (box.bottom <= view.top) break;
    }
    return 0;
  }

  function send(frame) {
    if (window.parleyNotifications) window.parleyNotifications.send(frame);
  }

  function check() {
    timer = null;
    if (config.last_read_id === null || document.visibilityState !== "visible") return;
    const id = newestVisibleId();
    if (id > sent) {
      sent = id;
      send({ type: "read", room: config.label, id: id });
    }
    updateBar();
  }

  function soon() {
    if (!timer) timer = setTimeout(check, SEND_AFTER_MS);
  }

  // The bar shows while the first unread is above the screen.
  function updateBar() {
    const first = firstUnread();
    if (!first) {
      bar.hidden = true;
      return;
    }
    const above = first.getBoundingClientRect().bottom < scroller.getBoundingClientRect().top;
    bar.hidden = !above;
  }

  function markAll() {
    send({ type: "read", room: config.label });
    const stored = list.querySelectorAll(".msg[data-id]");
    if (stored.length) sent = Math.max(sent, Number(stored[stored.length - 1].dataset.id));
    bar.hidden = true;
    config.first_unread_id = null;
  }

  document.getElementById("jump-unread").addEventListener("click", () => {
    const first = firstUnread();
    if (first) first.scrollIntoView({ block: "start" });
  });
  document.getElementById("mark-read").addEventListener("click", (event) => {
    event.preventDefault(); // the form is for pages without script
    markAll();
  });

  scroller.addEventListener("scroll", soon, { passive: true });
  document.addEventListener("visibilitychange", soon);
  window.addEventListener("focus", soon);
  new MutationObserver(soon).observe(list, { childList: true });

  // Another tab or device read further: nothing before that is news here. The user's rooms
  // changed: they may have joined this one (by posting in it), so reading is tracked from now on
  // (the server ignores reads of a room not joined).
  document.addEventListener("parley:frame", (event) => {
    const frame = event.detail;
    if (frame.type === "room_read" && frame.room === config.label) sent = Math.max(sent, frame.last_read_id);
    if (frame.type === "sidebar_changed" && config.last_read_id === null) {
      config.last_read_id = 0;
      soon();
    }
  });

  // After room.js's first render (its DOMContentLoaded listener was added first).
  document.addEventListener("DOMContentLoaded", () => {
    const first = firstUnread();
    if (first) {
      first.classList.add("first-unread");
      const divider = document.createElement("div");
      divider.className = "unread-divider";
      divider.setAttribute("role", "separator");
      divider.textContent = "New messages";
      first.prepend(divider);
      if (window.ParleyDates) window.ParleyDates.decorate(first);
      // Open at it, unless everything fits below it anyway.
      scroller.scrollTop += first.getBoundingClientRect().top - scroller.getBoundingClientRect().top - 40;
    }
    soon();
  });
})();
