/*
 * Parley room client. No framework: one module, state in plain objects.
 *
 * Extending it (other Parley features do):
 *   ParleyChat.handlers[type] = (frame) => {...}   handle a new server frame type
 *   ParleyChat.messageHooks.push((element, frame) => {...})   decorate each rendered message
 *   ParleyChat.commands[name] = (args) => {...}   "/name args" typed in the composer
 *   ParleyChat.send(frame)   send a frame now (returns false while disconnected)
 *   ParleyChat.addMessage(frame) / messageElement(id)   show a stored message / its element
 *   ParleyChat.post(text, fields)   queue a message with extra fields (a thread reply's parent) in the outbox
 *   ParleyChat.build(frame) / ParleyChat.replaceMessage(frame)   render a stored message / re-render one shown
 *   ParleyChat.syncFields = () => ({...})   extra fields of every `sync` frame (changes_after)
 *
 * Protocol: README.md, "WebSocket protocol". Every message the server sends
 * has an id; we keep one element per id, in id order, whatever order (and
 * however often) frames arrive.
 */
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("chat-config").textContent);
  const el = {
    status: document.getElementById("status"),
    notice: document.getElementById("notice"),
    scroller: document.getElementById("messages"),
    list: document.getElementById("message-list"),
    older: document.getElementById("older"),
    presence: document.getElementById("presence"),
    typing: document.getElementById("typing"),
    form: document.getElementById("composer"),
    text: document.getElementById("text"),
  };

  // Close codes after which reconnecting cannot help (README.md, Close codes).
  // 4401: the session ended (logged out, password changed, deactivated): the
  // login page, which comes back here. 4403 after we were in the room: access
  // to it ended (removed, or the room made private).
  const REFUSALS = {
    4401: "You are logged out. Log in again to chat.",
    4403: "This room is private.",
    4404: "This room does not exist.",
    4409: "Parley is open in too many tabs. Close some, then reload this one.",
  };
  const REMOVED = "You were removed from this room.";
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_MAX_MS = 30000;
  const TYPING_SEND_MS = 2000;
  const TYPING_SHOW_MS = 3500;
  const RATE_LIMIT_RETRY_MS = 3000;
  const URL_RE = /\bhttps?:\/\/[^\s<>"']+/g;

  const state = {
    socket: null,
    attempt: 0,
    reconnectTimer: null,
    retryTimer: null,
    refused: false,
    joined: false, // a socket got into the room (a presence frame) since the page loaded
    byId: new Map(), // message id -> element
    lastId: 0, // highest id seen: `sync` asks for everything after it
    hasMore: config.has_more,
    loadingOlder: false,
    present: new Set(),
    names: new Map(), // handle -> display name, for those present who set one
    typing: new Map(), // handle -> timer
    avatars: new Map(), // handle -> {"256", "64", "32": url}, from `avatar` frames
    typingSentAt: 0,
  };

  // --- outbox: what was typed survives reloads and outages --------------------

  const outboxKey = `parley.outbox.${config.handle}.${config.label}`;
  const outbox = {
    load() {
      try {
        return JSON.parse(localStorage.getItem(outboxKey)) || [];
      } catch (e) {
        return [];
      }
    },
    save(items) {
      localStorage.setItem(outboxKey, JSON.stringify(items));
    },
    add(item) {
      const items = this.load();
      items.push(item);
      this.save(items);
    },
    remove(clientId) {
      this.save(this.load().filter((item) => item.client_id !== clientId));
    },
  };

  function newClientId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes); // unlike randomUUID, available on plain http too
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // --- rendering -------------------------------------------------------------

  /* Text goes in as text nodes only; URLs become links built element by element. */
  function renderText(container, text) {
    let last = 0;
    for (const match of text.matchAll(URL_RE)) {
      const url = match[0].replace(/[.,!?;:)\]]+$/, "");
      container.append(document.createTextNode(text.slice(last, match.index)));
      const a = document.createElement("a");
      a.href = url;
      a.textContent = url;
      a.rel = "noopener nofollow";
      a.target = "_blank";
      container.append(a);
      last = match.index + url.length;
    }
    container.append(document.createTextNode(text.slice(last)));
  }

  function buildMessage(frame, pending) {
    const article = document.createElement("article");
    article.className = "msg";
    article.dataset.clientId = frame.client_id;
    article.dataset.handle = frame.handle;
    const meta = document.createElement("div");
    meta.className = "meta";
    const who = document.createElement("span");
    who.className = "handle";
    who.textContent = frame.handle;
    const time = document.createElement("time");
    meta.append(avatarImage(frame.handle), who);
    if (frame.name) {
      const name = document.createElement("span");
      name.className = "display-name";
      name.textContent = frame.name;
      meta.append(name);
    }
    meta.append(time);
    const body = document.createElement("div");
    body.className = "text";
    renderText(body, frame.text);
    article.append(meta, body);
    if (pending) {
      article.classList.add("pending");
      time.textContent = "sending…";
    } else {
      article.dataset.id = String(frame.id);
      const date = new Date(frame.ts);
      time.dateTime = frame.ts;
      time.title = date.toLocaleString();
      time.textContent = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    }
    for (const hook of ParleyChat.messageHooks) hook(article, frame);
    return article;
  }

  function nearBottom() {
    const s = el.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  function scrollToBottom() {
    el.scroller.scrollTop = el.scroller.scrollHeight;
  }

  /* Insert a stored message once, in id order; replaces our pending copy. */
  function addMessage(frame) {
    if (state.byId.has(frame.id)) return;
    const stick = nearBottom();
    const article = buildMessage(frame, false);
    state.byId.set(frame.id, article);
    state.lastId = Math.max(state.lastId, frame.id);
    if (frame.handle === config.handle) {
      const pending = el.list.querySelector(`.msg.pending[data-client-id="${CSS.escape(frame.client_id)}"]`);
      if (pending) pending.remove();
      outbox.remove(frame.client_id);
      // The rate-limit notice is about the outbox: it goes once the outbox has emptied.
      if (el.notice.textContent === SLOW_DOWN && outbox.load().length === 0) notice("");
    }
    // Stored messages come first, in id order, then our pending ones. Scan from
    // the newest stored message: nearly every message belongs at the end.
    let before = el.list.querySelector(".msg:not([data-id])");
    let node = before ? before.previousElementSibling : el.list.lastElementChild;
    while (node && Number(node.dataset.id) > frame.id) {
      before = node;
      node = node.previousElementSibling;
    }
    el.list.insertBefore(article, before);
    clearTyping(frame.handle);
    if (stick || frame.handle === config.handle) scrollToBottom();
  }

  /* Re-render a message already shown (its new state, from a `change`); false if it is not shown. */
  function replaceMessage(frame) {
    const old = state.byId.get(frame.id);
    if (!old) return false;
    const article = buildMessage(frame, false);
    old.replaceWith(article);
    state.byId.set(frame.id, article);
    return true;
  }

  function addPending(item) {
    const frame = { ...item.fields, handle: config.handle, text: item.text, client_id: item.client_id };
    el.list.append(buildMessage(frame, true));
    scrollToBottom();
  }

  function markFailed(clientId, detail) {
    const pending = el.list.querySelector(`.msg.pending[data-client-id="${CSS.escape(clientId)}"]`);
    if (!pending) return;
    pending.classList.replace("pending", "failed");
    pending.querySelector("time").textContent = `not sent: ${detail}`;
  }

  function renderPresence() {
    // A private room's member list: only members present now are marked online.
    for (const member of document.querySelectorAll("#members [data-member]")) {
      const online = state.present.has(member.dataset.member);
      member.classList.toggle("online", online);
      member.title = online ? "online" : "not here";
    }
    el.presence.replaceChildren(
      ...[...state.present].sort().map((handle) => {
        const li = document.createElement("li");
        li.append(avatarImage(handle), handle);
        if (state.names.has(handle)) {
          const name = document.createElement("span");
          name.className = "display-name";
          name.textContent = ` ${state.names.get(handle)}`;
          li.append(name);
        }
        return li;
      })
    );
  }

  // /avatars/<handle>/32 redirects to the user's current thumbnail (or placeholder);
  // once an `avatar` frame has told us a newer one, we link that directly.
  function avatarImage(handle) {
    const img = document.createElement("img");
    img.className = "avatar";
    img.alt = "";
    img.width = img.height = 20;
    img.dataset.avatarUser = handle;
    img.dataset.avatarSize = "32";
    const known = state.avatars.get(handle);
    img.src = known ? known["32"] : `/avatars/${encodeURIComponent(handle)}/32`;
    return img;
  }

  function renderTyping() {
    const names = [...state.typing.keys()];
    el.typing.textContent =
      names.length === 0 ? "" : names.length === 1 ? `${names[0]} is typing…` : `${names.join(", ")} are typing…`;
  }

  function clearTyping(handle) {
    if (!state.typing.has(handle)) return;
    clearTimeout(state.typing.get(handle));
    state.typing.delete(handle);
    renderTyping();
  }

  function setStatus(name, label) {
    el.status.dataset.state = name;
    el.status.textContent = label || name;
  }

  function notice(text) {
    el.notice.textContent = text || "";
  }

  // --- server frames ---------------------------------------------------------

  const SLOW_DOWN = "Slow down a little; your message will be sent in a moment.";

  const handlers = {
    message: addMessage,
    synced(frame) {
      if (frame.more) send({ ...ParleyChat.syncFields(), type: "sync", after: frame.last_id });
    },
    presence(frame) {
      state.present = new Set(frame.handles);
      state.names = new Map(Object.entries(frame.names || {}));
      renderPresence();
    },
    join(frame) {
      state.present.add(frame.handle);
      if (frame.name) state.names.set(frame.handle, frame.name);
      renderPresence();
    },
    leave(frame) {
      state.present.delete(frame.handle);
      clearTyping(frame.handle);
      renderPresence();
    },
    avatar(frame) {
      // New thumbnails are ready: swap every image of this user on the page, no reload.
      state.avatars.set(frame.handle, frame.avatar);
      for (const img of document.querySelectorAll(`img[data-avatar-user="${CSS.escape(frame.handle)}"]`)) {
        img.src = frame.avatar[img.dataset.avatarSize] || frame.avatar["32"];
      }
    },
    typing(frame) {
      clearTimeout(state.typing.get(frame.handle));
      state.typing.set(frame.handle, setTimeout(() => clearTyping(frame.handle), TYPING_SHOW_MS));
      renderTyping();
    },
    error(frame) {
      if (frame.code === "rate_limited" && frame.client_id) {
        // Still in the outbox: try again shortly.
        notice(SLOW_DOWN);
        // One retry for the whole outbox, however many refusals arrive.
        if (!state.retryTimer) {
          state.retryTimer = setTimeout(() => {
            state.retryTimer = null;
            flushOutbox();
          }, RATE_LIMIT_RETRY_MS);
        }
        return;
      }
      if (frame.code === "rate_limited" && frame.after !== undefined) {
        // A sync refused (more than 10 in 5 s, a long catch-up): ask again shortly from what we have.
        setTimeout(() => send({ ...ParleyChat.syncFields(), type: "sync", after: state.lastId }), RATE_LIMIT_RETRY_MS);
        return;
      }
      if (frame.client_id) {
        outbox.remove(frame.client_id);
        markFailed(frame.client_id, frame.detail);
      }
      notice(frame.detail);
    },
  };

  // --- connection ------------------------------------------------------------

  function send(frame) {
    if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return false;
    state.socket.send(JSON.stringify(frame));
    return true;
  }

  function flushOutbox() {
    for (const item of outbox.load()) {
      if (!send({ ...item.fields, type: "message", text: item.text, client_id: item.client_id })) return;
    }
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    if (state.refused || (state.socket && state.socket.readyState <= WebSocket.OPEN)) return;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + config.socket_path);
    state.socket = socket;
    socket.addEventListener("open", () => {
      state.attempt = 0;
      setStatus("connected");
      notice("");
      send({ ...ParleyChat.syncFields(), type: "sync", after: state.lastId }); // whatever was said while we were away
      flushOutbox();
    });
    socket.addEventListener("message", (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      if (frame.type === "presence") state.joined = true;
      const handler = ParleyChat.handlers[frame.type];
      if (handler) handler(frame);
    });
    socket.addEventListener("close", (event) => {
      if (state.socket !== socket) return;
      state.socket = null;
      state.present.clear();
      renderPresence();
      if (REFUSALS[event.code]) {
        state.refused = true;
        setStatus("refused", "disconnected");
        notice(event.code === 4403 && state.joined ? REMOVED : REFUSALS[event.code]);
        if (event.code === 4401) location.assign("/login/?next=" + encodeURIComponent(location.pathname));
        return;
      }
      scheduleReconnect();
    });
  }

  /* Exponential backoff with jitter, so a restarted server is not hit by everyone at once. */
  function scheduleReconnect() {
    if (!navigator.onLine) {
      setStatus("offline");
      return; // the "online" event reconnects
    }
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    state.attempt += 1;
    setStatus("reconnecting");
    state.reconnectTimer = setTimeout(connect, delay);
  }

  window.addEventListener("online", () => {
    state.attempt = 0;
    connect();
  });
  window.addEventListener("offline", () => {
    // The socket may linger half-open for a long time; drop it and wait for "online".
    setStatus("offline");
    if (state.socket) state.socket.close();
  });

  // --- composer -----------------------------------------------------------------

  function submit() {
    const text = el.text.value;
    if (!text.trim()) return;
    const command = text.match(/^\/(\w+)(?:\s+([\s\S]*))?$/);
    if (command && ParleyChat.commands[command[1]]) {
      ParleyChat.commands[command[1]](command[2] || "");
      el.text.value = "";
      return;
    }
    post(text);
    el.text.value = "";
  }

  /* Queue a message (with `fields`, e.g. a thread reply's parent) in the outbox, show it pending, send it; its client_id. */
  function post(text, fields) {
    const item = { client_id: newClientId(), text: text, fields: fields || {} };
    outbox.add(item); // stored before sending: a drop right now loses nothing
    addPending(item);
    send({ ...item.fields, type: "message", text: item.text, client_id: item.client_id });
    return item.client_id;
  }

  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  el.text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  el.text.addEventListener("input", () => {
    const now = Date.now();
    if (el.text.value && now - state.typingSentAt > TYPING_SEND_MS && send({ type: "typing" })) {
      state.typingSentAt = now;
    }
  });

  // --- older messages ---------------------------------------------------------------

  async function loadOlder() {
    if (state.loadingOlder || !state.hasMore) return;
    const first = el.list.querySelector(".msg[data-id]");
    if (!first) return;
    state.loadingOlder = true;
    el.older.hidden = false;
    try {
      const response = await fetch(`${config.history_url}?before=${first.dataset.id}&limit=50`, {
        headers: { Accept: "application/json" },
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      const height = el.scroller.scrollHeight;
      const top = el.scroller.scrollTop;
      for (const frame of data.messages) addMessage(frame);
      // Keep what the reader was looking at in place.
      el.scroller.scrollTop = top + (el.scroller.scrollHeight - height);
      state.hasMore = data.has_older;
    } catch (e) {
      notice("Could not load older messages.");
    } finally {
      state.loadingOlder = false;
      el.older.hidden = true;
    }
  }

  el.scroller.addEventListener("scroll", () => {
    if (el.scroller.scrollTop < 60) loadOlder();
  });

  // --- start ------------------------------------------------------------------------

  const ParleyChat = (window.ParleyChat = {
    config: config,
    handlers: handlers,
    messageHooks: [],
    commands: {},
    send: send,
    // For permalinks (search.js): put a stored message in its place, find one by id, tell the reader.
    addMessage: addMessage,
    messageElement: (id) => state.byId.get(id),
    notice: notice,
    post: post,
    build: (frame) => buildMessage(frame, false),
    replaceMessage: replaceMessage,
    syncFields: () => ({}),
  });

  // Hooks registered by scripts loaded after this one still see the first render.
  document.addEventListener("DOMContentLoaded", () => {
    for (const frame of config.messages) addMessage(frame);
    for (const item of outbox.load()) addPending(item);
    scrollToBottom();
    connect();
  });
})();
