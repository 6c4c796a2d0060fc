// The browser entry point in a real browser: headless Chromium loads a page
// from another origin (the package's unbundled ESM, through an import map),
// which calls a real control plane over grpc-web with a bearer SSO token;
// the server's CORS list allows that origin. Skipped when Chromium is
// missing, unless CLAWPLANE_REQUIRE_TOOLS=1 (scripts/test installs it).
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve, sep } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { packageDir, startControlPlane, uniqueUser, userJwt, type ControlPlane } from "./support/control-plane.js";

function chromiumBin(): string | undefined {
  const candidates = [process.env["CLAWPLANE_CHROMIUM"], "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];
  return candidates.find((path): path is string => path !== undefined && path !== "" && existsSync(path));
}

const chromium = chromiumBin();
if (chromium === undefined && process.env["CLAWPLANE_REQUIRE_TOOLS"] === "1") {
  throw new Error("Chromium is required (CLAWPLANE_REQUIRE_TOOLS=1): install the Debian package chromium");
}

// The modules the page may load: the package and its dependencies.
const IMPORT_MAP = {
  imports: Object.fromEntries(
    ["@clawplane/client", "@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-web"].flatMap((name) => [
      [name, `/m/${name}`],
      [`${name}/`, `/m/${name}/`],
    ]),
  ),
};

// Runs in the page; reports every step to POST /result.
const PAGE_SCRIPT = `
import { ClawplaneError, TenantStatus, createClawplaneClient } from "@clawplane/client";
const params = JSON.parse(document.getElementById("params").textContent);
const steps = {};
const codeOf = async (call) => {
  try { await call(); return "OK"; }
  catch (err) { return err instanceof ClawplaneError ? err.code + ": " + err.message : "not a ClawplaneError: " + err; }
};
const drain = async (stream) => { for await (const _ of stream) {} };
try {
  try {
    createClawplaneClient({ baseUrl: params.baseUrl, auth: { sharedSecret: "x".repeat(20), userId: "u", userEmail: "" } });
    steps.sharedSecretRefused = false;
  } catch (err) { steps.sharedSecretRefused = /must not reach a browser/.test(err.message); }
  const alice = createClawplaneClient({ baseUrl: params.baseUrl, auth: { bearer: () => params.alice }, defaultTimeoutMs: 10000 });
  const created = await alice.createTenant({ plan: "free" });
  steps.created = created.created;
  steps.pending = created.tenant.status === TenantStatus.PENDING;
  const again = await alice.createTenant({ plan: "free" });
  steps.again = [again.created, again.tenant.id === created.tenant.id];
  steps.mine = (await alice.getMyTenant()).id === created.tenant.id;
  steps.logs = await codeOf(() => drain(alice.streamLogs(created.tenant.id, { tailLines: 5 })));
  const bob = createClawplaneClient({ baseUrl: params.baseUrl, auth: { bearer: params.bob } });
  steps.foreign = await codeOf(() => bob.getTenant(created.tenant.id));
  const expired = createClawplaneClient({ baseUrl: params.baseUrl, auth: { bearer: params.expired } });
  steps.expired = await codeOf(() => expired.getMyTenant());
  steps.deleted = (await alice.deleteTenant(created.tenant.id)).status === TenantStatus.DELETED;
  steps.afterDelete = await codeOf(() => alice.getMyTenant());
} catch (err) {
  steps.failure = String(err && err.stack || err);
}
await fetch("/result", { method: "POST", body: JSON.stringify(steps) });
`;

function page(params: Record<string, string>): string {
  const json = (value: unknown) => JSON.stringify(value).replace(/</g, "\\u003c");
  return `<!doctype html><html><head><meta charset="utf-8"><title>clawplane client</title>
<script type="importmap">${json(IMPORT_MAP)}</script>
<script type="application/json" id="params">${json(params)}</script>
<script type="module">${PAGE_SCRIPT}</script></head><body></body></html>`;
}

/**
 * Serves the page, the package's modules (a bare specifier under /m/ is
 * resolved as Node would and redirected to its file, so relative imports
 * resolve against the real path) and collects the page's result.
 */
function pageServer(html: () => string, onResult: (body: string) => void): Promise<Server> {
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://localhost");
    try {
      if (req.method === "POST" && url.pathname === "/result") {
        let body = "";
        req.on("data", (chunk: Buffer) => (body += chunk.toString("utf8")));
        req.on("end", () => {
          res.end("ok");
          onResult(body);
        });
        return;
      }
      if (url.pathname === "/") {
        res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(html());
        return;
      }
      if (url.pathname.startsWith("/m/")) {
        const file = fileURLToPath(import.meta.resolve(decodeURIComponent(url.pathname.slice(3))));
        res.writeHead(302, { location: `/fs${file.split(sep).map(encodeURIComponent).join("/")}` }).end();
        return;
      }
      if (url.pathname.startsWith("/fs/")) {
        const file = resolve(decodeURIComponent(url.pathname.slice(3)));
        if (!file.startsWith(packageDir + sep) || !file.endsWith(".js")) {
          res.writeHead(403).end();
          return;
        }
        res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" }).end(readFileSync(file));
        return;
      }
      res.writeHead(404).end();
    } catch (err) {
      res.writeHead(500).end(String(err));
    }
  });
  return new Promise((done) => server.listen(0, "127.0.0.1", () => done(server)));
}

