#!/usr/bin/env node
// Backend for frontend: the other way to call Clawplane from a web product.
//
// The browser never talks to Clawplane here. It calls your own backend (same
// origin, your session cookie); your backend knows who the user is and calls
// Clawplane with the shared secret and that user's id. The secret lets its
// holder act as ANY user, so it stays on the server: @clawplane/client
// refuses it in a web page.
//
//   CLAWPLANE_URL=http://127.0.0.1:7700 CLAWPLANE_SHARED_SECRET=... node server/bff.mjs
//   curl http://127.0.0.1:8787/api/my-openclaw
//
// Routes (JSON; errors are {code, message} with a matching HTTP status):
//   GET    /api/plans                   the plans (UsageService.ListPlans)
//   GET    /api/my-openclaw             the user's instance (404 when none)
//   POST   /api/my-openclaw {"plan"}    create it
//   POST   /api/my-openclaw/restart     restart it (answers when it is ready again)
//   DELETE /api/my-openclaw             delete it
//   GET    /api/my-openclaw/logs        its log, live, as Server-Sent Events
import { createServer } from "node:http";
import { ClawplaneError, PlanSchema, TenantSchema, createClawplaneClient, toJson } from "@clawplane/client";

const CLAWPLANE_URL = process.env.CLAWPLANE_URL ?? "http://127.0.0.1:7700";
const SHARED_SECRET = process.env.CLAWPLANE_SHARED_SECRET;
const [HOST, PORT] = (process.env.BFF_LISTEN ?? "127.0.0.1:8787").split(":");
if (!SHARED_SECRET) {
  console.error("bff: set CLAWPLANE_SHARED_SECRET (the control plane's --shared-secret)");
  process.exit(2);
}

/**
 * Who is signed in. REPLACE THIS with your product's session lookup (your
 * session cookie, your auth middleware). Never take the user id from
 * anything the browser sends as is. This demo serves one fixed user.
 */
async function currentUser(_req) {
  return {
    id: process.env.BFF_DEMO_USER_ID ?? "demo-user",
    email: process.env.BFF_DEMO_USER_EMAIL ?? "demo-user@example.com",
  };
}

/** A client acting as `user`: one per request, it is cheap (no connection of its own). */
const clawplaneFor = (user) =>
  createClawplaneClient({
    baseUrl: CLAWPLANE_URL,
    auth: { sharedSecret: SHARED_SECRET, userId: user.id, userEmail: user.email },
    defaultTimeoutMs: 30_000,
  });

const HTTP_STATUS = {
  INVALID_ARGUMENT: 400,
  UNAUTHENTICATED: 401,
  PERMISSION_DENIED: 403,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  FAILED_PRECONDITION: 409,
  RESOURCE_EXHAUSTED: 429,
  CANCELLED: 499,
  UNAVAILABLE: 503,
  DEADLINE_EXCEEDED: 504,
};

function send(res, status, body) {
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" });
  res.end(JSON.stringify(body));
}

function sendError(res, err) {
  if (err instanceof ClawplaneError) return send(res, HTTP_STATUS[err.code] ?? 502, { code: err.code, message: err.message });
  console.error("bff:", err);
  send(res, 500, { code: "INTERNAL", message: "internal error" });
}

async function readJson(req) {
  let text = "";
  for await (const chunk of req) {
    text += chunk;
    if (text.length > 16_384) throw new ClawplaneError("INVALID_ARGUMENT", "body too large");
  }
  try {
    return text === "" ? {} : JSON.parse(text);
  } catch {
    throw new ClawplaneError("INVALID_ARGUMENT", "body is not JSON");
  }
}

// Tenants hold int64s and Timestamps: toJson makes them JSON-safe.
const tenantJson = (tenant) => toJson(TenantSchema, tenant);

async function handle(req, res) {
  const { pathname } = new URL(req.url ?? "/", "http://bff");
  const route = `${req.method} ${pathname}`;
  // A real BFF also checks its CSRF token on POST and DELETE here.
  const clawplane = clawplaneFor(await currentUser(req));
  switch (route) {
    case "GET /api/plans": {
      const { plans } = await clawplane.usage.listPlans({});
      return send(res, 200, { plans: plans.map((plan) => toJson(PlanSchema, plan)) });
    }
    case "GET /api/my-openclaw":
      return send(res, 200, tenantJson(await clawplane.getMyTenant()));
    case "POST /api/my-openclaw": {
      const { plan } = await readJson(req);
      const { tenant, created } = await clawplane.createTenant({ plan: String(plan ?? "free") });
      return send(res, created ? 201 : 200, tenantJson(tenant));
    }
    case "POST /api/my-openclaw/restart": {
      const tenant = await clawplane.getMyTenant();
      return send(res, 200, tenantJson(await clawplane.restartTenant(tenant.id, { timeoutMs: 180_000 })));
    }
    case "DELETE /api/my-openclaw": {
      const tenant = await clawplane.getMyTenant();
      return send(res, 200, tenantJson(await clawplane.deleteTenant(tenant.id)));
    }
    case "GET /api/my-openclaw/logs": {
      const tenant = await clawplane.getMyTenant();
      // Cancel the Clawplane stream when the browser goes away.
      const gone = new AbortController();
      res.on("close", () => gone.abort());
      const lines = clawplane.streamLogs(tenant.id, { tailLines: 100, follow: true, signal: gone.signal });
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store" });
      try {
        for await (const line of lines) res.write(`data: ${JSON.stringify({ text: line.text })}\n\n`);
      } catch (err) {
        if (!gone.signal.aborted) res.write(`event: error\ndata: ${JSON.stringify({ message: String(err.message) })}\n\n`);
      }
      return res.end();
    }
    default:
      return send(res, 404, { code: "NOT_FOUND", message: `no route ${route}` });
  }
}

const server = createServer((req, res) => {
  handle(req, res).catch((err) => (res.headersSent ? res.end() : sendError(res, err)));
});
server.listen(Number(PORT), HOST, () => {
  const { port } = server.address();
  console.log(`bff: listening on http://${HOST}:${port}, calling Clawplane at ${CLAWPLANE_URL}`);
});
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
