// Copies Swagger UI (npm swagger-ui-dist, pinned in package.json) into api/static/build/docs/
// (gitignored), so that the API docs page /docs loads its script and style from the service
// itself, never from a CDN. Run by `npm run build:web` (which `make setup` does).
//
//   build/docs/swagger-ui-bundle.js   Swagger UI with its dependencies (one script)
//   build/docs/swagger-ui.css         its style sheet
//   build/docs/favicon-32x32.png      the page's icon
//   build/docs/LICENSE, NOTICE        Apache-2.0 licence and notice of swagger-ui-dist
//
// The page and its start script (api/static/js/docs.js) are the service's own: see api/docs.py.
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const source = path.join(root, "node_modules", "swagger-ui-dist");
const outdir = path.join(root, "api", "static", "build", "docs");
const files = ["swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE", "NOTICE"];

const pkg = JSON.parse(readFileSync(path.join(source, "package.json"), "utf8"));
mkdirSync(outdir, { recursive: true });
for (const name of files) {
  copyFileSync(path.join(source, name), path.join(outdir, name));
}
console.log(`${path.relative(root, outdir)}/  swagger-ui-dist ${pkg.version} (${files.length} files)`);
