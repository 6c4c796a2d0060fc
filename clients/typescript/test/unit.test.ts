// The hand-written layer without a server: an in-memory connect router
// stands in for the API where the real one cannot answer without a host
// (streams with data, ErrorInfo reasons), plus the package's entry points.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createRouterTransport, type ConnectRouter } from "@connectrpc/connect";
import {
  ClawplaneError,
  ErrorInfoSchema,
  SessionService,
  TenantService,
  TenantStatus,
  TokenUsageSchema,
  authInterceptor,
  createClawplaneClient,
  toClawplaneError,
  type ClawplaneAuth,
  type SendMessageEvent,
} from "@clawplane/client";
import * as nodeEntry from "@clawplane/client/node";
import { packageDir } from "./support/control-plane.js";

function fakeApi(routes: (router: ConnectRouter) => void, auth: ClawplaneAuth = { bearer: "token" }) {
  const transport = createRouterTransport(routes, { transport: { interceptors: [authInterceptor(auth)] } });
  return createClawplaneClient({ transport });
}

test("the auth interceptors set the credential headers on every call", async () => {
  const seen: Headers[] = [];
  const routes = (router: ConnectRouter) =>
    router.service(TenantService, {
      getMyTenant(_req, ctx) {
        seen.push(new Headers(ctx.requestHeader));
        return { tenant: { id: "t1", status: TenantStatus.PENDING } };
      },
    });

  let n = 0;
  const bearer = fakeApi(routes, { bearer: async () => `token-${++n}` });
  await bearer.getMyTenant();
  await bearer.getMyTenant();
  assert.deepEqual(seen.map((h) => h.get("authorization")), ["Bearer token-1", "Bearer token-2"]);

  seen.length = 0;
  const shared = fakeApi(routes, { sharedSecret: "s3cret", userId: "u1", userEmail: "u1@example.com", teams: ["t1", "t2"] });
  assert.equal((await shared.getMyTenant()).id, "t1");
  const headers = seen[0];
  assert.ok(headers);
  assert.equal(headers.get("x-shared-secret"), "s3cret");
  assert.equal(headers.get("x-user-id"), "u1");
  assert.equal(headers.get("x-user-email"), "u1@example.com");
  assert.equal(headers.get("x-user-teams"), "t1,t2");
  assert.equal(headers.get("authorization"), null);

  seen.length = 0;
  await fakeApi(routes, { sharedSecret: "s3cret", userId: "u2", userEmail: "" }).getMyTenant();
  assert.equal(seen[0]?.get("x-user-email"), null, "an empty email sends no header");

  assert.throws(() => authInterceptor({ sharedSecret: "s", userId: "u", userEmail: "", teams: ["a,b"] }), TypeError);
  assert.throws(() => authInterceptor({ sharedSecret: "s", userId: " ", userEmail: "" }), TypeError);
  assert.throws(() => authInterceptor({} as ClawplaneAuth), TypeError);
});

test("sendMessage yields the deltas, then done", async () => {
  const client = fakeApi((router) =>
    router.service(SessionService, {
      async *sendMessage(req) {
        assert.equal(req.tenantId, "t1");
        assert.equal(req.sessionKey, "agent:t1:main");
        for (const text of ["Hel", "lo"]) yield { event: { case: "delta", value: { text } } };
        yield {
          event: {
            case: "done",
            value: {
              text: "Hello",
              sessionKey: "agent:t1:main",
              sessionId: "s1",
              agentId: "t1",
              model: "gpt-test",
              finishReason: "stop",
              usage: create(TokenUsageSchema, { inputTokens: 3n, outputTokens: 2n, totalTokens: 5n }),
            },
          },
        };
      },
    }),
  );
  const events: SendMessageEvent[] = [];
  for await (const event of client.sendMessage("t1", "hi", { sessionKey: "agent:t1:main" })) events.push(event);
  assert.deepEqual(
    events.map((e) => [e.type, e.text]),
    [
      ["delta", "Hel"],
      ["delta", "lo"],
      ["done", "Hello"],
    ],
  );
  const done = events[2];
  assert.ok(done?.type === "done");
  assert.equal(done.sessionKey, "agent:t1:main");
  assert.equal(done.sessionId, "s1");
  assert.equal(done.model, "gpt-test");
  assert.equal(done.finishReason, "stop");
  assert.equal(done.usage?.totalTokens, 5n);
});

