// Profile page: show the chosen avatar before it is uploaded (the server checks it again).
(() => {
  "use strict";
  const MAX_BYTES = 10 * 1024 * 1024;
  const input = document.querySelector('input[type=file][name=avatar]');
  const preview = document.getElementById("avatar-preview");
  const current = document.getElementById("avatar-current");
  const error = document.getElementById("avatar-client-error");
  if (!input || !preview) return;
  let objectUrl = null;

  input.addEventListener("change", () => {
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = null;
    error.textContent = "";
    const file = input.files[0];
    if (!file) {
      preview.hidden = true;
      current.hidden = false;
      return;
    }
    if (file.size > MAX_BYTES) {
      error.textContent = `This file is ${(file.size / 1048576).toFixed(1)} MB; an avatar may be at most 10 MB.`;
    }
    objectUrl = URL.createObjectURL(file);
    preview.onerror = () => { error.textContent = "This browser cannot show this file; it may not be an image."; };
    preview.src = objectUrl;
    preview.hidden = false;
    current.hidden = true;
  });
})();
