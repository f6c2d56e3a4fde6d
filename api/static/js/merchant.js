// Merchant scanner page: camera (bundled StadjerspasScanner) or typed code -> scan -> redeem,
// with a large result screen and "reverse the last redemption". Calls the session-backed JSON
// routes under /merchant/web/ with the page's CSRF token and a client-generated Idempotency-Key.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var M = JSON.parse($("page-messages").textContent);
  var app = $("app");
  var lang = app.dataset.lang;
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var money = new Intl.NumberFormat(lang === "nl" ? "nl-NL" : "en-GB", { style: "currency", currency: "EUR" });

  var token = null;        // the scanned pass token URI
  var schemes = [];        // redeemable schemes of the scanned pass
  var pendingKey = null;   // Idempotency-Key of the redemption being tried (kept for retries)
  var pendingBody = null;
  var last = null;         // the last successful redemption {id, unit}
  var busy = false;

  function t(key, values) {
    var text = M[key] || key;
    Object.keys(values || {}).forEach(function (name) { text = text.split("{" + name + "}").join(values[name]); });
    return text;
  }
  function fmt(amount, unit) {
    return unit === "cents" ? money.format(amount / 100) : t("unit.uses", { n: amount });
  }
  function newKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }
  function problemText(problem) {
    var code = (problem && problem.code) || "network";
    if (code === "network") return t("merchant.error.network");
    return M["problem." + code] || t("problem.default", { code: code });
  }
  function show(view) {
    ["scan-view", "pass-view", "result-view"].forEach(function (id) { $(id).hidden = id !== view; });
    app.dataset.state = view.replace("-view", "");
  }
  function focus(id) { var el = $(id); if (el) el.focus(); }

  function call(url, body, headers) {
    var h = { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf };
    Object.keys(headers || {}).forEach(function (k) { h[k] = headers[k]; });
    return fetch(url, { method: "POST", credentials: "same-origin", headers: h, body: JSON.stringify(body) })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (data) {
          if (!response.ok) { data.code = data.code || "http_" + response.status; throw data; }
          return data;
        });
      }, function () { throw { code: "network" }; });
  }

  // -- scanning ---------------------------------------------------------------------------
  var scannerMessages = {};
  ["starting", "scanning", "found", "stopped", "not_a_pass_token", "no_camera", "permission_denied",
   "camera_in_use", "insecure_context", "camera_lost", "camera_error"].forEach(function (k) {
    scannerMessages[k] = M["scanner." + k];
  });

  function startCamera() {
    $("scan-error").hidden = true;
    if (!window.StadjerspasScanner) return;
    window.StadjerspasScanner.startScanner({
      video: $("scanner-video"),
      messages: scannerMessages,
      onCode: function (text) { useCode(text, "camera"); },
      onError: function (err) {
        $("scan-error").textContent = err.message || scannerMessages[err.code] || err.code;
        $("scan-error").hidden = false;
        $("scan-error").dataset.code = err.code;
        if (err.fatal) focus("manual-code");
      },
      onStatus: function (status) {
        // A camera failure comes as an error (shown in the #scan-error alert) and as the status
        // "error" with the same text: show it once, in the alert, not again in the status line.
        $("scan-status").textContent = status.state === "error" ? "" : status.message || "";
        $("scan-status").dataset.state = status.state;
      },
    });
  }
  function stopCamera() {
    if (window.StadjerspasScanner) window.StadjerspasScanner.stopScanner();
  }

  function useCode(text, source) {
    if (busy) return;
    busy = true;
    token = text.trim();
    app.dataset.source = source;
    call("/merchant/web/scan", { token: token }).then(function (data) {
      stopCamera();
      showPass(data);
    }, function (problem) {
      stopCamera();
      showRefused(problem);
    }).finally(function () { busy = false; });
  }

  $("manual-entry").addEventListener("submit", function (event) {
    event.preventDefault();
    var code = $("manual-code").value.trim();
    if (code) useCode(code, "manual");
  });

  // -- the scanned pass -------------------------------------------------------------------
  function showPass(data) {
    schemes = data.redeemable || [];
    $("pass-first-name").textContent = data.first_name || "—";
    $("pass-status").textContent = t("merchant.result.status." + data.status);
    $("pass-status").dataset.status = data.status;
    var list = $("scheme-list");
    list.textContent = "";
    schemes.forEach(function (s, i) {
      var id = "scheme-" + s.scheme_id;
      var wrap = document.createElement("div");
      wrap.className = "choice";
      var input = document.createElement("input");
      input.type = "radio"; input.name = "scheme"; input.id = id; input.value = String(s.scheme_id);
      input.checked = i === 0;
      input.addEventListener("change", updateAmountLabel);
      var label = document.createElement("label");
      label.htmlFor = id;
      var left = s.unlimited ? M["unit.unlimited"] || "∞" : fmt(s.balance, s.unit);
      label.textContent = s.name + " — " + t("merchant.result.left", { left: left });
      wrap.appendChild(input); wrap.appendChild(label); list.appendChild(wrap);
    });
    var none = schemes.length === 0;
    $("pass-nothing").hidden = !none;
    $("redeem-form").querySelector("fieldset").hidden = none;
    $("amount").parentNode.hidden = none;
    $("redeem-button").hidden = none;
    $("amount").value = "";
    $("amount-error").hidden = true;
    $("amount").removeAttribute("aria-invalid");
    pendingKey = null;
    updateAmountLabel();
    show("pass-view");
    focus(none ? "pass-title" : "amount");
  }

  function selected() {
    var input = document.querySelector('input[name="scheme"]:checked');
    if (!input) return null;
    return schemes.filter(function (s) { return String(s.scheme_id) === input.value; })[0] || null;
  }
  function updateAmountLabel() {
    var s = selected();
    var key = !s ? "merchant.amount.euro" : s.kind === "uses" ? "merchant.amount.uses"
      : s.kind === "discount" ? "merchant.amount.price" : "merchant.amount.euro";
    $("amount-label").textContent = M[key];
    $("amount").inputMode = s && s.kind === "uses" ? "numeric" : "decimal";
    pendingKey = null;
  }
  function parseAmount(text, kind) {
    text = text.trim().replace(/\s|€/g, "");
    if (kind === "uses") return /^\d+$/.test(text) ? Number(text) : NaN;
    var m = /^(\d+)(?:[.,](\d{1,2}))?$/.exec(text);
    if (!m) return NaN;
    return Number(m[1]) * 100 + Number(((m[2] || "") + "00").slice(0, 2));
  }

  $("redeem-form").addEventListener("submit", function (event) {
    event.preventDefault();
    if (busy) return;
    var s = selected();
    if (!s) return;
    var amount = parseAmount($("amount").value, s.kind);
    if (!(amount > 0)) {
      $("amount-error").textContent = M["merchant.amount.invalid"];
      $("amount-error").hidden = false;
      $("amount").setAttribute("aria-invalid", "true");
      focus("amount");
      return;
    }
    $("amount-error").hidden = true;
    $("amount").removeAttribute("aria-invalid");
    var body = { token: token, scheme_id: s.scheme_id, amount: amount };
    var same = pendingBody && pendingBody.scheme_id === body.scheme_id && pendingBody.amount === body.amount;
    if (!pendingKey || !same) pendingKey = newKey();  // a retry of the same redemption keeps its key
    pendingBody = body;
    busy = true;
    var button = $("redeem-button");
    button.disabled = true;
    button.textContent = M["merchant.redeeming"];
    call("/merchant/web/redemptions", body, { "Idempotency-Key": pendingKey }).then(function (r) {
      pendingKey = null;
      last = { id: r.redemption_id, unit: s.unit };
      showOk(r, s);
    }, function (problem) {
      if (problem.code !== "network" && problem.code !== "receipt_timeout") pendingKey = null;
      showRefused(problem);
    }).finally(function () {
      busy = false;
      button.disabled = false;
      button.textContent = M["merchant.redeem"];
    });
  });

  // -- result screen ----------------------------------------------------------------------
  function showResult(ok, title, amountText, balanceText, reason) {
    var box = $("result");
    box.dataset.outcome = ok ? "ok" : "refused";
    box.className = "result " + (ok ? "result-ok" : "result-refused");
    $("result-icon").textContent = ok ? "✔" : "✖";
    $("result-title").textContent = title;
    $("result-amount").textContent = amountText || "";
    $("result-balance").textContent = balanceText || "";
    $("result-reason").textContent = reason || "";
    $("reverse-last").hidden = !last;
    show("result-view");
    focus("result-title");
  }
  function showOk(r, s) {
    var amount = s.kind === "discount" ? t("merchant.ok.discount", { amount: money.format(r.discount / 100) })
      : t("merchant.ok.amount", { amount: fmt(r.debited, s.unit) });
    var balance = s.unlimited ? "" : t("merchant.ok.balance", { balance: fmt(r.balance, s.unit) });
    $("result").dataset.amount = String(r.debited);
    $("result").dataset.balance = String(r.balance);
    $("result").dataset.redemptionId = String(r.redemption_id);
    showResult(true, M["merchant.ok.title"], amount, balance, "");
  }
  function showRefused(problem) {
    $("result").dataset.code = (problem && problem.code) || "";
    showResult(false, M["merchant.refused.title"], "", "", problemText(problem));
  }

  $("reverse-last").addEventListener("click", function () {
    if (!last || busy) return;
    if (!window.confirm(M["merchant.reverse.confirm"])) return;
    busy = true;
    var done = last;
    call("/merchant/web/redemptions/" + done.id + "/reversal", {}).then(function (r) {
      last = null;
      $("result").dataset.reversed = String(r.redemption_id);
      showResult(true, M["merchant.ok.title"],
        t("merchant.reversed", { amount: fmt(r.restored, done.unit), balance: fmt(r.balance, done.unit) }), "", "");
    }, function (problem) {
      showRefused(problem);
    }).finally(function () { busy = false; });
  });

  Array.prototype.forEach.call(document.querySelectorAll(".scan-again"), function (button) {
    button.addEventListener("click", function () {
      token = null;
      $("manual-code").value = "";
      $("result").removeAttribute("data-outcome");
      show("scan-view");
      focus("scan-title");
      startCamera();
    });
  });

  startCamera();
})();
