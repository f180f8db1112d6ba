/*
 * The room page's sidebar (templates/chat/_sidebar.html): unread counts and mention badges kept live
 * from the frames of the user's notifications socket (bell.js: "parley:frame" events; chat/sidebar.py
 * sends them), the list re-read when the user's rooms change, and a drawer on a phone.
 */
(function () {
  "use strict";
  const nav = document.getElementById("sidebar");
  if (!nav) return;
  const lists = document.getElementById("sidebar-lists");
  const toggle = document.getElementById("sidebar-toggle");
  const active = nav.dataset.active;
  const cap = Number(nav.dataset.unreadCap);
  const me = window.ParleyChat ? window.ParleyChat.config.handle : null;

  function item(label) {
    return lists.querySelector(`li[data-room="${CSS.escape(label)}"]`);
  }

  function showUnread(li, count) {
    li.dataset.unread = String(count);
    const badge = li.querySelector("[data-room-unread]");
    badge.querySelector("[data-count]").textContent = count > cap ? `${cap}+` : String(count);
    badge.hidden = count === 0;
  }

  // The active room, on screen: its messages are being read (unread.js), so no badge to count up.
  function watching(label) {
    return label === active && document.visibilityState === "visible";
  }

  const handlers = {
    room_activity(frame) {
      const li = item(frame.room);
      if (!li) return;
      const lastRead = Number(li.dataset.lastRead);
      if (frame.handle === me) {
        li.dataset.lastRead = String(Math.max(lastRead, frame.id));
        showUnread(li, 0);
      } else if (frame.id > lastRead && !watching(frame.room)) {
        showUnread(li, Math.min(Number(li.dataset.unread) + 1, cap + 1));
      }
    },
    room_read(frame) {
      const li = item(frame.room);
      if (!li) return;
      li.dataset.lastRead = String(frame.last_read_id);
      showUnread(li, frame.unread);
    },
    room_mention(frame) {
      const li = item(frame.room);
      if (li) li.querySelector("[data-room-mentions]").hidden = frame.mentions === 0;
    },
    sidebar_changed: reload,
  };

  let reloading = null;
  async function reload() {
    if (reloading) return reloading;
    reloading = (async () => {
      try {
        const response = await fetch(lists.dataset.url, { credentials: "same-origin" });
        if (response.ok) lists.innerHTML = await response.text(); // rendered and escaped by Django
      } catch (e) {
        // offline: the next (re)connection reads it again
      } finally {
        reloading = null;
      }
    })();
    return reloading;
  }

  let connectedOnce = false;
  document.addEventListener("parley:live-open", () => {
    // Frames sent while the socket was down are lost: the counts are read again.
    if (connectedOnce) reload();
    connectedOnce = true;
  });
  document.addEventListener("parley:frame", (event) => {
    const handler = handlers[event.detail.type];
    if (handler) handler(event.detail);
  });

  // The phone's drawer.
  function setOpen(open) {
    document.body.classList.toggle("sidebar-open", open);
    toggle.setAttribute("aria-expanded", String(open));
  }
  if (toggle) toggle.addEventListener("click", () => setOpen(!document.body.classList.contains("sidebar-open")));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") setOpen(false);
  });
  nav.addEventListener("click", (event) => {
    if (event.target.closest("a")) setOpen(false);
  });
})();
