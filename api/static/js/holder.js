// Holder page: renews the pass QR image before the token expires (token lifetime - 20 s), and
// with it the short code beside it (X-Short-Code: it stands for the same token).
(function () {
  "use strict";
  var img = document.getElementById("pass-qr");
  var status = document.getElementById("qr-status");
  var code = document.getElementById("pass-code");
  var spoken = document.getElementById("pass-code-spoken");
  if (!img) return;
  var seconds = Number(img.dataset.refreshS) || 100;

  function refresh() {
    fetch("/holder/qr.png?v=" + Date.now(), { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.blob().then(function (blob) { return { blob: blob, headers: response.headers }; });
      })
      .then(function (answer) {
        var old = img.src;
        img.src = URL.createObjectURL(answer.blob);
        var shortCode = answer.headers.get("X-Short-Code");
        if (code && shortCode) {
          code.textContent = shortCode;
          if (spoken) spoken.textContent = answer.headers.get("X-Short-Code-Spoken") || shortCode;
          code.dataset.expiresAt = answer.headers.get("X-Token-Expires-At") || "";
          code.classList.remove("stale");
        }
        img.dataset.refreshed = String(Number(img.dataset.refreshed || "0") + 1);
        if (old.indexOf("blob:") === 0) URL.revokeObjectURL(old);
        status.textContent = status.dataset.refreshed;
      })
      .catch(function () {
        status.textContent = status.dataset.failed;
        if (code) code.classList.add("stale");
      })
      .finally(function () {
        window.setTimeout(refresh, seconds * 1000);
      });
  }
  window.setTimeout(refresh, seconds * 1000);
})();