let cp: ControlPlane | undefined;
let server: Server | undefined;
let browser: ChildProcess | undefined;
let profile: string | undefined;

function killBrowser(): void {
  if (browser?.pid !== undefined && browser.exitCode === null && browser.signalCode === null) {
    // Chromium's helper processes are in its process group (it is detached).
    try {
      process.kill(-browser.pid, "SIGKILL");
    } catch {
      browser.kill("SIGKILL");
    }
  }
}
// Also when the test process is told to stop (support/ exits on SIGTERM/SIGINT).
process.once("exit", killBrowser);

after(async () => {
  killBrowser();
  server?.close();
  await cp?.stop();
  if (profile !== undefined) rmSync(profile, { recursive: true, force: true });
});

test("in Chromium: grpc-web with a bearer token from another origin (CORS)", { skip: chromium === undefined && "Chromium is not installed" }, async () => {
  let result: (body: string) => void = () => {};
  const reported = new Promise<string>((done) => (result = done));
  let html = "";
  server = await pageServer(() => html, (body) => result(body));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  cp = await startControlPlane({ args: ["--cors-allowed-origins", origin] });
  const now = Math.floor(Date.now() / 1000);
  html = page({
    baseUrl: cp.baseUrl,
    alice: userJwt(cp, uniqueUser("browser-alice")),
    bob: userJwt(cp, uniqueUser("browser-bob")),
    expired: userJwt(cp, uniqueUser("browser-late"), { exp: now - 600 }),
  });

  profile = mkdtempSync(join(tmpdir(), "clawplane-chromium-"));
  browser = spawn(
    chromium as string,
    [
      "--headless=new",
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      `--user-data-dir=${profile}`,
      `${origin}/`,
    ],
    { detached: true, stdio: ["ignore", "ignore", "pipe"] },
  );
  let browserLog = "";
  browser.stderr?.on("data", (chunk: Buffer) => (browserLog = (browserLog + chunk.toString("utf8")).slice(-16 * 1024)));

  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the page reported nothing within 30 s; Chromium said:\n${browserLog}`)), 30_000);
  });
  const steps = JSON.parse(await Promise.race([reported, timeout]).finally(() => clearTimeout(timer))) as Record<string, unknown>;

  assert.equal(steps["failure"], undefined, `the page failed: ${String(steps["failure"])}\nserver:\n${cp.output()}`);
  const { logs, foreign, expired, afterDelete, ...flags } = steps;
  assert.deepEqual(flags, {
    sharedSecretRefused: true,
    created: true,
    pending: true,
    again: [false, true],
    mine: true,
    deleted: true,
  });
  assert.match(String(logs), /^FAILED_PRECONDITION: .*not placed on a host/);
  assert.match(String(foreign), /^NOT_FOUND: /);
  assert.match(String(expired), /^UNAUTHENTICATED: .*expired/);
  assert.match(String(afterDelete), /^NOT_FOUND: /);
});
