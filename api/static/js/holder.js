// Holder page: renews the pass QR image before the token expires (token lifetime - 20 s).
(function () {
  "use strict";
  var img = document.getElementById("pass-qr");
  var status = document.getElementById("qr-status");
  if (!img) return;
  var seconds = Number(img.dataset.refreshS) || 100;

  function refresh() {
    fetch("/holder/qr.png?v=" + Date.now(), { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.blob();
      })
      .then(function (blob) {
        var old = img.src;
        img.src = URL.createObjectURL(blob);
        img.dataset.refreshed = String(Number(img.dataset.refreshed || "0") + 1);
        if (old.indexOf("blob:") === 0) URL.revokeObjectURL(old);
        status.textContent = status.dataset.refreshed;
      })
      .catch(function () {
        status.textContent = status.dataset.failed;
      })
      .finally(function () {
        window.setTimeout(refresh, seconds * 1000);
      });
  }
  window.setTimeout(refresh, seconds * 1000);
})();
