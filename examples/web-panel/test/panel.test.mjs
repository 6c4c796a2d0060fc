// The "My OpenClaw" panel in headless Chromium against a real control plane,
// a real host agent and the real OpenClaw: the built app (vite build) is
// served on 127.0.0.1, `clawplane serve` allows its origin (CORS) and
// verifies HS256 SSO tokens, an agent joins with a join token and runs the
// tenants' OpenClaw gateways. Through the UI the user creates an instance,
// sees it RUNNING and its log, chats with its agent (the tenant's model is
// pointed at a fake OpenAI-compatible server this test runs: the answer
// streams in, the conversation continues, Stop aborts a turn), restarts it,
// deletes it after confirming and is back to "no instance". A screenshot of
// each state goes to
// ${CLAWPLANE_ARTIFACTS:-examples/web-panel/test-artifacts}/web-panel-*.png.
//
// Needs the debug binaries (target/debug: clawplane, clawplane-agent; or
// CLAWPLANE_BIN_DIR), OpenClaw (CLAWPLANE_OPENCLAW_BIN, default
// /var/cache/clawplane/bin/openclaw), Chromium (CLAWPLANE_CHROMIUM, default
// /usr/bin/chromium) and root for the tenants' own OS users (without root
// the agent runs them as this user, --no-tenant-users). Every process it
// starts is ended at the end, pass or fail, gateways included: they run in
// their own process groups as other users, so after the agent stops every
// process whose command line, environment, working directory or executable
// points into this test's temp dir is ended too.
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import fs from "node:fs";
import { createServer } from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { createClawplaneClient } from "@clawplane/client";
import puppeteer from "puppeteer-core";
import { checkHistoryAndUsage } from "./history-usage.steps.mjs";

const HERE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const REPO = path.resolve(HERE, "../..");
const BIN_DIR = path.resolve(process.env.CLAWPLANE_BIN_DIR ?? path.join(REPO, "target/debug"));
const OPENCLAW = process.env.CLAWPLANE_OPENCLAW_BIN || "/var/cache/clawplane/bin/openclaw";
const CHROMIUM = process.env.CLAWPLANE_CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = path.resolve(process.env.CLAWPLANE_ARTIFACTS || path.join(HERE, "test-artifacts"));
const IS_ROOT = process.getuid?.() === 0;

// The SSO the control plane trusts (HS256 here; RS256/ES256 and JWKS work the same way).
const JWT_SECRET = randomBytes(32).toString("hex");
const JWT_ISSUER = "https://sso.test";
const JWT_AUDIENCE = "clawplane";
const SHARED_SECRET = randomBytes(24).toString("hex");

const SECOND = 1_000;
const MINUTE = 60 * SECOND;
// A tenant takes ~35 s to become RUNNING and ~25 s to restart on a 2-core
// machine; these bounds leave room for a machine busy with other builds.
const RUNNING_WITHIN = 6 * MINUTE;
const RESTARTED_WITHIN = 5 * MINUTE;
// One chat turn on the real gateway takes ~1-2 s (plus a few seconds for
// `done`, which waits for the transcript to sync).
const ANSWERED_WITHIN = 2 * MINUTE;
// What the fake model answers, one word per SSE event.
const FAKE_REPLY = "pong from the fake model";

// ---------------------------------------------------------------- helpers

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
/** `promise`'s value, or "timeout" after `ms` (the timer does not outlive the race). */
async function within(promise, ms) {
  let timer;
  const timeout = new Promise((resolve) => (timer = setTimeout(resolve, ms, "timeout")));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
const log = (...args) => console.log(`[panel ${new Date().toISOString().slice(11, 19)}]`, ...args);

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Polls `check` every `every` ms until it returns a truthy value, for at most `limit` ms. */
async function eventually(what, limit, check, every = 250) {
  const started = Date.now();
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() - started > limit) {
      throw new Error(`timed out after ${Math.round(limit / SECOND)} s waiting for ${what}${last ? `: ${last.message}` : ""}`);
    }
    await sleep(every);
  }
}

