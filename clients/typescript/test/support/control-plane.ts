// Starts a real control plane (`clawplane serve`, embedded SQLite in a temp
// dir, loopback ports) for a test file, and stops it however the file ends.
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The package directory (clients/typescript), from .test-build/test/support. */
export const packageDir = resolve(fileURLToPath(new URL(".", import.meta.url)), "../../..");

export interface ControlPlane {
  /** http://127.0.0.1:<api port> */
  baseUrl: string;
  sharedSecret: string;
  jwtSecret: string;
  jwtIssuer: string;
  jwtAudience: string;
  /** The operator token the server generated in its data dir. */
  adminToken: string;
  /** What the server printed so far (for failure messages). */
  output(): string;
  /** SIGTERM, then SIGKILL after 5 s; removes the data dir. Idempotent. */
  stop(): Promise<void>;
}

export interface StartOptions {
  /** Extra `clawplane serve` arguments, e.g. ["--cors-allowed-origins", "http://x"]. */
  args?: string[];
  /** Bound on the wait for the API port. */
  startTimeoutMs?: number;
}

/** The server binary: $CLAWPLANE_BIN, default ../../target/debug/clawplane. */
export function clawplaneBin(): string {
  return process.env["CLAWPLANE_BIN"] ?? resolve(packageDir, "../../target/debug/clawplane");
}

async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((done) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    const finish = (ok: boolean) => {
      socket.destroy();
      done(ok);
    };
    socket.setTimeout(1000, () => finish(false));
    socket.once("connect", () => finish(true));
    socket.once("error", () => finish(false));
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** A bound on a wait that must not keep the process alive by itself. */
const bound = (ms: number) => new Promise((r) => setTimeout(r, ms).unref());

// Every server this process started, killed (and its data dir removed) on
// any way out of it.
const running = new Set<ChildProcess>();
const dirs = new Set<string>();
function killAll(): void {
  for (const child of running) child.kill("SIGKILL");
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
}
process.once("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.once(signal, () => {
    killAll();
    process.exit(128 + (signal === "SIGINT" ? 2 : signal === "SIGTERM" ? 15 : 1));
  });
}

export async function startControlPlane(options: StartOptions = {}): Promise<ControlPlane> {
  const bin = clawplaneBin();
  if (!existsSync(bin)) {
    throw new Error(`${bin} does not exist: run \`cargo build --workspace --bins\` or set CLAWPLANE_BIN`);
  }
  const dir = mkdtempSync(join(tmpdir(), "clawplane-ts-"));
  dirs.add(dir);
  const [apiPort, agentPort] = [await freePort(), await freePort()];
  const sharedSecret = `shared-${randomBytes(16).toString("hex")}`;
  const jwtSecret = randomBytes(32).toString("hex");
  const jwtIssuer = "https://sso.test.invalid";
  const jwtAudience = "clawplane";

  // Only our settings: a CLAWPLANE_* variable of the caller's (a database
  // URL, a config file) must not change the server under test.
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith("CLAWPLANE_")) env[name] = value;
  }
  Object.assign(env, {
    CLAWPLANE_SHARED_SECRET: sharedSecret,
    CLAWPLANE_JWT_HS256_SECRET: jwtSecret,
    CLAWPLANE_JWT_ISSUER: jwtIssuer,
    CLAWPLANE_JWT_AUDIENCE: jwtAudience,
  });
  const args = [
    "serve",
    "--data-dir",
    join(dir, "data"),
    "--api-listen",
    `127.0.0.1:${apiPort}`,
    "--agent-listen",
    `127.0.0.1:${agentPort}`,
    ...(options.args ?? []),
  ];
  const child = spawn(bin, args, { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
  running.add(child);
  let output = "";
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString("utf8")).slice(-64 * 1024);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const exited = new Promise<void>((done) => child.once("exit", () => done()));
  let exitCode: number | null | undefined;
  child.once("exit", (code, signal) => {
    exitCode = code ?? (signal === null ? null : -1);
    running.delete(child);
  });

  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (exitCode === undefined) {
      child.kill("SIGTERM");
      const killed = await Promise.race([exited.then(() => true), bound(5000).then(() => false)]);
      if (!killed) {
        child.kill("SIGKILL");
        await Promise.race([exited, bound(2000)]);
      }
    }
    rmSync(dir, { recursive: true, force: true });
    dirs.delete(dir);
  };

  const deadline = Date.now() + (options.startTimeoutMs ?? 20_000);
  try {
    for (;;) {
      if (exitCode !== undefined) throw new Error(`clawplane serve exited (${exitCode}) before listening`);
      if (await canConnect(apiPort)) break;
      if (Date.now() > deadline) throw new Error(`clawplane serve did not listen on ${apiPort} in time`);
      await sleep(50);
    }
  } catch (err) {
    await stop();
    throw new Error(`${(err as Error).message}; its output:\n${output}`);
  }
  const adminToken = readFileSync(join(dir, "data", "admin-token"), "utf8").trim();
  return {
    baseUrl: `http://127.0.0.1:${apiPort}`,
    sharedSecret,
    jwtSecret,
    jwtIssuer,
    jwtAudience,
    adminToken,
    output: () => output,
    stop,
  };
}

const base64url = (data: string | Buffer) => Buffer.from(data).toString("base64url");

/** An HS256 JWT, as an SSO would sign it. */
export function signJwt(secret: string, claims: Record<string, unknown>): string {
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = base64url(JSON.stringify(claims));
  const signature = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

/** A JWT for `sub` that this control plane accepts (valid 5 minutes unless claims say otherwise). */
export function userJwt(cp: ControlPlane, sub: string, claims: Record<string, unknown> = {}): string {
  const now = Math.floor(Date.now() / 1000);
  return signJwt(cp.jwtSecret, {
    sub,
    email: `${sub}@example.com`,
    iss: cp.jwtIssuer,
    aud: cp.jwtAudience,
    iat: now,
    exp: now + 300,
    ...claims,
  });
}

/** A user id no other test uses. */
export function uniqueUser(prefix: string): string {
  return `${prefix}-${randomBytes(6).toString("hex")}`;
}
