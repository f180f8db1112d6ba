/*
 * Day dividers (Today, Yesterday, Mon 23 Nov) and grouping on the room page: a message by the same
 * person within GROUP_MINUTES of the one before, on the same day, goes under that one's name and time.
 * Each message's <time> carries its full date on hover (room.js). Messages arrive in any order
 * (older pages, syncs, live), so every insertion re-decorates the new message and the one after it.
 */
(function () {
  "use strict";
  const list = document.getElementById("message-list");
  if (!list) return;
  const GROUP_MINUTES = 5;
  const DAY_MS = 86400000;

  function stamp(article) {
    const time = article.querySelector(".meta time[datetime]");
    return time && time.dateTime ? new Date(time.dateTime) : null;
  }

  function dayStart(date) {
    return new Date(date.getFullYear(), date.getMonth(), date.getDate()).getTime();
  }

  function dayLabel(date) {
    const days = Math.round((dayStart(new Date()) - dayStart(date)) / DAY_MS);
    if (days === 0) return "Today";
    if (days === 1) return "Yesterday";
    const sameYear = date.getFullYear() === new Date().getFullYear();
    return date.toLocaleDateString([], {
      weekday: "short", day: "numeric", month: "short", year: sameYear ? undefined : "numeric",
    });
  }

  function previousStored(article) {
    let node = article.previousElementSibling;
    while (node && !node.dataset.id) node = node.previousElementSibling;
    return node;
  }

  function decorate(article) {
    if (!article || !article.classList.contains("msg") || !article.dataset.id) return;
    const date = stamp(article);
    if (!date) return;
    const prev = previousStored(article);
    const prevDate = prev ? stamp(prev) : null;
    const newDay = !prevDate || dayStart(prevDate) !== dayStart(date);
    let divider = article.querySelector(":scope > .day-divider");
    if (newDay) {
      if (!divider) {
        divider = document.createElement("div");
        divider.className = "day-divider";
        divider.setAttribute("role", "separator");
        article.prepend(divider);
      }
      divider.textContent = dayLabel(date);
      divider.title = date.toLocaleDateString([], { dateStyle: "full" });
    } else if (divider) {
      divider.remove();
    }
    const grouped =
      !newDay &&
      prev.dataset.handle === article.dataset.handle &&
      date - prevDate < GROUP_MINUTES * 60000 &&
      !article.classList.contains("first-unread");
    article.classList.toggle("grouped", grouped);
  }

  function decorateAround(article) {
    decorate(article);
    let next = article.nextElementSibling;
    while (next && !next.dataset.id && next.classList.contains("msg")) next = next.nextElementSibling;
    decorate(next);
  }

  new MutationObserver((records) => {
    for (const record of records) {
      for (const node of record.addedNodes) if (node.nodeType === Node.ELEMENT_NODE) decorateAround(node);
      // A removed message (a pending copy replaced) changes nothing for stored ones: pending come last.
    }
  }).observe(list, { childList: true });

  window.ParleyDates = { decorate: decorateAround, dayLabel: dayLabel };
})();