function run(file, args, options = {}) {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: 2 * MINUTE, maxBuffer: 16 << 20, ...options }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${path.basename(file)} ${args.join(" ")} failed: ${err.message}\n${stdout}${stderr}`));
      else resolve(`${stdout}${stderr}`);
    });
  });
}

/** The environment without the caller's CLAWPLANE_* settings, plus `extra`. */
function cleanEnv(extra) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith("CLAWPLANE_")));
  return { ...env, ...extra };
}

const b64url = (value) => Buffer.from(value).toString("base64url");
/** An SSO token as the product's identity provider would issue it. */
function signJwt(claims) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(claims));
  const signature = createHmac("sha256", JWT_SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}

async function fetchJson(url, init = {}) {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(30 * SECOND) });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: res.status, body };
}

// ------------------------------------------------------------ processes

/** Processes this test started, ended in reverse order at the end. */
const children = [];

function startProcess(name, file, args, { env, logFile, cwd } = {}) {
  const out = fs.openSync(logFile, "a");
  const child = spawn(file, args, { env, cwd, stdio: ["ignore", out, out], detached: true });
  fs.closeSync(out);
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  const entry = { name, child, exited, logFile };
  children.push(entry);
  return entry;
}

const alive = (entry) => entry.child.exitCode === null && entry.child.signalCode === null;

/** SIGTERM, then SIGKILL after `grace` ms; waits for the exit (bounded). */
async function stopProcess(entry, grace) {
  if (!alive(entry)) return;
  entry.child.kill("SIGTERM");
  if ((await within(entry.exited, grace)) === "timeout") {
    log(`${entry.name} did not stop within ${grace / SECOND} s of SIGTERM: SIGKILL`);
    try {
      process.kill(-entry.child.pid, "SIGKILL");
    } catch {
      entry.child.kill("SIGKILL");
    }
    await within(entry.exited, 10 * SECOND);
  }
}

/** `needle` occurs in `text` as a whole path (followed by '/', NUL, space, ':', '=', '"' or the end). */
function mentionsPath(text, needle) {
  let at = text.indexOf(needle);
  while (at !== -1) {
    const next = text[at + needle.length];
    if (next === undefined || "/\0 :=\"".includes(next)) return true;
    at = text.indexOf(needle, at + 1);
  }
  return false;
}

/**
 * Live processes (not this one, nor `except`) whose command line,
 * environment, cwd or executable point into `root`.
 */
function processesUnder(root, except = []) {
  const found = [];
  for (const name of fs.readdirSync("/proc")) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid === process.pid || except.includes(pid)) continue;
    const read = (file) => {
      try {
        return fs.readFileSync(`/proc/${pid}/${file}`, "latin1");
      } catch {
        return "";
      }
    };
    const link = (file) => {
      try {
        return fs.readlinkSync(`/proc/${pid}/${file}`);
      } catch {
        return "";
      }
    };
    const stat = read("stat");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    if (stat === "" || state === "Z" || state === "X") continue;
    const cmdline = read("cmdline");
    if ([cmdline, read("environ"), link("cwd"), link("exe")].some((text) => mentionsPath(text, root))) {
      found.push({ pid, command: cmdline.replaceAll("\0", " ").trim() });
    }
  }
  return found;
}

function signalAll(processes, signal) {
  for (const { pid } of processes) {
    for (const target of [-pid, pid]) {
      try {
        process.kill(target, signal); // -pid: its process group, if it leads one
      } catch {
        // gone already, or not a group leader
      }
    }
  }
}

/** Ends every process pointing into `root`; returns those still running afterwards. */
async function endProcessesUnder(root) {
  const found = processesUnder(root);
  if (found.length === 0) return [];
  log(`ending ${found.length} leftover process(es) under ${root}:`, found.map((p) => `${p.pid} ${p.command.slice(0, 120)}`));
  signalAll(found, "SIGTERM");
  const gone = async (limit) => {
    const started = Date.now();
    while (Date.now() - started < limit) {
      if (processesUnder(root).length === 0) return true;
      await sleep(100);
    }
    return false;
  };
  if (!(await gone(5 * SECOND))) {
    signalAll(processesUnder(root), "SIGKILL");
    await gone(5 * SECOND);
  }
  return processesUnder(root);
}

// ---------------------------------------------------------- static server

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".map": "application/json",
  ".json": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
};

/** Serves `dir` (the built app) on 127.0.0.1; unknown paths get index.html. */
async function serveStatic(dir) {
  const server = createServer((req, res) => {
    let file;
    try {
      file = path.join(dir, path.normalize(decodeURIComponent(new URL(req.url ?? "/", "http://app").pathname)));
    } catch {
      file = "";
    }
    if (!file.startsWith(dir + path.sep) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) file = path.join(dir, "index.html");
    res.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream", "cache-control": "no-store" });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}

// -------------------------------------------------------------- fake model

/**
 * A tiny OpenAI-compatible model server on 127.0.0.1 (as e2e's `fake_model`):
 * every request (OpenClaw sends POST /v1/chat/completions) answers `reply`
 * with usage 42 prompt / 7 completion tokens, streamed as SSE when asked
 * (OpenClaw always asks, with include_usage), one word per event, 20 ms
 * apart. A request whose messages contain `[hold]` gets the first word,
 * then only keep-alive comments until its client goes away (counted in `aborted`). Request bodies are kept in
 * `requests`; `events` emits "request" and "aborted".
 */
async function startFakeModel(reply) {
  const model = { requests: [], aborted: 0, events: new EventEmitter(), server: undefined, port: 0 };
  const usage = { prompt_tokens: 42, completion_tokens: 7, total_tokens: 49 };
  const chunk = (delta, finish) =>
    `data: ${JSON.stringify({ id: "chatcmpl-fake", object: "chat.completion.chunk", created: 1, model: "fake-model", choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
  model.server = createServer((req, res) => {
    const parts = [];
    req.on("data", (part) => parts.push(part));
    req.on("end", async () => {
      let body = {};
      try {
        body = JSON.parse(Buffer.concat(parts).toString("utf8"));
      } catch {
        // answered like any other request
      }
      model.requests.push(body);
      model.events.emit("request", body);
      if (body.stream !== true) {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ id: "chatcmpl-fake", object: "chat.completion", created: 1, model: "fake-model", usage,
          choices: [{ index: 0, finish_reason: "stop", message: { role: "assistant", content: reply } }] }));
        return;
      }
      const messages = Array.isArray(body.messages) ? body.messages : [];
      // Anywhere in the messages: OpenClaw may add its own context message after the user's.
      const hold = JSON.stringify(messages).includes("[hold]");
      log(`fake model: request ${model.requests.length}, ${messages.length} message(s), the last ${JSON.stringify(messages.at(-1)).slice(0, 160)}${hold ? " (held)" : ""}`);
      let gone = false;
      res.on("close", () => {
        if (!res.writableFinished) {
          gone = true;
          if (hold) {
            model.aborted++;
            model.events.emit("aborted");
          }
        }
      });
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "close" });
      const words = reply.match(/[^ ]+ ?/g) ?? [reply];
      for (const [i, word] of words.entries()) {
        if (gone) return;
        res.write(chunk(i === 0 ? { role: "assistant", content: word } : { content: word }, null));
        if (hold) {
          // Keep-alives until the client goes away (at most 2 minutes).
          for (let n = 0; n < 1_200 && !gone; n++) {
            await sleep(100);
            if (!gone) res.write(": keep-alive\n\n");
          }
          if (!gone) res.end();
          return;
        }
        await sleep(20);
      }
      if (gone) return;
      res.write(chunk({}, "stop"));
      if (body.stream_options?.include_usage === true) {
        res.write(`data: ${JSON.stringify({ id: "chatcmpl-fake", object: "chat.completion.chunk", created: 1, model: "fake-model", choices: [], usage })}\n\n`);
      }
      res.end("data: [DONE]\n\n");
    });
  });
  await new Promise((resolve) => model.server.listen(0, "127.0.0.1", resolve));
  model.port = model.server.address().port;
  return model;
}

