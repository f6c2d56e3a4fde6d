// Merchant scanner page: camera (bundled StadjerspasScanner) or typed code -> scan -> redeem,
// with a large result screen and "reverse the last redemption". Calls the session-backed JSON
// routes under /merchant/web/ with the page's CSRF token and a client-generated Idempotency-Key.
// The holder's PIN (a printed card above its limit, or a pass number without card or phone) is
// read from its field for one request and cleared at once: it is never kept, logged or put in a URL.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var M = JSON.parse($("page-messages").textContent);
  var app = $("app");
  var lang = app.dataset.lang;
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var money = new Intl.NumberFormat(lang === "nl" ? "nl-NL" : "en-GB", { style: "currency", currency: "EUR" });

  var token = null;        // the token to redeem with: the scanned one, or the scan's checkout_token
  var amountCap = null;    // the scanned card's limit without PIN (null: none known)
  var schemes = [];        // redeemable schemes of the scanned pass
  var pendingKey = null;   // Idempotency-Key of the redemption being tried (kept for retries)
  var pendingBody = null;
  var last = null;         // the last successful redemption {id, unit}
  var busy = false;
  // Refusals that stored nothing (the request never reached the redemption record): a retry of
  // the same redemption keeps its Idempotency-Key, as after a lost answer.
  var PIN_CODES = ["card_pin_required", "card_pin_wrong", "card_pin_locked", "card_pin_throttled",
    "card_pin_malformed"];
  var KEEP_KEY = ["network", "receipt_timeout"].concat(PIN_CODES);
  var MIN_PIN = 4;

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
    var minutes = Math.max(1, Math.ceil((problem.retry_after || 600) / 60));
    return M["problem." + code] ? t("problem." + code, { minutes: minutes }) : t("problem.default", { code: code });
  }
  function isPinProblem(problem) { return PIN_CODES.indexOf(problem && problem.code) >= 0; }
  function fieldError(inputId, errorId, text) {
    $(errorId).textContent = text || "";
    $(errorId).hidden = !text;
    if (text) $(inputId).setAttribute("aria-invalid", "true");
    else $(inputId).removeAttribute("aria-invalid");
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
          if (!response.ok) {
            data.code = data.code || "http_" + response.status;
            data.retry_after = Number(response.headers.get("Retry-After")) || null;
            throw data;
          }
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

  function useCode(text, source, pin) {
    if (busy) return;
    busy = true;
    token = text.trim();
    app.dataset.source = source;
    var body = { token: token };
    if (pin) body.pin = pin;
    call("/merchant/web/scan", body).then(function (data) {
      stopCamera();
      if (data.checkout_token) token = data.checkout_token;  // this checkout redeems with it
      showPass(data);
    }, function (problem) {
      if (pin && isPinProblem(problem)) {
        // a pass number (or card) with a PIN: stay on the form, keep the number, ask again
        var text = problem.code === "card_pin_wrong" ? M["merchant.pin.wrong_number"] : problemText(problem);
        fieldError("manual-pin", "manual-pin-error", text);
        $("manual-pin-error").dataset.code = problem.code;
        focus("manual-pin");
        return;
      }
      stopCamera();
      showRefused(problem);
    }).finally(function () { busy = false; });
  }

  function setManualPin(on) {
    $("manual-with-pin").checked = on;
    $("manual-pin-field").hidden = !on;
    $("manual-pin").value = "";
    fieldError("manual-pin", "manual-pin-error", "");
    $("manual-code-label").textContent = M[on ? "merchant.scan.pass_number.label" : "merchant.scan.manual.label"];
  }
  $("manual-with-pin").addEventListener("change", function () {
    setManualPin($("manual-with-pin").checked);
    if ($("manual-with-pin").checked) focus("manual-code");
  });

  $("manual-entry").addEventListener("submit", function (event) {
    event.preventDefault();
    var code = $("manual-code").value.trim();
    var withPin = $("manual-with-pin").checked;
    var pin = withPin ? $("manual-pin").value : "";
    $("manual-pin").value = "";  // read once; never kept in the page
    if (!code || busy) return;
    if (withPin && pin.length < MIN_PIN) {
      fieldError("manual-pin", "manual-pin-error", M[pin ? "merchant.pin.short" : "merchant.pin.missing"]);
      focus("manual-pin");
      return;
    }
    fieldError("manual-pin", "manual-pin-error", "");
    useCode(code, withPin ? "manual-pin" : "manual", pin || null);
  });

  // -- the scanned pass -------------------------------------------------------------------
  function showPass(data) {
    schemes = data.redeemable || [];
    amountCap = data.token_kind === "card" && !data.checkout_token ? data.amount_cap : null;
    hidePin();
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
    $("card-limit").hidden = !(s && amountCap !== null && amountCap !== undefined && !s.unlimited);
    if (!$("card-limit").hidden) $("card-limit").textContent = t("merchant.card.limit", { cap: fmt(amountCap, s.unit) });
    pendingKey = null;
  }

  // -- the holder's PIN, for a card above its limit ----------------------------------------
  function askPin(problem, s) {
    if (problem.code === "card_pin_required") {
      if (problem.amount_cap !== undefined && problem.amount_cap !== null) amountCap = problem.amount_cap;
      $("pin-needed").textContent = t("merchant.pin.needed", { cap: fmt(amountCap, s.unit) });
      fieldError("pin", "pin-error", "");
    } else {
      fieldError("pin", "pin-error", problemText(problem));
    }
    $("pin-needed").hidden = !$("pin-needed").textContent;
    $("pin-error").dataset.code = problem.code;
    $("pin-field").hidden = false;
    focus("pin");
  }
  function hidePin() {
    $("pin").value = "";
    $("pin-field").hidden = true;
    $("pin-needed").textContent = "";
    $("pin-error").removeAttribute("data-code");
    fieldError("pin", "pin-error", "");
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
    var pin = $("pin-field").hidden ? "" : $("pin").value;
    $("pin").value = "";  // read once; never kept in the page
    if (!$("pin-field").hidden && pin.length < MIN_PIN) {
      var overCap = amountCap === null || amountCap === undefined || amount > amountCap || s.kind === "discount";
      if (pin || overCap) {
        fieldError("pin", "pin-error", M[pin ? "merchant.pin.short" : "merchant.pin.missing"]);
        focus("pin");
        return;
      }
    }
    fieldError("pin", "pin-error", "");
    var body = { token: token, scheme_id: s.scheme_id, amount: amount };
    var same = pendingBody && pendingBody.token === body.token &&
      pendingBody.scheme_id === body.scheme_id && pendingBody.amount === body.amount;
    if (!pendingKey || !same) pendingKey = newKey();  // a retry of the same redemption keeps its key
    pendingBody = body;  // without the PIN
    var sent = pin ? { token: body.token, scheme_id: body.scheme_id, amount: body.amount, pin: pin } : body;
    pin = "";
    busy = true;
    var button = $("redeem-button");
    button.disabled = true;
    button.textContent = M["merchant.redeeming"];
    call("/merchant/web/redemptions", sent, { "Idempotency-Key": pendingKey }).then(function (r) {
      pendingKey = null;
      hidePin();
      last = { id: r.redemption_id, unit: s.unit };
      showOk(r, s);
    }, function (problem) {
      if (KEEP_KEY.indexOf(problem.code) < 0) pendingKey = null;
      if (isPinProblem(problem)) { askPin(problem, s); return; }  // the amount stays as typed
      hidePin();
      showRefused(problem);
    }).finally(function () {
      sent = null;
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
      amountCap = null;
      hidePin();
      setManualPin(false);
      $("manual-code").value = "";
      $("result").removeAttribute("data-outcome");
      show("scan-view");
      focus("scan-title");
      startCamera();
    });
  });

  startCamera();
})();
