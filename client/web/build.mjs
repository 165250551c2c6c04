// Builds the web app (app/ → server/app/web, embedded in chatd) with
// esbuild, or with --tests the unit tests (test/ → test-dist/, run by
// `node --test`). Deterministic: the same sources give the same bytes, so
// scripts/test-web.sh can rebuild and compare with the committed bundle.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

if (process.argv.includes("--tests")) {
  const out = join(here, "test-dist");
  rmSync(out, { recursive: true, force: true });
  const entries = readdirSync(join(here, "test")).filter((f) => f.endsWith(".test.ts")).map((f) => join(here, "test", f));
  await build({
    entryPoints: entries,
    outdir: out,
    outExtension: { ".js": ".mjs" },
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    packages: "external",
    logLevel: "warning",
  });
} else {
  const out = join(here, "..", "..", "server", "app", "web");
  rmSync(out, { recursive: true, force: true });
  mkdirSync(join(out, "assets"), { recursive: true });
  await build({
    entryPoints: { app: join(here, "app", "main.ts") },
    outdir: join(out, "assets"),
    bundle: true,
    platform: "browser",
    format: "esm",
    target: "es2020",
    minify: true,
    legalComments: "none",
    charset: "utf8",
    logLevel: "warning",
  });
  copyFileSync(join(here, "app", "index.html"), join(out, "index.html"));
  copyFileSync(join(here, "app", "app.css"), join(out, "assets", "app.css"));
  copyFileSync(join(here, "app", "favicon.svg"), join(out, "assets", "favicon.svg"));
}
