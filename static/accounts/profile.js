// Profile page: show the chosen avatar before it is uploaded (the server checks it again),
// and refuse at once a file the server would refuse, with Save disabled until another is chosen.
(() => {
  "use strict";
  const MAX_BYTES = 10 * 1024 * 1024;
  // What accounts/images.py accepts; a file whose type the browser does not know is tried as an image.
  const ACCEPTED = ["image/jpeg", "image/png", "image/webp", "image/gif"];
  const NOT_AN_IMAGE = "is not a JPEG, PNG, WebP or GIF image: choose another file.";
  const input = document.querySelector('input[type=file][name=avatar]');
  const preview = document.getElementById("avatar-preview");
  const current = document.getElementById("avatar-current");
  const error = document.getElementById("avatar-client-error");
  if (!input || !preview) return;
  const save = input.form.querySelector("button[type=submit]");
  let objectUrl = null;

  function showCurrent() {
    preview.hidden = true;
    preview.removeAttribute("src");
    current.hidden = false;
  }

  function refuse(message) {
    error.textContent = message;
    showCurrent();
    save.disabled = true;
  }

  input.addEventListener("change", () => {
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = null;
    error.textContent = "";
    save.disabled = false;
    const file = input.files[0];
    if (!file) {
      showCurrent();
      return;
    }
    if (file.type && !ACCEPTED.includes(file.type)) {
      refuse(`"${file.name}" ${NOT_AN_IMAGE}`);
      return;
    }
    if (file.size > MAX_BYTES) {
      refuse(`This file is ${(file.size / 1048576).toFixed(1)} MB; an avatar may be at most 10 MB.`);
      return;
    }
    const url = (objectUrl = URL.createObjectURL(file));
    // The name may say .jpg over anything: only decoding tells.
    preview.onerror = () => {
      if (objectUrl === url) refuse(`"${file.name}" ${NOT_AN_IMAGE}`);
    };
    preview.src = url;
    preview.hidden = false;
    current.hidden = true;
  });
})();

// While the new avatar's thumbnails are being made, ask now and then whether they are ready,
// then show them: other users' pages hear of it on the room socket, and this page holds none.
(() => {
  "use strict";
  const pending = document.getElementById("avatar-pending");
  const current = document.getElementById("avatar-current");
  if (!pending || !current) return;
  const GIVE_UP_AFTER = 10 * 60 * 1000; // the worker may be down: a reload asks again
  const started = Date.now();
  let delay = 1000;

  async function check() {
    try {
      const response = await fetch(pending.dataset.statusUrl, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const status = await response.json();
        if (!status.pending) {
          current.src = status.avatar["256"];
          pending.remove();
          return;
        }
      }
    } catch (e) {
      // Offline for a moment: ask again later.
    }
    delay = Math.min(delay * 1.5, 10000);
    if (Date.now() - started < GIVE_UP_AFTER) setTimeout(check, delay);
  }
  setTimeout(check, delay);
})();
