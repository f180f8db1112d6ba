// @mentions on the room page, through room.js's extension points (window.ParleyChat):
// highlights every @handle that names a user, makes a message that mentions the reader stand out,
// gives each message the id notification links point at (#message-<id>), and
// tells the bell socket that this room's mentions are read while it is on screen.
// The rules match notifications/mentions.py.
(function () {
  "use strict";
  const chat = window.ParleyChat;
  if (!chat) return;
  const me = chat.config.handle.toLowerCase();
  const MENTION = /(?<![\p{L}\p{N}_.+\/=@-])@([A-Za-z0-9_-]{1,30})(?![A-Za-z0-9_@-])/gu;
  const URL = /(?:[a-z][a-z0-9+.-]*:\/\/|www\.)\S+/gi;
  const MAX_ASKED = 50; // handles per question: notifications/mentions.py MAX_MENTIONS

  // Which handles are users is the server's to say (GET /notifications/handles/?h=...): asked
  // in one batch for all the messages rendered together, remembered when yes, asked again
  // when no (whoever signs up later is highlighted in the next message naming them). A span
  // stays plain until its answer, and on no.
  const users = new Set([me, "here"]);
  const waiting = new Map(); // lowercased handle -> its spans waiting for the answer
  let asking = null;

  function highlightIfUser(span, handle) {
    if (users.has(handle)) {
      span.classList.add("mention");
      return;
    }
    if (!waiting.has(handle)) waiting.set(handle, []);
    waiting.get(handle).push(span);
    if (!asking) asking = setTimeout(ask, 0);
  }

  async function ask() {
    const batch = [...waiting.keys()].slice(0, MAX_ASKED).map((handle) => [handle, waiting.get(handle)]);
    for (const [handle] of batch) waiting.delete(handle);
    asking = waiting.size ? setTimeout(ask, 0) : null;
    const query = new URLSearchParams(batch.map(([handle]) => ["h", handle]));
    let found;
    try {
      const response = await fetch(`/notifications/handles/?${query}`, { credentials: "same-origin" });
      if (!response.ok) return;
      found = new Set((await response.json()).handles);
    } catch (e) {
      return; // offline: these stay plain
    }
    for (const [handle, spans] of batch) {
      if (!found.has(handle)) continue;
      users.add(handle);
      for (const span of spans) span.classList.add("mention");
    }
  }

  // Wrap the mentions of one text node in spans (class "mention" once known to be users); true if one is the reader.
  function decorate(node) {
    const text = node.data;
    // Links keep their length but lose their mentions: indexes stay right.
    const masked = text.replace(URL, (url) => " ".repeat(url.length));
    const fragment = document.createDocumentFragment();
    let last = 0;
    let mine = false;
    for (const match of masked.matchAll(MENTION)) {
      const handle = match[1].toLowerCase();
      const span = document.createElement("span");
      span.textContent = text.slice(match.index, match.index + match[0].length);
      highlightIfUser(span, handle);
      if (handle === me || handle === "here") {
        span.classList.add("mention-me");
        mine = true;
      }
      fragment.append(document.createTextNode(text.slice(last, match.index)), span);
      last = match.index + match[0].length;
    }
    if (last === 0) return false;
    fragment.append(document.createTextNode(text.slice(last)));
    node.replaceWith(fragment);
    return mine;
  }

  function markRoomRead() {
    if (document.visibilityState === "visible" && window.parleyNotifications) {
      window.parleyNotifications.send({ type: "mark_read", room: chat.config.label });
    }
  }

  chat.messageHooks.push(function (article, frame) {
    if (frame.id) article.id = `message-${frame.id}`;
    const body = article.querySelector(".text");
    if (!body) return;
    // Only bare text: links built by room.js stay as they are.
    const nodes = [...body.childNodes].filter((n) => n.nodeType === Node.TEXT_NODE);
    let mine = false;
    for (const node of nodes) mine = decorate(node) || mine;
    if (mine && frame.handle.toLowerCase() !== me) {
      article.classList.add("mentions-me");
      if (frame.id) markRoomRead();
    }
    if (frame.id && location.hash === `#message-${frame.id}`) {
      article.classList.add("target");
      setTimeout(() => article.scrollIntoView({ block: "center" }), 0);
    }
  });

  document.addEventListener("DOMContentLoaded", markRoomRead);
  document.addEventListener("visibilitychange", markRoomRead);
})();