/** Resolves once `check()` is truthy, checked now and on each of `model`'s events; bounded. */
function modelSees(model, what, limit, check) {
  return new Promise((resolve, reject) => {
    const recheck = () => {
      const value = check();
      if (!value) return;
      done();
      resolve(value);
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`timed out after ${Math.round(limit / SECOND)} s waiting for the fake model to see ${what}`));
    }, limit);
    const done = () => {
      clearTimeout(timer);
      model.events.off("request", recheck).off("aborted", recheck);
    };
    model.events.on("request", recheck).on("aborted", recheck);
    recheck();
  });
}

// ----------------------------------------------------------------- browser

/** What the section shows, for failure messages. */
async function pageText(page) {
  try {
    const text = await page.$eval("body", (el) => el.innerText);
    return text.replace(/\s+\n/g, "\n").slice(0, 2_000);
  } catch (err) {
    return `(page unreadable: ${err.message})`;
  }
}

/** Waits until `fn` (run in the page) returns something truthy; bounded; names what it waited for. */
async function waitInPage(page, what, timeout, fn, ...args) {
  try {
    const handle = await page.waitForFunction(fn, { timeout, polling: 500 }, ...args);
    return await handle.jsonValue();
  } catch (err) {
    throw new Error(`${what}: not seen within ${Math.round(timeout / SECOND)} s (${err.message})\npage shows:\n${await pageText(page)}`);
  }
}

/** The instance's status once it is RUNNING and idle, or the failure the page shows. */
function settledStatus() {
  const failure = document.querySelector("[data-testid=action-error], [data-testid=error]");
  if (failure) return { error: failure.textContent };
  const badge = document.querySelector("[data-testid=instance-status]");
  if (!badge) return null;
  const { status, busy } = badge.dataset;
  if (status === "FAILED") {
    return { error: `FAILED: ${document.querySelector("[data-testid=instance-status-message]")?.textContent}` };
  }
  return status === "RUNNING" && busy === "" ? { status } : null;
}

/** The `index`-th assistant message once it is complete (or the chat's error). */
function chatAnswer(index) {
  const error = document.querySelector("[data-testid=chat-error]");
  if (error) return { error: error.textContent };
  const answer = document.querySelectorAll("[data-testid=chat-message][data-role=assistant]")[index];
  if (!answer || answer.dataset.state === "streaming") return null;
  if (document.querySelector("[data-testid=chat]")?.dataset.state !== "idle") return null;
  return {
    state: answer.dataset.state,
    deltas: Number(answer.dataset.deltas),
    text: answer.querySelector("[data-testid=chat-message-text]")?.textContent,
    sessionKey: document.querySelector("[data-testid=chat]").dataset.sessionKey,
    // `done` came with a sessionId (the transcript had synced), and how often the message was re-sent meanwhile.
    synced: document.querySelector("[data-testid=chat]").dataset.sessionSynced,
    retries: Number(answer.dataset.retries),
  };
}

/** Types `text` into the chat box and presses Send. */
async function sendInChat(page, text) {
  await page.waitForSelector("[data-testid=chat-input]:not([disabled])", { timeout: 30 * SECOND });
  await page.type("[data-testid=chat-input]", text);
  await page.waitForSelector("[data-testid=chat-send]:not([disabled])", { timeout: 10 * SECOND });
  await page.click("[data-testid=chat-send]");
}

/** Like waitInPage, but re-checks on every DOM change (streamed text) instead of on a timer. */
async function waitInPageOnChange(page, what, timeout, fn, ...args) {
  try {
    const handle = await page.waitForFunction(fn, { timeout, polling: "mutation" }, ...args);
    return await handle.jsonValue();
  } catch (err) {
    throw new Error(`${what}: not seen within ${Math.round(timeout / SECOND)} s (${err.message})\npage shows:\n${await pageText(page)}`);
  }
}

// -------------------------------------------------------------------- test