test("sendMessage without done, or failing mid-answer, throws a ClawplaneError", async () => {
  const cutShort = fakeApi((router) =>
    router.service(SessionService, {
      async *sendMessage() {
        yield { event: { case: "delta", value: { text: "partial" } } };
      },
    }),
  );
  const texts: string[] = [];
  await assert.rejects(
    async () => {
      for await (const event of cutShort.sendMessage("t1", "hi")) texts.push(event.text);
    },
    (err: unknown) => ClawplaneError.is(err, "UNAVAILABLE") && /without `done`/.test(err.message),
  );
  assert.deepEqual(texts, ["partial"]);

  const broken = fakeApi((router) =>
    router.service(SessionService, {
      async *sendMessage() {
        yield { event: { case: "delta", value: { text: "partial" } } };
        throw new ConnectError("the gateway went away", Code.Unavailable);
      },
    }),
  );
  await assert.rejects(
    async () => {
      for await (const _ of broken.sendMessage("t1", "hi"));
    },
    (err: unknown) => ClawplaneError.is(err, "UNAVAILABLE") && err.message === "the gateway went away",
  );
});

test("streamLogs yields each line with its time", async () => {
  const at = new Date("2026-01-02T03:04:05.678Z");
  const client = fakeApi((router) =>
    router.service(TenantService, {
      async *streamTenantLogs(req) {
        assert.deepEqual([req.tenantId, req.tailLines, req.follow], ["t1", 2, false]);
        yield { lines: [{ text: "one", observedAt: timestampFromDate(at) }, { text: "two" }] };
        yield { lines: [] };
        yield { lines: [{ text: "three", observedAt: timestampFromDate(at) }] };
      },
    }),
  );
  const lines = [];
  for await (const line of client.streamLogs("t1", { tailLines: 2 })) lines.push(line);
  assert.deepEqual(lines, [
    { text: "one", observedAt: at },
    { text: "two", observedAt: undefined },
    { text: "three", observedAt: at },
  ]);
});

test("a status' ErrorInfo (domain clawplane.dev) becomes ClawplaneError.reason", async () => {
  const client = fakeApi((router) =>
    router.service(TenantService, {
      restartTenant() {
        throw new ConnectError("openclaw: unknown channel option", Code.InvalidArgument, { "retry-after": "7" }, [
          { desc: ErrorInfoSchema, value: { reason: "SOMETHING_ELSE", domain: "example.com" } },
          { desc: ErrorInfoSchema, value: { reason: "OPENCLAW_REJECTED", domain: "clawplane.dev", metadata: { k: "v" } } },
        ]);
      },
    }),
  );
  const err = await client.restartTenant("t1").then(
    () => assert.fail("expected an error"),
    (e: unknown) => e,
  );
  assert.ok(err instanceof ClawplaneError);
  assert.ok(err instanceof Error);
  assert.equal(err.name, "ClawplaneError");
  assert.equal(err.code, "INVALID_ARGUMENT");
  assert.equal(err.grpcStatus, 3);
  assert.equal(err.message, "openclaw: unknown channel option");
  assert.equal(err.reason, "OPENCLAW_REJECTED");
  assert.deepEqual(err.reasonMetadata, { k: "v" });
  assert.equal(err.retryAfterSeconds, 7);
  assert.ok(err.cause instanceof ConnectError);

  const plain = toClawplaneError(new ConnectError("nope", Code.NotFound));
  assert.deepEqual([plain.code, plain.message, plain.reason, plain.retryAfterSeconds], ["NOT_FOUND", "nope", undefined, undefined]);
  assert.equal(toClawplaneError(plain), plain);
  assert.equal(toClawplaneError(new Error("boom")).code, "UNKNOWN");
});

