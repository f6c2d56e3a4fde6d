// Glue for the standalone test harness page api/static/scanner.html (no inline script, so the
// page also works under a strict Content-Security-Policy). The real merchant page embeds the
// scanner component with its own glue.

// Uses the global that build/scanner.js defines (loaded first), exactly as a page would.
const { startScanner, stopScanner } = window.StadjerspasScanner;

function $(id) {
  return document.getElementById(id);
}

function showManualEntry(focus) {
  const manual = $("manual-entry");
  manual.hidden = false;
  if (focus) $("manual-code").focus();
}

function showCode(text, source) {
  const out = $("scanner-code");
  out.textContent = text;
  out.dataset.source = source;
  out.dataset.count = String(Number(out.dataset.count || "0") + 1);
}

async function start() {
  const error = $("scanner-error");
  error.textContent = "";
  delete error.dataset.code;
  $("start").disabled = true;
  $("stop").disabled = false;
  const handle = await startScanner({
    video: $("scanner-video"),
    onCode: (text) => showCode(text, "camera"),
    onError: (err) => {
      error.textContent = err.message;
      error.dataset.code = err.code;
      if (err.fatal) {
        $("start").disabled = false;
        $("stop").disabled = true;
        showManualEntry(true);
      }
    },
    onStatus: (status) => {
      const el = $("scanner-status");
      el.textContent = status.message;
      el.dataset.state = status.state;
    },
  });
  document.body.dataset.scanner = handle.active ? "running" : "failed";
}

function stop() {
  stopScanner();
  $("start").disabled = false;
  $("stop").disabled = true;
  document.body.dataset.scanner = "stopped";
}

function init() {
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", stop);
  $("manual-entry").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("manual-code").value.trim();
    if (text) showCode(text, "manual");
  });
  const params = new URLSearchParams(window.location.search);
  document.body.dataset.scanner = "idle";
  if (params.get("autostart") !== "0") start();
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", init);
} else {
  init();
}
