/*
 * Message actions on the room page: edit, delete, react, threads, earlier versions.
 *
 * Built on room.js's extension points (ParleyChat.handlers, messageHooks, post,
 * build, replaceMessage, syncFields); the frames are README.md's, "WebSocket
 * protocol". Every change comes as a `change` frame carrying the message's whole
 * new state and its change number `seq`: a message is re-rendered only by a newer
 * one, so late or repeated frames never undo anything. `lastSeq`, the highest
 * change seen, is sent with every `sync` (changes_after) to catch up after an outage.
 *
 * Keyboard: each message's actions are buttons, shown on hover and on focus;
 * Up-arrow in an empty composer edits your last message; Enter saves an edit,
 * Escape cancels it (or closes the thread panel).
 */
(function () {
  "use strict";

  const chat = window.ParleyChat;
  const config = chat.config;
  const QUICK_EMOJI = ["👍", "❤️", "😂", "🎉", "😮", "👀"];
  const MAX_LENGTH = 4000;

  let lastSeq = config.change_seq || 0;
  // The open thread: its parent id, and its panel's reply elements by id.
  const thread = { id: null, replies: new Map(), parentFrame: null };
  // Message id -> its last frame: re-renders and the thread panel start from it.
  const frames = new Map();

  chat.syncFields = () => ({ changes_after: lastSeq });

  // --- rendering hooks -----------------------------------------------------------

  function button(label, title, onClick, className) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = className || "msg-action";
    b.textContent = label;
    b.title = title;
    b.setAttribute("aria-label", title);
    b.addEventListener("click", (event) => {
      event.stopPropagation();
      onClick(event);
    });
    return b;
  }

  function timeText(ts) {
    return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function decorate(article, frame) {
    if (frame.id === undefined) {
      // Pending: only where it belongs (a reply waits in its thread, not in the room).
      if (frame.parent && !frame.to_room) article.classList.add("reply");
      return;
    }
    frames.set(frame.id, frame);
    article.dataset.seq = String(frame.seq || 0);
    if (frame.parent) {
      article.classList.add("reply");
      article.dataset.parent = String(frame.parent);
      if (frame.to_room) article.classList.add("to-room");
    }
    const meta = article.querySelector(".meta");
    const body = article.querySelector(".text");
    if (frame.parent && frame.to_room) {
      meta.append(button("in a thread", "Open the thread this reply is in", () => openThread(frame.parent), "in-thread"));
    }
    if (frame.deleted) {
      article.classList.add("deleted");
      body.textContent = "message deleted";
      // A tombstone: no actions, no reactions; its thread stays open to read.
      if (frame.replies) article.append(threadSummary(frame));
      return;
    }
    if (frame.edited) {
      const mark = document.createElement("span");
      mark.className = "edited";
      mark.textContent = "(edited)";
      mark.title = `edited ${new Date(frame.edited).toLocaleString()}`;
      meta.append(mark);
    }
    if (frame.reactions && frame.reactions.length) article.append(reactionBar(frame));
    article.append(actionBar(frame));
    article.tabIndex = 0;
    if (frame.replies || frame.last_reply) article.append(threadSummary(frame));
  }

  function reactionBar(frame) {
    const bar = document.createElement("div");
    bar.className = "reactions";
    for (const [emoji, handles] of frame.reactions) {
      const mine = handles.includes(config.handle);
      const b = button(`${emoji} ${handles.length}`, `${handles.join(", ")} reacted with ${emoji}`,
        () => react(frame.id, emoji), "reaction");
      b.setAttribute("aria-pressed", String(mine));
      bar.append(b);
    }
    return bar;
  }

  function threadSummary(frame) {
    const n = frame.replies || 0;
    const label = n === 1 ? "1 reply" : `${n} replies`;
    const last = frame.last_reply ? ` · last ${timeText(frame.last_reply)}` : "";
    return button(label + last, `Open the thread (${label})`, () => openThread(frame.id), "thread-summary");
  }

  function actionBar(frame) {
    const bar = document.createElement("div");
    bar.className = "msg-actions";
    bar.setAttribute("role", "toolbar");
    bar.setAttribute("aria-label", "Message actions");
    const picker = document.createElement("div");
    picker.className = "emoji-picker";
    picker.hidden = true;
    for (const emoji of QUICK_EMOJI) {
      picker.append(button(emoji, `React with ${emoji}`, () => {
        picker.hidden = true;
        react(frame.id, emoji);
      }, "emoji"));
    }
    bar.append(button("☺", "Add a reaction", () => {
      picker.hidden = !picker.hidden;
      if (!picker.hidden) picker.querySelector("button").focus();
    }));
    if (!frame.parent) bar.append(button("💬", "Reply in thread", () => openThread(frame.id)));
    const mine = frame.handle === config.handle;
    const menu = document.createElement("div");
    menu.className = "msg-menu";
    menu.setAttribute("role", "menu");
    menu.hidden = true;
    const item = (label, action) => {
      const b = button(label, label, () => {
        menu.hidden = true;
        action();
      }, "menu-item");
      b.setAttribute("role", "menuitem");
      menu.append(b);
    };
    if (mine) item("Edit", () => startEdit(frame.id));
    if (mine || config.can_moderate) item("Delete", () => remove(frame.id));
    if (frame.edited && (mine || config.can_moderate)) item("Earlier versions", () => chat.send({ type: "versions", id: frame.id }));
    if (menu.childElementCount) {
      const more = button("⋯", "More actions", () => {
        menu.hidden = !menu.hidden;
        if (!menu.hidden) menu.querySelector("button").focus();
      });
      more.setAttribute("aria-haspopup", "menu");
      bar.append(more, menu);
    }
    bar.append(picker);
    bar.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        picker.hidden = true;
        menu.hidden = true;
      }
    });
    return bar;
  }

  chat.messageHooks.push(decorate);

  // --- actions -----------------------------------------------------------------------

  function react(id, emoji) {
    chat.send({ type: "react", id: id, emoji: emoji });
  }

  function remove(id) {
    if (window.confirm("Delete this message for everyone?")) chat.send({ type: "delete", id: id });
  }

  function elementsOf(id) {
    return document.querySelectorAll(`.msg[data-id="${id}"]`);
  }

  function startEdit(id) {
    const frame = frames.get(id);
    const article = [...elementsOf(id)].find((a) => a.offsetParent !== null) || elementsOf(id)[0];
    if (!frame || !article || article.querySelector(".edit-box")) return;
    const body = article.querySelector(".text");
    const box = document.createElement("textarea");
    box.className = "edit-box";
    box.value = frame.text;
    box.maxLength = MAX_LENGTH;
    box.rows = Math.min(8, frame.text.split("\n").length + 1);
    box.setAttribute("aria-label", "Edit message (Enter saves, Escape cancels)");
    body.hidden = true;
    body.after(box);
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
    const done = () => {
      box.remove();
      body.hidden = false;
      article.focus();
    };
    box.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        done();
      } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        const text = box.value;
        if (text.trim() && text !== frame.text) chat.send({ type: "edit", id: id, text: text });
        done();
      }
    });
  }

  // Up-arrow in an empty composer edits your last message in the room.
  const composer = document.getElementById("text");
  composer.addEventListener("keydown", (event) => {
    if (event.key !== "ArrowUp" || composer.value || event.shiftKey || event.altKey || event.ctrlKey || event.metaKey) return;
    const mine = [...document.querySelectorAll("#message-list .msg[data-id]:not(.deleted)")].filter(
      (a) => a.dataset.handle === config.handle && (!a.classList.contains("reply") || a.classList.contains("to-room"))
    );
    if (!mine.length) return;
    event.preventDefault();
    startEdit(Number(mine[mine.length - 1].dataset.id));
  });

  // --- the thread panel --------------------------------------------------------------

  const panel = document.createElement("aside");
  panel.id = "thread-panel";
  panel.className = "thread-panel";
  panel.hidden = true;
  panel.setAttribute("aria-label", "Thread");
  const head = document.createElement("div");
  head.className = "thread-head";
  const title = document.createElement("h2");
  title.textContent = "Thread";
  head.append(title, button("✕", "Close the thread", closeThread, "thread-close"));
  const parentBox = document.createElement("div");
  parentBox.className = "thread-parent";
  const replyList = document.createElement("div");
  replyList.className = "thread-replies";
  replyList.setAttribute("aria-live", "polite");
  const form = document.createElement("form");
  form.className = "thread-composer";
  form.autocomplete = "off";
  const replyText = document.createElement("textarea");
  replyText.rows = 1;
  replyText.maxLength = MAX_LENGTH;
  replyText.placeholder = "Reply…";
  replyText.setAttribute("aria-label", "Write a reply");
  const alsoLabel = document.createElement("label");
  const also = document.createElement("input");
  also.type = "checkbox";
  alsoLabel.append(also, " Also send to the room");
  const sendReply = document.createElement("button");
  sendReply.type = "submit";
  sendReply.textContent = "Reply";
  form.append(replyText, alsoLabel, sendReply);
  panel.append(head, parentBox, replyList, form);
  document.querySelector("main").append(panel);

  function openThread(id) {
    thread.id = id;
    thread.replies.clear();
    replyList.replaceChildren();
    const known = frames.get(id);
    parentBox.replaceChildren(known ? panelCopy(known) : "");
    panel.hidden = false;
    document.body.classList.add("thread-open");
    chat.send({ type: "thread", id: id });
    replyText.focus();
  }

  function closeThread() {
    const id = thread.id;
    thread.id = null;
    panel.hidden = true;
    document.body.classList.remove("thread-open");
    const origin = elementsOf(id)[0];
    if (origin) origin.focus();
  }

  /* A message as the panel shows it: room.js's rendering, hooks included, without the thread summary. */
  function panelCopy(frame) {
    const copy = chat.build(frame);
    if (frame.id === thread.id) {
      // The thread's own parent: already open, nothing to open again.
      for (const opener of copy.querySelectorAll(".thread-summary, .msg-action[title='Reply in thread']")) opener.remove();
    }
    return copy;
  }

  function showReply(frame) {
    const pending = replyList.querySelector(`.msg.pending[data-client-id="${CSS.escape(frame.client_id)}"]`);
    if (pending) pending.remove();
    const old = thread.replies.get(frame.id);
    if (old && Number(old.dataset.seq) >= (frame.seq || 0) && old.dataset.id) return;
    const copy = panelCopy(frame);
    thread.replies.set(frame.id, copy);
    if (old) {
      old.replaceWith(copy);
      return;
    }
    let before = null;
    for (const node of replyList.children) {
      if (!node.dataset.id || Number(node.dataset.id) > frame.id) {
        before = node;
        break;
      }
    }
    replyList.insertBefore(copy, before);
    replyList.scrollTop = replyList.scrollHeight;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = replyText.value;
    if (!text.trim() || thread.id === null) return;
    const clientId = chat.post(text, also.checked ? { parent: thread.id, to_room: true } : { parent: thread.id });
    // Shown pending in the panel too (it waits in the outbox while offline), until it comes back stored.
    const pending = document.createElement("article");
    pending.className = "msg pending";
    pending.dataset.clientId = clientId;
    pending.textContent = text;
    replyList.append(pending);
    replyText.value = "";
  });
  replyText.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  panel.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !event.defaultPrevented) closeThread();
  });

  // --- server frames -------------------------------------------------------------------

  const roomMessage = chat.handlers.message;
  chat.handlers.message = (frame) => {
    roomMessage(frame);
    if (frame.parent && frame.parent === thread.id) showReply(frame);
  };

  const roomSynced = chat.handlers.synced;
  chat.handlers.synced = (frame) => {
    if (frame.last_seq !== undefined) lastSeq = Math.max(lastSeq, frame.last_seq);
    roomSynced(frame);
  };

  chat.handlers.change = (change) => {
    lastSeq = Math.max(lastSeq, change.seq);
    const frame = change.message;
    const known = frames.get(frame.id);
    if (known && (known.seq || 0) >= change.seq) return; // this state or a newer one is shown
    frames.set(frame.id, frame);
    chat.replaceMessage(frame);
    if (thread.id === frame.id) parentBox.replaceChildren(panelCopy(frame));
    if (thread.id !== null && frame.parent === thread.id) showReply(frame);
  };

  chat.handlers.thread = (answer) => {
    if (answer.parent.id !== thread.id) return;
    const known = frames.get(answer.parent.id);
    if (!known || (known.seq || 0) <= (answer.parent.seq || 0)) parentBox.replaceChildren(panelCopy(answer.parent));
    for (const reply of answer.replies) {
      const newer = frames.get(reply.id);
      showReply(newer && (newer.seq || 0) > (reply.seq || 0) ? newer : reply);
    }
  };

  chat.handlers.versions = (answer) => {
    for (const article of elementsOf(answer.id)) {
      const old = article.querySelector(".versions");
      if (old) old.remove();
      const list = document.createElement("ol");
      list.className = "versions";
      list.setAttribute("aria-label", "Earlier versions");
      for (const version of answer.versions) {
        const li = document.createElement("li");
        li.textContent = version.text; // text only: never HTML
        li.title = `replaced ${new Date(version.replaced).toLocaleString()}`;
        list.append(li);
      }
      article.append(list);
    }
  };
})();