test("the shared secret is refused in a web page", () => {
  const g = globalThis as { window?: unknown };
  g.window = { document: {} };
  try {
    const options = { baseUrl: "http://127.0.0.1:1", auth: { sharedSecret: "s", userId: "u", userEmail: "" } };
    assert.throws(() => createClawplaneClient(options), /must not reach a browser/);
    createClawplaneClient({ ...options, dangerouslyAllowSharedSecretInBrowser: true });
    createClawplaneClient({ baseUrl: "http://127.0.0.1:1", auth: { bearer: "jwt" } });
  } finally {
    delete g.window;
  }
  createClawplaneClient({ baseUrl: "http://127.0.0.1:1", auth: { sharedSecret: "s", userId: "u", userEmail: "" } });
});

test("bad options are TypeErrors", () => {
  const auth = { bearer: "jwt" };
  assert.throws(() => createClawplaneClient({ baseUrl: "127.0.0.1:7700", auth }), TypeError);
  assert.throws(() => createClawplaneClient({ baseUrl: "ftp://127.0.0.1:7700", auth }), TypeError);
  assert.throws(() => createClawplaneClient({ baseUrl: "http://127.0.0.1:7700", auth, transport: "grpc" as never }), /@clawplane\/client\/node/);
  assert.throws(() => nodeEntry.createClawplaneClient({ baseUrl: "http://127.0.0.1:7700", auth: undefined as never, transport: "grpc" }), TypeError);
});

test("the package's entry points: the browser one imports nothing of Node", () => {
  const pkg = JSON.parse(readFileSync(resolve(packageDir, "package.json"), "utf8")) as { version: string };
  assert.equal(pkg.version, "0.1.0");
  assert.equal(typeof nodeEntry.createClawplaneClient, "function");
  assert.equal(typeof nodeEntry.Http2SessionManager, "function");
  assert.equal(nodeEntry.TenantStatus.RUNNING, 3);

  // Walk the static imports of dist/index.js (what a bundler would include);
  // dist/node.js, walked the same way, must reach connect-node.
  const require = createRequire(resolve(packageDir, "package.json"));
  assert.ok(require.resolve("@connectrpc/connect-node"), "connect-node is installed");
  const walk = (entry: string) => {
    const seen = new Set<string>();
    const packages = new Set<string>();
    const nodeModules = new Set<string>();
    const visit = (file: string) => {
      if (seen.has(file)) return;
      seen.add(file);
      const source = readFileSync(file, "utf8");
      for (const match of source.matchAll(/^\s*(?:import|export)\s[^;]*?from\s*["']([^"']+)["']|^\s*import\s*["']([^"']+)["']/gm)) {
        const spec = match[1] ?? match[2];
        if (spec === undefined) continue;
        if (spec.startsWith("node:") || ["http2", "http", "https", "zlib", "net", "tls", "stream"].includes(spec)) {
          nodeModules.add(`${file} imports ${spec}`);
        } else if (spec.startsWith(".")) {
          visit(resolve(dirname(file), spec));
        } else {
          packages.add(spec.split("/").slice(0, spec.startsWith("@") ? 2 : 1).join("/"));
          // Every package is hoisted (exact versions), so resolving from here is theirs too.
          visit(fileURLToPath(import.meta.resolve(spec)));
        }
      }
    };
    visit(fileURLToPath(import.meta.resolve(entry)));
    return { seen, packages, nodeModules };
  };
  const browser = walk("@clawplane/client");
  assert.deepEqual([...browser.nodeModules], []);
  assert.ok(!browser.packages.has("@connectrpc/connect-node"), `the browser entry reaches ${[...browser.packages].join(", ")}`);
  assert.ok(browser.packages.has("@connectrpc/connect-web"));
  assert.ok(browser.seen.size > 20, `walked ${browser.seen.size} modules`);
  const node = walk("@clawplane/client/node");
  assert.ok(node.packages.has("@connectrpc/connect-node"));
  assert.ok(node.nodeModules.size > 0);
});
