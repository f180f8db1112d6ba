// Parley reports: turning a `job.progress` frame into words (shared by the job page and the chat box).
"use strict";
window.ParleyProgress = {
  duration(seconds) {
    if (seconds == null) return "";
    if (seconds < 60) return `${Math.ceil(seconds)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.ceil(seconds % 60)} s`;
    return `${Math.floor(seconds / 3600)} h ${Math.ceil((seconds % 3600) / 60)} min`;
  },
  rows(frame) {
    if (frame.total == null) return "";
    return `${frame.done.toLocaleString()} of ${frame.total.toLocaleString()} rows`;
  },
  rate(frame) {
    return frame.rate == null ? "" : `${Math.round(frame.rate).toLocaleString()} rows/s`;
  },
  eta(frame) {
    return frame.eta == null ? "" : `about ${this.duration(frame.eta)} left`;
  },
  label(status) {
    return { queued: "Waiting for a worker", running: "Running", done: "Done", failed: "Failed",
             cancelled: "Cancelled", expired: "Expired" }[status] || status;
  },
};
