// Bundles the browser code in web/src into api/static/build/ (gitignored) with esbuild:
//
//   build/scanner.js          the scanner component + jsQR as one IIFE: window.StadjerspasScanner
//   build/scanner-harness.js  glue for the test harness page api/static/scanner.html
//
// each minified with an external source map (.map). Run through `npm run build:web` (which
// `make setup` does); `node web/build.mjs --watch` rebuilds on change.
import * as esbuild from "esbuild";
import { fileURLToPath } from "node:url";
import { readFileSync } from "node:fs";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const outdir = path.join(root, "api", "static", "build");
const jsqr = JSON.parse(readFileSync(path.join(root, "node_modules", "jsqr", "package.json"), "utf8"));

const common = {
  bundle: true,
  format: "iife",
  minify: true,
  sourcemap: "linked",
  // Phones and tablets at counters: iOS/Safari 15+, Chrome/Android 90+, Firefox 90+. (esbuild
  // cannot lower destructuring for Safari 14, whose implementation it marks as buggy.)
  target: ["es2020", "chrome90", "firefox90", "safari15", "ios15"],
  legalComments: "linked",
  logLevel: "warning",
  absWorkingDir: root,
};

const builds = [
  {
    ...common,
    entryPoints: { scanner: "web/src/scanner.js" },
    globalName: "StadjerspasScanner",
    banner: {
      js: `/* Stadjerspas pass scanner (EUPL-1.2). Bundles jsQR ${jsqr.version} (${jsqr.license}, ${jsqr.repository}). */`,
    },
    outdir,
  },
  {
    ...common,
    entryPoints: { "scanner-harness": "web/src/harness.js" },
    outdir,
  },
];

if (process.argv.includes("--watch")) {
  for (const options of builds) {
    const context = await esbuild.context(options);
    await context.watch();
  }
  console.log(`watching web/src -> ${path.relative(root, outdir)}/`);
} else {
  const results = await Promise.all(builds.map((options) => esbuild.build({ ...options, metafile: true })));
  for (const result of results) {
    for (const [file, info] of Object.entries(result.metafile.outputs)) {
      if (!file.endsWith(".map")) console.log(`${file}  ${(info.bytes / 1024).toFixed(1)} KiB`);
    }
  }
}
