// Admin pages: forms with data-confirm ask before they are sent (replacing a card revokes the
// old one; confirming a payout records it on chain). Without JavaScript the form is sent as is.
(function () {
  "use strict";
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
})();