test("My OpenClaw panel: create, RUNNING, logs, chat, restart, delete in Chromium against the real stack", { timeout: 30 * MINUTE }, async (t) => {
  for (const [what, file] of [
    ["clawplane", path.join(BIN_DIR, "clawplane")],
    ["clawplane-agent", path.join(BIN_DIR, "clawplane-agent")],
    ["OpenClaw (CLAWPLANE_OPENCLAW_BIN)", OPENCLAW],
    ["Chromium (CLAWPLANE_CHROMIUM)", CHROMIUM],
  ]) {
    assert.ok(fs.existsSync(file), `${what} is missing at ${file}`);
  }
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  for (const old of fs.readdirSync(ARTIFACTS).filter((f) => f.startsWith("web-panel-"))) {
    fs.rmSync(path.join(ARTIFACTS, old), { force: true });
  }

  // Everything of this run lives here; tenant users must be able to traverse it.
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "clawplane-web-panel-"));
  fs.chmodSync(root, 0o711);
  const cpData = path.join(root, "cp");
  const agentState = path.join(root, "agent");
  const tenantsDir = path.join(root, "tenants");
  const consoleLog = [];
  const state = { browser: undefined, page: undefined, api: undefined, bearer: undefined, tenantMayExist: false };
  let broken = false;
  let shot = 0;

  // The chat's shots are named without a number (web-panel-chat.png), so the numbered ones keep their names.
  const namedScreenshot = async (name) => {
    const file = path.join(ARTIFACTS, `web-panel-${name}.png`);
    await state.page.screenshot({ path: file, fullPage: true });
    log(`screenshot ${file}`);
  };
  const screenshot = async (name) => {
    const file = path.join(ARTIFACTS, `web-panel-${String(++shot).padStart(2, "0")}-${name}.png`);
    await state.page.screenshot({ path: file, fullPage: true });
    log(`screenshot ${file}`);
  };

  /** A subtest that is skipped once an earlier one failed (the later ones depend on it). */
  const step = (name, timeout, fn) =>
    t.test(name, { timeout, skip: broken && "an earlier step failed" }, async () => {
      const started = Date.now();
      try {
        await fn();
        log(`${name}: ${((Date.now() - started) / SECOND).toFixed(1)} s`);
      } catch (err) {
        broken = true;
        if (state.page) await state.page.screenshot({ path: path.join(ARTIFACTS, "web-panel-failure.png"), fullPage: true }).catch(() => {});
        throw err;
      }
    });

  // Runs once; a second call (a signal during a failure's cleanup, SIGINT then the runner's SIGTERM) waits for the first.
  let cleaning;
  const cleanup = () => (cleaning ??= cleanUp());
  const cleanUp = async () => {
    const started = Date.now();
    if (state.browser) {
      const proc = state.browser.process();
      await within(state.browser.close().catch(() => {}), 10 * SECOND);
      if (proc && proc.exitCode === null) proc.kill("SIGKILL");
    }
    // A tenant left by a failed run: delete it, so the agent removes its gateway and OS user.
    const cp = children.find((c) => c.name === "clawplane serve");
    const agent = children.find((c) => c.name === "clawplane-agent");
    if (state.tenantMayExist && cp && alive(cp) && state.bearer) {
      try {
        const res = await fetchJson(`${state.api}/api/tenants/me`, { method: "DELETE", headers: { authorization: `Bearer ${state.bearer}` } });
        log(`cleanup: DELETE /api/tenants/me -> ${res.status}`);
        if (res.status === 200 && agent && alive(agent)) {
          const gateways = () => processesUnder(tenantsDir, [agent.child.pid]);
          await eventually("the tenant's gateway to stop", MINUTE, () => gateways().length === 0, 500).catch((err) =>
            log(`cleanup: ${err.message}`),
          );
        }
      } catch (err) {
        log(`cleanup: could not delete the tenant: ${err.message}`);
      }
    }
    // The agent first (it may take up to 30 s to finish in-flight work), then the rest.
    for (const entry of [...children].reverse()) {
      await stopProcess(entry, entry.name === "clawplane-agent" ? 45 * SECOND : 15 * SECOND);
    }
    for (const server of [state.staticServer, state.fakeModel?.server]) {
      if (!server) continue;
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
    state.client?.close();
    // Gateways outlive the agent by design (a restarted agent adopts them), as other users, in their own groups.
    const survivors = await endProcessesUnder(root);
    for (const entry of children) {
      try {
        fs.copyFileSync(entry.logFile, path.join(ARTIFACTS, `web-panel-${path.basename(entry.logFile)}`));
      } catch {
        // never started
      }
    }
    fs.writeFileSync(path.join(ARTIFACTS, "web-panel-browser-console.log"), consoleLog.join("\n") + "\n");
    if (process.env.CLAWPLANE_KEEP_TMP === "1") log(`kept ${root}`);
    else fs.rmSync(root, { recursive: true, force: true, maxRetries: 3 });
    log(`cleanup: ${((Date.now() - started) / SECOND).toFixed(1)} s`);
    return survivors;
  };
  // An interrupted run (Ctrl-C, the script's timeout) cleans up too.
  const onSignal = (signal) => {
    // The runner may be gone already (Ctrl-C reaches it too): its pipe must not end us mid-cleanup.
    process.stdout.on("error", () => {});
    process.stderr.on("error", () => {});
    log(`${signal}: cleaning up`);
    cleanup().finally(() => process.exit(130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  try {
    let appUrl;
    let agentPort;
    let jwt;
    let sub;

    await step("builds the app (vite build) and serves dist/ on 127.0.0.1", 3 * MINUTE, async () => {
      await run(process.execPath, [path.join(HERE, "node_modules/vite/bin/vite.js"), "build", "--logLevel", "warn"], { cwd: HERE });
      state.staticServer = await serveStatic(path.join(HERE, "dist"));
      appUrl = `http://127.0.0.1:${state.staticServer.address().port}`;
      const index = await fetch(appUrl, { signal: AbortSignal.timeout(10 * SECOND) }).then((r) => r.text());
      assert.match(index, /<div id="root">/);
    });

    await step("starts clawplane serve (CORS for the app's origin, HS256 SSO)", 2 * MINUTE, async () => {
      const apiPort = await freePort();
      agentPort = await freePort();
      state.api = `http://127.0.0.1:${apiPort}`;
      fs.mkdirSync(cpData, { recursive: true });
      const config = path.join(root, "clawplane.toml");
      // Short host heartbeats, as the e2e tests use, so the host is online at
      // once; model servers on loopback allowed (the fake model of the chat).
      fs.writeFileSync(config, '[hosts]\nheartbeat_interval = "1s"\nlease = "4s"\n\n[models]\nallowed_cidrs = ["127.0.0.0/8"]\n');
      const cp = startProcess(
        "clawplane serve",
        path.join(BIN_DIR, "clawplane"),
        [
          "serve",
          "--config", config,
          "--data-dir", cpData,
          "--api-listen", `127.0.0.1:${apiPort}`,
          "--agent-listen", `127.0.0.1:${agentPort}`,
          "--base-domain", "claw.test",
          "--cors-allowed-origins", appUrl,
        ],
        {
          env: cleanEnv({
            CLAWPLANE_SHARED_SECRET: SHARED_SECRET,
            CLAWPLANE_JWT_HS256_SECRET: JWT_SECRET,
            CLAWPLANE_JWT_ISSUER: JWT_ISSUER,
            CLAWPLANE_JWT_AUDIENCE: JWT_AUDIENCE,
          }),
          logFile: path.join(root, "cp.log"),
        },
      );
      await eventually("the API's /api/health", MINUTE, async () => {
        if (!alive(cp)) throw new Error(`clawplane serve exited:\n${fs.readFileSync(cp.logFile, "utf8").slice(-3_000)}`);
        return (await fetch(`${state.api}/api/health`, { signal: AbortSignal.timeout(2 * SECOND) })).ok;
      });
    });

    await step("joins a host agent and runs it with the real OpenClaw", 3 * MINUTE, async () => {
      const adminToken = fs.readFileSync(path.join(cpData, "admin-token"), "utf8").trim();
      const operator = ["--server", state.api, "--data-dir", cpData];
      const created = await run(
        path.join(BIN_DIR, "clawplane"),
        ["token", "create", ...operator, "--ttl", "10m", "--control-plane", `https://127.0.0.1:${agentPort}`],
        { env: cleanEnv({}) },
      );
      const [, token, pin] = created.match(/--token (\S+) --ca-pin (\S+)/) ?? [];
      assert.ok(token && pin, `no join command in:\n${created}`);
      const agentBin = path.join(BIN_DIR, "clawplane-agent");
      await run(agentBin, ["join", "--control-plane", `https://127.0.0.1:${agentPort}`, "--token", token, "--ca-pin", pin, "--state-dir", agentState], {
        env: cleanEnv({}),
      });
      // Gateways listen on base, base+150, ...: a block of ports no other test run is likely to use.
      const basePort = Math.min(Math.max(Math.floor((await freePort()) / 1000) * 1000, 21_000), 60_000);
      const agent = startProcess(
        "clawplane-agent",
        agentBin,
        [
          "run",
          "--state-dir", agentState,
          "--openclaw-bin", OPENCLAW,
          "--tenants-dir", tenantsDir,
          "--gateway-base-port", String(basePort),
          ...(IS_ROOT ? [] : ["--no-tenant-users"]),
          // The tenant proxy carries SendMessage's turns (the chat) from the control plane to the gateway.
          "--proxy-listen", "127.0.0.1:0",
        ],
        { env: cleanEnv({ RUST_LOG: "info" }), logFile: path.join(root, "agent.log") },
      );
      await eventually("the host to be connected (GET /api/hosts)", 2 * MINUTE, async () => {
        if (!alive(agent)) throw new Error(`the agent exited:\n${fs.readFileSync(agent.logFile, "utf8").slice(-3_000)}`);
        const { status, body } = await fetchJson(`${state.api}/api/hosts`, { headers: { authorization: `Bearer ${adminToken}` } });
        return status === 200 && body.hosts?.some((host) => host.connected === true);
      }, 500);
    });

    await step("a bad token shows the server's UNAUTHENTICATED message, then the paste field signs in", 2 * MINUTE, async () => {
      state.browser = await puppeteer.launch({
        executablePath: CHROMIUM,
        headless: true,
        userDataDir: path.join(root, "chromium"),
        args: [...(IS_ROOT ? ["--no-sandbox"] : []), "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run", "--no-default-browser-check"],
        defaultViewport: { width: 1000, height: 900 },
        protocolTimeout: 2 * MINUTE,
        // Signals are ours: the cleanup below closes the browser and ends everything else too.
        handleSIGINT: false,
        handleSIGTERM: false,
        handleSIGHUP: false,
      });
      const page = (state.page = await state.browser.newPage());
      page.on("console", (msg) => consoleLog.push(`${msg.type()}: ${msg.text()}`));
      page.on("pageerror", (err) => consoleLog.push(`pageerror: ${err.message}`));
      page.on("requestfailed", (req) => consoleLog.push(`requestfailed: ${req.url()} ${req.failure()?.errorText}`));

      sub = `panel-${randomBytes(4).toString("hex")}`;
      const now = Math.floor(Date.now() / 1000);
      jwt = signJwt({ sub, email: `${sub}@example.com`, teams: [], iss: JWT_ISSUER, aud: JWT_AUDIENCE, iat: now, exp: now + 2 * 3600 });
      state.bearer = jwt;

      // `?token=` stands in for the SSO session; a token the SSO never signed is refused.
      const forged = signJwt({ sub, iss: JWT_ISSUER, aud: JWT_AUDIENCE, iat: now, exp: now + 3600 }).replace(/\.[^.]+$/, ".bm90LXRoZS1zaWduYXR1cmU");
      await page.goto(`${appUrl}/?api=${encodeURIComponent(state.api)}&token=${forged}`, { waitUntil: "load", timeout: MINUTE });
      const code = await waitInPage(page, "the UNAUTHENTICATED error", MINUTE, () =>
        document.querySelector("[data-testid=error]")?.dataset.code,
      );
      assert.equal(code, "UNAUTHENTICATED");
      assert.ok(!page.url().includes("token="), "the token is taken out of the address bar");
      await screenshot("bad-token");

      await page.click("[data-testid=error-sign-in]");
      await page.waitForSelector("[data-testid=token-input]", { timeout: 10 * SECOND });
      await page.type("[data-testid=token-input]", jwt);
      await page.click("[data-testid=token-submit]");
      await waitInPage(page, "the signed-in user", 30 * SECOND, (email) =>
        document.querySelector("[data-testid=signed-in-as]")?.textContent === email, `${sub}@example.com`);
    });

    await step("shows 'no instance' with the plans from UsageService.ListPlans", 2 * MINUTE, async () => {
      const page = state.page;
      await page.waitForSelector("[data-testid=no-instance] [data-testid=create-instance]", { timeout: MINUTE });
      const plans = await page.$$eval("[data-testid^=plan-option-]", (els) => els.map((el) => el.dataset.testid.replace("plan-option-", "")));
      assert.deepEqual(plans, ["free", "pro", "enterprise"]);
      await screenshot("no-instance");
    });

    await step("creates an instance and waits until it is RUNNING", RUNNING_WITHIN + MINUTE, async () => {
      const page = state.page;
      await page.click("[data-testid=plan-option-free]");
      await page.click("[data-testid=create-instance]");
      state.tenantMayExist = true;
      const first = await waitInPage(page, "the new instance", MINUTE, () =>
        document.querySelector("[data-testid=instance-status]")?.dataset.status,
      );
      log(`instance created, status ${first}`);
      await screenshot(`created-${first.toLowerCase()}`);
      const started = Date.now();
      const settled = await waitInPage(page, "status RUNNING", RUNNING_WITHIN, settledStatus);
      assert.equal(settled.error, undefined, settled.error);
      log(`RUNNING after ${((Date.now() - started) / SECOND).toFixed(1)} s`);
      const slug = await page.$eval("[data-testid=instance-slug]", (el) => el.textContent);
      const url = await page.$eval("[data-testid=instance-url]", (el) => el.textContent);
      assert.equal(url, `https://${slug}.claw.test`);
      assert.equal(await page.$eval("[data-testid=instance-plan]", (el) => el.textContent), "free");
      await screenshot("running");
      // The same tenant through the REST API, as the user.
      const rest = await fetchJson(`${state.api}/api/tenants/me`, { headers: { authorization: `Bearer ${jwt}` } });
      assert.equal(rest.status, 200, JSON.stringify(rest.body));
      assert.equal(rest.body.tenant.status, "TENANT_STATUS_RUNNING");
      assert.equal(rest.body.tenant.slug, slug);
    });

    await step("shows the gateway's log lines, live", 3 * MINUTE, async () => {
      const page = state.page;
      const count = await waitInPage(page, "log lines", 2 * MINUTE, () => {
        const lines = document.querySelectorAll("[data-testid=log-line]").length;
        return document.querySelector("[data-testid=logs]")?.dataset.state === "live" && lines > 0 ? lines : 0;
      });
      const lines = await page.$$eval("[data-testid=log-line]", (els) => els.slice(-3).map((el) => el.textContent));
      log(`${count} log line(s), the last: ${JSON.stringify(lines)}`);
      await screenshot("logs");
    });

    await step("points the tenant's model at a fake model server (ConfigService.SetModel)", 4 * MINUTE, async () => {
      const page = state.page;
      const tenantId = await page.$eval("[data-testid=instance]", (el) => el.dataset.tenantId);
      assert.ok(tenantId, "the instance card names its tenant");
      state.tenantId = tenantId;
      state.fakeModel = await startFakeModel(FAKE_REPLY);
      // The same client package the page uses, from Node, as the same user.
      state.client = createClawplaneClient({ baseUrl: state.api, auth: { bearer: jwt } });
      const apiKey = "sk-panel-test-0123456789";
      const reloads = () =>
        [...document.querySelectorAll("[data-testid=log-line]")].filter((el) => /hot reload applied.*model/.test(el.textContent)).length;
      const reloadsBefore = await page.evaluate(reloads);
      // Answers once the host has applied it, which can take a while on a busy machine.
      const res = await state.client.config.setModel(
        {
          tenantId,
          provider: "local",
          model: "fake-model",
          apiKey,
          baseUrl: `http://127.0.0.1:${state.fakeModel.port}/v1`,
        },
        { timeoutMs: 3 * MINUTE },
      );
      const config = res.config;
      assert.equal(config?.model?.model, "fake-model");
      assert.equal(config?.model?.apiKeyHint, "sk-...6789");
      assert.equal(config?.lastApplyError, "", config?.lastApplyError);
      assert.equal(config?.appliedGeneration, config?.desiredGeneration, "applied on the host before SetModel answered");
      log(`model set: generation ${config?.appliedGeneration}, base URL ${config?.model?.baseUrl}`);
      // SetModel answers once the host wrote the config; the gateway then
      // hot-reloads it (a turn sent before that still uses the old model and
      // fails). Its log says when, and the panel shows the log live.
      const started = Date.now();
      await waitInPageOnChange(page, "the gateway's 'config hot reload applied' log line for the model", MINUTE, (before, source) =>
        [...document.querySelectorAll("[data-testid=log-line]")].filter((el) => new RegExp(source).test(el.textContent)).length > before,
        reloadsBefore, "hot reload applied.*model");
      log(`the gateway reloaded the model ${((Date.now() - started) / SECOND).toFixed(1)} s after SetModel answered`);
      // Still RUNNING, and the chat box is there.
      const settled = await waitInPage(page, "RUNNING after SetModel", MINUTE, settledStatus);
      assert.equal(settled.error, undefined, settled.error);
      await page.waitForSelector("[data-testid=chat] [data-testid=chat-input]:not([disabled])", { timeout: MINUTE });
    });

    await step("chats with the agent: the answer streams in, the conversation continues (SendMessage)", 2 * ANSWERED_WITHIN + MINUTE, async () => {
      const page = state.page;
      const model = state.fakeModel;
      const firstQuestion = "what is on my list?";
      const secondQuestion = "and tomorrow?";

      let sent = Date.now();
      await sendInChat(page, firstQuestion);
      const first = await waitInPageOnChange(page, "the first answer", ANSWERED_WITHIN, chatAnswer, 0);
      log(`first answer after ${((Date.now() - sent) / SECOND).toFixed(1)} s: ${JSON.stringify(first)}`);
      assert.equal(first.error, undefined, first.error);
      assert.deepEqual([first.state, first.text], ["done", FAKE_REPLY]);
      assert.ok(first.deltas >= 2, `the answer streams in pieces (${first.deltas} delta(s))`);
      assert.match(first.sessionKey, /^agent:/, "done names the conversation");
      const user = await page.$$eval("[data-testid=chat-message][data-role=user]", (els) => els.map((el) => el.querySelector("[data-testid=chat-message-text]").textContent));
      assert.deepEqual(user, [firstQuestion]);
      assert.equal(await page.$eval("[data-testid=chat-input]", (el) => el.value), "", "the field is emptied on send");
      assert.ok(model.requests.some((body) => JSON.stringify(body.messages ?? "").includes(firstQuestion)), "the fake model was asked");

      // The next message continues the conversation: the model gets the first exchange again.
      sent = Date.now();
      await sendInChat(page, secondQuestion);
      const second = await waitInPageOnChange(page, "the second answer", ANSWERED_WITHIN, chatAnswer, 1);
      log(`second answer after ${((Date.now() - sent) / SECOND).toFixed(1)} s: ${JSON.stringify(second)}`);
      assert.equal(second.error, undefined, second.error);
      assert.deepEqual([second.state, second.text], ["done", FAKE_REPLY]);
      assert.equal(second.sessionKey, first.sessionKey, "the same conversation");
      const asked = model.requests.findLast((body) => JSON.stringify(body.messages ?? "").includes(secondQuestion));
      assert.ok(asked, "the fake model was asked the second message");
      const history = JSON.stringify(asked.messages);
      assert.ok(history.includes(firstQuestion) && history.includes(FAKE_REPLY), `the first exchange is in the history: ${history.slice(0, 2_000)}`);
      const info = await page.$eval("[data-testid=chat-info]", (el) => el.textContent).catch(() => "(none)");
      log(`turn info: ${info}`);
      await namedScreenshot("chat");
    });

    await step("the conversation is in the history and counted in the usage (ListSessions, ListMessages, GetOverview, GetUsage)", 3 * MINUTE, async () => {
      await checkHistoryAndUsage(state.page, {
        expectUserText: "what is on my list?",
        expectAssistantText: FAKE_REPLY,
        screenshot: (name) => namedScreenshot(name.replace(/^web-panel-/, "")),
      });
    });

    await step("Stop aborts a turn: the partial answer stays, the gateway drops its model request", 3 * MINUTE, async () => {
      const page = state.page;
      const model = state.fakeModel;
      await page.click("[data-testid=chat-new]");
      await waitInPage(page, "an empty conversation", 10 * SECOND, () =>
        document.querySelectorAll("[data-testid=chat-message]").length === 0 &&
        document.querySelector("[data-testid=chat]")?.dataset.sessionKey === "",
      );
      const abortedBefore = model.aborted;
      const askedBefore = model.requests.length;
      await sendInChat(page, "[hold] take your time");
      // The model's first word reaches the page, then it holds.
      await modelSees(model, "the held request", ANSWERED_WITHIN, () =>
        model.requests.slice(askedBefore).some((body) => JSON.stringify(body.messages ?? "").includes("[hold]")),
      );
      const partial = await waitInPageOnChange(page, "the first word of the held answer", 30 * SECOND, () => {
        const answer = document.querySelector("[data-testid=chat-message][data-role=assistant]");
        return answer?.dataset.state === "streaming" && Number(answer.dataset.deltas) > 0
          ? answer.querySelector("[data-testid=chat-message-text]").textContent
          : null;
      });
      assert.ok(partial.trim() !== "" && FAKE_REPLY.startsWith(partial.trim()), `the held answer so far: ${JSON.stringify(partial)}`);
      await page.click("[data-testid=chat-stop]");
      const stopped = await waitInPageOnChange(page, "the stopped answer", 30 * SECOND, () => {
        const answer = document.querySelector("[data-testid=chat-message][data-role=assistant]");
        return document.querySelector("[data-testid=chat]")?.dataset.state === "idle" && answer?.dataset.state !== "streaming"
          ? {
              state: answer?.dataset.state,
              text: answer?.querySelector("[data-testid=chat-message-text]")?.textContent,
              error: document.querySelector("[data-testid=chat-error]")?.textContent ?? null,
            }
          : null;
      });
      assert.deepEqual(stopped, { state: "stopped", text: partial, error: null }, "stopped, the partial answer kept, no error");
      assert.ok(await page.$("[data-testid=chat-send]"), "Send is back after Stop");
      // Cancelling the call aborts the turn in the gateway, which drops its request to the model.
      const started = Date.now();
      await modelSees(model, "the gateway abort its request", MINUTE, () => model.aborted > abortedBefore);
      log(`the fake model saw the request aborted ${((Date.now() - started) / SECOND).toFixed(1)} s after Stop`);
    });

    await step("a refused message shows the server's error in words and is offered again", MINUTE, async () => {
      const page = state.page;
      // Over SendMessage's 32,768-byte bound: INVALID_ARGUMENT from the control plane.
      const tooLong = "x".repeat(33_000);
      await page.$eval("[data-testid=chat-input]", (el, text) => {
        // Through the element's own setter, so React sees the change.
        Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, "value").set.call(el, text);
        el.dispatchEvent(new Event("input", { bubbles: true }));
      }, tooLong);
      await page.click("[data-testid=chat-send]");
      const shown = await waitInPageOnChange(page, "the chat's error", 30 * SECOND, () => {
        const error = document.querySelector("[data-testid=chat-error]");
        const answers = document.querySelectorAll("[data-testid=chat-message][data-role=assistant]");
        return error && document.querySelector("[data-testid=chat]")?.dataset.state === "idle"
          ? {
              code: error.dataset.code,
              title: error.querySelector("strong")?.textContent,
              detail: error.querySelector(".detail")?.textContent,
              answer: answers[answers.length - 1]?.dataset.state,
              draft: document.querySelector("[data-testid=chat-input]").value.length,
            }
          : null;
      });
      log(`refused message: ${JSON.stringify(shown)}`);
      assert.equal(shown.code, "INVALID_ARGUMENT");
      assert.equal(shown.title, "Clawplane refused the request.");
      assert.ok(shown.detail && shown.detail.length > "INVALID_ARGUMENT ".length, "the server's message is shown under it");
      assert.deepEqual([shown.answer, shown.draft], ["failed", tooLong.length], "no answer; the message is back in the field");
      await namedScreenshot("chat-error");
      // Start over: no error, no messages, an empty field.
      await page.click("[data-testid=chat-new]");
      await page.$eval("[data-testid=chat-input]", (el) => {
        Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, "value").set.call(el, "");
        el.dispatchEvent(new Event("input", { bubbles: true }));
      });
      await waitInPage(page, "the chat cleared", 10 * SECOND, () =>
        !document.querySelector("[data-testid=chat-error]") && document.querySelectorAll("[data-testid=chat-message]").length === 0,
      );
    });

    await step("the backend-for-frontend (server/bff.mjs, shared secret) sees the same instance", MINUTE, async () => {
      const bff = startProcess("bff", process.execPath, [path.join(HERE, "server/bff.mjs")], {
        cwd: root, // so the final sweep finds it too
        env: cleanEnv({
          CLAWPLANE_URL: state.api,
          CLAWPLANE_SHARED_SECRET: SHARED_SECRET,
          BFF_DEMO_USER_ID: sub,
          BFF_DEMO_USER_EMAIL: `${sub}@example.com`,
          BFF_LISTEN: "127.0.0.1:0",
        }),
        logFile: path.join(root, "bff.log"),
      });
      const base = await eventually("the BFF to listen", 30 * SECOND, () => {
        if (!alive(bff)) throw new Error(`bff exited:\n${fs.readFileSync(bff.logFile, "utf8")}`);
        return fs.readFileSync(bff.logFile, "utf8").match(/listening on (http:\/\/\S+),/)?.[1];
      });
      const mine = await fetchJson(`${base}/api/my-openclaw`);
      assert.equal(mine.status, 200, JSON.stringify(mine.body));
      assert.equal(mine.body.status, "TENANT_STATUS_RUNNING");
      const plans = await fetchJson(`${base}/api/plans`);
      assert.deepEqual(plans.body.plans.map((p) => p.name), ["free", "pro", "enterprise"]);
      await stopProcess(bff, 10 * SECOND);
    });

    await step("restarts it and waits until it is RUNNING again", RESTARTED_WITHIN + MINUTE, async () => {
      const page = state.page;
      await page.click("[data-testid=restart-instance]");
      await waitInPage(page, "the restarting state", 10 * SECOND, () =>
        document.querySelector("[data-testid=instance-status]")?.dataset.busy === "restart",
      );
      await screenshot("restarting");
      const started = Date.now();
      const settled = await waitInPage(page, "RUNNING again after the restart", RESTARTED_WITHIN, settledStatus);
      assert.equal(settled.error, undefined, settled.error);
      const notice = await page.$eval("[data-testid=notice]", (el) => el.textContent);
      assert.match(notice, /^Restarted at /);
      log(`restarted in ${((Date.now() - started) / SECOND).toFixed(1)} s`);
      await waitInPage(page, "log lines after the restart", 2 * MINUTE, () =>
        document.querySelectorAll("[data-testid=log-line]").length > 0,
      );
      await page.waitForSelector("[data-testid=chat] [data-testid=chat-input]:not([disabled])", { timeout: 30 * SECOND });
      await screenshot("restarted");
    });

    await step("deletes it after confirming and shows 'no instance' again", 3 * MINUTE, async () => {
      const page = state.page;
      await page.click("[data-testid=delete-instance]");
      await page.waitForSelector("[data-testid=delete-confirm]", { timeout: 10 * SECOND });
      await screenshot("confirm-delete");
      // Cancel keeps it; confirming deletes it.
      await page.click("[data-testid=cancel-delete]");
      await waitInPage(page, "the confirmation to close", 10 * SECOND, () => !document.querySelector("[data-testid=delete-confirm]"));
      assert.ok(await page.$("[data-testid=instance]"), "cancel keeps the instance");
      const agent = children.find((c) => c.name === "clawplane-agent");
      const gateways = () => processesUnder(tenantsDir, [agent.child.pid]);
      assert.ok(gateways().length > 0, "the running tenant's gateway is found under the tenants dir");
      await page.click("[data-testid=delete-instance]");
      await page.click("[data-testid=confirm-delete]");
      await waitInPage(page, "'no instance' after deleting", 2 * MINUTE, () =>
        document.querySelector("[data-testid=no-instance] [data-testid=create-instance]") !== null &&
        /deleted/.test(document.querySelector("[data-testid=notice]")?.textContent ?? ""),
      );
      await screenshot("deleted");
      const rest = await fetchJson(`${state.api}/api/tenants/me`, { headers: { authorization: `Bearer ${jwt}` } });
      assert.equal(rest.status, 404, JSON.stringify(rest.body));
      state.tenantMayExist = false;
      // The agent stops the tenant's gateway (the agent itself names the tenants dir in its arguments).
      await eventually("the deleted tenant's gateway to stop", 2 * MINUTE, () => gateways().length === 0, 500);
    });
  } finally {
    process.removeListener("SIGINT", onSignal);
    process.removeListener("SIGTERM", onSignal);
    const survivors = await cleanup();
    assert.deepEqual(survivors ?? [], [], "processes this test started outlived it");
  }
});
