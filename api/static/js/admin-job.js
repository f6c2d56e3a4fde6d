// Admin job page: polls the job's status until it is done or failed, then shows the result
// (issued lines and amount, or the problem with its errors by line) and, once the index has the
// job's transactions, the link to the report. Texts come from data-t-* attributes (NL/EN).
(function () {
  "use strict";
  var box = document.getElementById("job");
  if (!box) return;
  var progress = document.getElementById("job-progress");
  var count = document.getElementById("job-count");
  var statusLine = document.getElementById("job-status");
  var resultBox = document.getElementById("job-result");
  var problemBox = document.getElementById("job-problem");
  var interval = Number(box.dataset.pollMs) || 500;
  var failures = 0;
  var lastStatus = "";

  function text(name, values) {
    var value = box.dataset["t" + name.charAt(0).toUpperCase() + name.slice(1)] || "";
    Object.keys(values || {}).forEach(function (key) {
      value = value.split("{" + key + "}").join(String(values[key]));
    });
    return value;
  }

  function set(id, value) {
    document.getElementById(id).textContent = value;
  }

  function showResult(job) {
    var result = job.result || {};
    set("result-scheme", String(result.scheme_id === undefined ? "" : result.scheme_id));
    set("result-lines", String(result.lines === undefined ? result.holder_count || "" : result.lines));
    set("result-total", String(result.total_amount === undefined ? "" : result.total_amount));
    var txs = result.transactions || (result.tx_hash ? [result.tx_hash] : []);
    set("result-transactions", String(txs.length));
    resultBox.hidden = false;
    if (job.indexed) {
      document.getElementById("result-indexing").hidden = true;
      var link = document.getElementById("report-link");
      link.href = job.report;
      document.getElementById("result-report").hidden = false;
      box.dataset.indexed = "true";
    }
  }

  function showProblem(job) {
    var problem = job.problem || {};
    set("problem-detail", (problem.detail || "") + (problem.code ? " (" + problem.code + ")" : ""));
    var errors = problem.errors || [];
    if (errors.length) {
      var table = document.getElementById("problem-errors");
      var body = table.querySelector("tbody");
      errors.forEach(function (error) {
        var row = document.createElement("tr");
        var line = document.createElement("td");
        line.textContent = String(error.line);
        var message = document.createElement("td");
        message.textContent = String(error.message);
        row.appendChild(line);
        row.appendChild(message);
        body.appendChild(row);
      });
      table.hidden = false;
    }
    problemBox.hidden = false;
  }

  function render(job) {
    progress.max = Math.max(job.total, 1);
    progress.value = job.done;
    count.textContent = text("count", { done: job.done, total: job.total });
    if (job.status !== lastStatus) {
      statusLine.textContent = text(job.status);
      lastStatus = job.status;
      if (job.status === "done") {
        showResult(job);
        document.getElementById("job-result-title").focus();
      } else if (job.status === "failed") {
        showProblem(job);
        document.getElementById("job-problem-title").focus();
      }
    } else if (job.status === "done") {
      showResult(job);
    }
    box.dataset.status = job.status;
    box.dataset.done = String(job.done);
    box.dataset.total = String(job.total);
  }

  function poll() {
    fetch(box.dataset.statusUrl, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (job) {
        failures = 0;
        render(job);
        var finished = job.status === "failed" || (job.status === "done" && job.indexed);
        if (!finished) window.setTimeout(poll, interval);
      })
      .catch(function () {
        failures += 1;
        if (failures >= 5) {
          statusLine.textContent = text("pollFailed");
          return;
        }
        window.setTimeout(poll, interval * 2);
      });
  }
  poll();
})();
