/*
 * Permalinks: /<room>/#message-<id> (what a search result links to) opens the
 * room on that message, however far back: the messages around it come from
 * /<room>/messages?around=<id>, and it is scrolled to and highlighted. Between
 * them and the newest messages a "Load newer messages" button fills the gap
 * (messages?after=<id>); scrolling up loads older ones as usual (room.js).
 */
(function () {
  "use strict";

  const HASH_RE = /^#message-(\d+)$/;

  function contextUrl(query) {
    return `/${encodeURIComponent(ParleyChat.config.label)}/messages?${query}`;
  }

  async function fetchContext(query) {
    const response = await fetch(contextUrl(query), { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return response.json();
  }

  /* The gap sits in id order among the messages: room.js places messages by data-id. */
  function placeGap(gap, afterId) {
    gap.dataset.id = String(afterId + 0.5);
    gap.dataset.after = String(afterId);
    const anchor = ParleyChat.messageElement(afterId);
    anchor.after(gap);
  }

  function makeGap() {
    const gap = document.createElement("button");
    gap.type = "button";
    gap.className = "gap";
    gap.textContent = "Load newer messages";
    gap.addEventListener("click", async () => {
      gap.disabled = true;
      try {
        const data = await fetchContext(`after=${gap.dataset.after}`);
        const last = data.messages[data.messages.length - 1];
        const closed = !data.has_newer || data.messages.some((m) => ParleyChat.messageElement(m.id));
        for (const frame of data.messages) ParleyChat.addMessage(frame);
        if (closed || !last) gap.remove();
        else placeGap(gap, last.id);
      } catch (e) {
        ParleyChat.notice("Could not load newer messages.");
      } finally {
        gap.disabled = false;
      }
    });
    return gap;
  }

  async function open() {
    const match = location.hash.match(HASH_RE);
    if (!match) return;
    const id = Number(match[1]);
    if (!ParleyChat.messageElement(id)) {
      let data;
      try {
        data = await fetchContext(`around=${id}`);
      } catch (e) {
        ParleyChat.notice("That message is not in this room.");
        return;
      }
      const last = data.messages[data.messages.length - 1];
      const joined = ParleyChat.messageElement(last.id); // the newest messages already reach this far
      for (const frame of data.messages) ParleyChat.addMessage(frame);
      if (data.has_newer && !joined) placeGap(makeGap(), last.id);
    }
    const target = ParleyChat.messageElement(id);
    for (const old of document.querySelectorAll(".msg.permalinked")) old.classList.remove("permalinked");
    target.classList.add("permalinked");
    target.scrollIntoView({ block: "center" });
  }

  // After room.js's own DOMContentLoaded listener (this script comes later), which renders the newest messages.
  document.addEventListener("DOMContentLoaded", open);
  window.addEventListener("hashchange", open);
})();
