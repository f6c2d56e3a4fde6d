// Starts Swagger UI on the API docs page (/docs, api/docs.py). Swagger UI itself is served by this
// service (api/static/build/docs/, from npm swagger-ui-dist); nothing on the page comes from
// another host. No inline script: the page's Content-Security-Policy allows 'self' only.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    // The validator badge would send the document to validator.swagger.io: off.
    validatorUrl: null,
    presets: [window.SwaggerUIBundle.presets.apis, window.SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
})();
