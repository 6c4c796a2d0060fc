// `npm run pack:check`: what an app gets from `npm pack`. Packs the package
// (dist/ must be built), installs the tarball into a scratch project (its
// dependencies from the npm cache), type-checks test/consumer/ there as a
// web app (bundler resolution, no Node types) and as a Node backend
// (nodenext), and imports both entry points with Node.
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const scratch = mkdtempSync(join(tmpdir(), "clawplane-pack-"));
const run = (cmd, args, cwd, stdout = "inherit") =>
  String(execFileSync(cmd, args, { cwd, stdio: ["ignore", stdout, "inherit"] }) ?? "");
// The npm that runs this script (on this same Node), else the one on PATH.
const npm = (args, cwd, stdout) =>
  process.env.npm_execpath
    ? run(process.execPath, [process.env.npm_execpath, ...args], cwd, stdout)
    : run("npm", args, cwd, stdout);
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));

try {
  const packed = npm(["pack", "--silent", "--ignore-scripts", "--pack-destination", scratch], root, "pipe");
  const tarball = join(scratch, packed.trim().split("\n").pop() ?? "");
  const app = join(scratch, "app");
  mkdirSync(app);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  // The tarball, and for the Node backend the same @types/node the package uses.
  const types = `@types/node@${pkg.devDependencies["@types/node"]}`;
  npm(["install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error", tarball, types], app, "ignore");
  for (const file of readdirSync(join(root, "test", "consumer"))) copyFileSync(join(root, "test", "consumer", file), join(app, file));
  const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
  for (const config of ["tsconfig.bundler.json", "tsconfig.nodenext.json"]) run(process.execPath, [tsc, "-p", config], app);
  const probe =
    'const web = await import("@clawplane/client"); const node = await import("@clawplane/client/node");' +
    'if (typeof web.createClawplaneClient !== "function" || typeof node.Http2SessionManager !== "function") process.exit(1);';
  run(process.execPath, ["--input-type=module", "-e", probe], app);
  console.log("pack:check: the packed package installs, type-checks as a web app and a Node backend, and imports");
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
