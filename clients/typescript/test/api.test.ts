// The client against a real control plane, over grpc-web and native gRPC.
// No host joins, so every tenant stays PENDING.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  ClawplaneError,
  SubscriptionStatus,
  TenantSchema,
  TenantStatus,
  createClawplaneClient,
  toJson,
  type ClawplaneAuth,
  type ClawplaneClient,
  type ClawplaneErrorCode,
} from "@clawplane/client/node";
import { startControlPlane, uniqueUser, userJwt, type ControlPlane } from "./support/control-plane.js";

let cp: ControlPlane;
const clients: ClawplaneClient[] = [];

before(async () => {
  cp = await startControlPlane();
});

after(async () => {
  for (const client of clients) client.close();
  await cp?.stop();
});

/** Fails with the server's output attached, so a red run says why. */
async function rejectsWith(
  call: () => Promise<unknown>,
  code: ClawplaneErrorCode,
  message?: RegExp,
): Promise<ClawplaneError> {
  try {
    await call();
  } catch (err) {
    assert.ok(err instanceof ClawplaneError, `expected a ClawplaneError, got ${String(err)}`);
    assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`);
    if (message !== undefined) assert.match(err.message, message);
    return err;
  }
  assert.fail(`expected ${code}, but the call succeeded`);
}

async function drain<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = [];
  for await (const item of stream) items.push(item);
  return items;
}

for (const transport of ["grpc-web", "grpc"] as const) {
  describe(`over ${transport}`, () => {
    const client = (auth: ClawplaneAuth) => {
      const c = createClawplaneClient({ baseUrl: cp.baseUrl, auth, transport, defaultTimeoutMs: 10_000 });
      clients.push(c);
      return c;
    };
    const user = (prefix: string) => {
      const userId = uniqueUser(`${transport}-${prefix}`);
      return client({ sharedSecret: cp.sharedSecret, userId, userEmail: `${userId}@example.com` });
    };

    test("createTenant creates the caller's tenant (created=true)", async () => {
      const alice = user("create");
      const { tenant, created } = await alice.createTenant({ plan: "free" });
      assert.equal(created, true);
      assert.match(tenant.id, /^[0-9a-f-]{36}$/);
      assert.equal(tenant.plan, "free");
      assert.equal(tenant.status, TenantStatus.PENDING);
      assert.equal(tenant.owner?.kind.case, "userId");
      assert.ok(tenant.createdAt !== undefined);
      const json = toJson(TenantSchema, tenant) as Record<string, unknown>;
      assert.equal(json["status"], "TENANT_STATUS_PENDING");
      assert.match(String(json["createdAt"]), /^\d{4}-\d\d-\d\dT/);
    });

    test("createTenant again returns the same tenant (created=false)", async () => {
      const alice = user("idempotent");
      const first = await alice.createTenant({ plan: "free" });
      const again = await alice.createTenant({ plan: "free" });
      assert.equal(again.created, false);
      assert.equal(again.tenant.id, first.tenant.id);
      assert.equal(again.tenant.slug, first.tenant.slug);
    });

    test("getMyTenant returns the caller's tenant", async () => {
      const alice = user("get");
      await rejectsWith(() => alice.getMyTenant(), "NOT_FOUND");
      const { tenant } = await alice.createTenant({ plan: "free", slug: uniqueUser("s").replace(/^s-/, "slug-") });
      const mine = await alice.getMyTenant();
      assert.equal(mine.id, tenant.id);
      assert.equal(mine.slug, tenant.slug);
      assert.equal((await alice.getTenant(tenant.slug)).id, tenant.id);
    });

    test("streamLogs, restartTenant and sendMessage on a PENDING tenant are FAILED_PRECONDITION", async () => {
      const alice = user("pending");
      const { tenant } = await alice.createTenant({ plan: "free" });
      await rejectsWith(() => drain(alice.streamLogs(tenant.id, { tailLines: 10 })), "FAILED_PRECONDITION", /not placed on a host/);
      await rejectsWith(() => alice.restartTenant(tenant.id), "FAILED_PRECONDITION", /not placed on a host/);
      await rejectsWith(() => drain(alice.sendMessage(tenant.id, "hello")), "FAILED_PRECONDITION", /PENDING/);
    });

    test("a wrong shared secret is UNAUTHENTICATED", async () => {
      const mallory = client({ sharedSecret: "not-the-shared-secret", userId: "mallory", userEmail: "" });
      const err = await rejectsWith(() => mallory.getMyTenant(), "UNAUTHENTICATED", /wrong shared secret/);
      assert.equal(err.grpcStatus, 16);
      await rejectsWith(() => mallory.createTenant({ plan: "free" }), "UNAUTHENTICATED");
    });

    test("another user's tenant is NOT_FOUND", async () => {
      const alice = user("owner");
      const bob = user("stranger");
      const { tenant } = await alice.createTenant({ plan: "free" });
      await rejectsWith(() => bob.getTenant(tenant.id), "NOT_FOUND");
      await rejectsWith(() => bob.deleteTenant(tenant.id), "NOT_FOUND");
      await rejectsWith(() => bob.restartTenant(tenant.id), "NOT_FOUND");
      await rejectsWith(() => drain(bob.streamLogs(tenant.id)), "NOT_FOUND");
      await rejectsWith(() => drain(bob.sendMessage(tenant.id, "hi")), "NOT_FOUND");
      assert.equal((await alice.getMyTenant()).status, TenantStatus.PENDING, "alice's tenant is untouched");
    });

    test("getSubscription and changePlan: the plan, its period and usage; a plan change starts a new period", async () => {
      const alice = user("plan");
      const { tenant } = await alice.createTenant({ plan: "free" });
      const before = await alice.getSubscription(tenant.id);
      assert.equal(before.plan?.name, "free");
      assert.equal(before.status, SubscriptionStatus.ACTIVE);
      assert.equal(before.tokensUsed, 0n);
      assert.equal(before.quotaExceeded, false);
      const after = await alice.changePlan(tenant.id, "pro");
      assert.equal(after.plan?.name, "pro");
      assert.equal((await alice.getMyTenant()).plan, "pro");
      await rejectsWith(() => alice.changePlan(tenant.id, "no-such-plan"), "INVALID_ARGUMENT", /no-such-plan/);
      await rejectsWith(() => user("plan-other").getSubscription(tenant.id), "NOT_FOUND");
    });

    test("deleteTenant, then getMyTenant is NOT_FOUND", async () => {
      const alice = user("delete");
      const { tenant } = await alice.createTenant({ plan: "free" });
      const deleted = await alice.deleteTenant(tenant.id);
      assert.equal(deleted.id, tenant.id);
      assert.equal(deleted.status, TenantStatus.DELETED);
      assert.ok(deleted.deletedAt !== undefined);
      await rejectsWith(() => alice.getMyTenant(), "NOT_FOUND");
      await rejectsWith(() => alice.deleteTenant(tenant.id), "NOT_FOUND");
    });

    test("bearer auth with an HS256 JWT (a string or a function)", async () => {
      const sub = uniqueUser(`${transport}-sso`);
      let calls = 0;
      const withToken = client({ bearer: userJwt(cp, sub) });
      const withFunction = client({
        bearer: async () => {
          calls += 1;
          return userJwt(cp, sub);
        },
      });
      const { tenant, created } = await withToken.createTenant({ plan: "free" });
      assert.equal(created, true);
      assert.deepEqual(tenant.owner?.kind, { case: "userId", value: sub });
      assert.equal(tenant.displayName, `${sub}@example.com`);
      assert.equal((await withFunction.getMyTenant()).id, tenant.id);
      assert.equal((await withFunction.createTenant({ plan: "free" })).created, false);
      assert.equal(calls, 2, "the token function runs before every call");

      const expired = client({ bearer: userJwt(cp, sub, { exp: Math.floor(Date.now() / 1000) - 600 }) });
      await rejectsWith(() => expired.getMyTenant(), "UNAUTHENTICATED", /expired/);
      const forged = client({ bearer: userJwt({ ...cp, jwtSecret: "f".repeat(64) }, sub) });
      await rejectsWith(() => forged.getMyTenant(), "UNAUTHENTICATED");
      const wrongAudience = client({ bearer: userJwt(cp, sub, { aud: "someone-else" }) });
      await rejectsWith(() => wrongAudience.getMyTenant(), "UNAUTHENTICATED");
    });

    test("the service clients answer typed messages and throw ClawplaneErrors", async () => {
      const alice = user("raw");
      const { plans } = await alice.usage.listPlans({});
      assert.ok(plans.some((plan) => plan.name === "free"), "the free plan exists");
      await rejectsWith(() => alice.tenants.getTenant({ tenantId: "no-such-tenant" }), "NOT_FOUND");
      await rejectsWith(() => alice.tenants.listTenants({}), "PERMISSION_DENIED");
      await rejectsWith(() => alice.tenants.getTenant({ tenantId: "" }), "INVALID_ARGUMENT");
      await rejectsWith(() => alice.createTenant({ plan: "no-such-plan" }), "INVALID_ARGUMENT");

      const admin = client({ bearer: cp.adminToken });
      const { tenant } = await alice.createTenant({ plan: "free" });
      const { tenants } = await admin.tenants.listTenants({ pageSize: 500 });
      assert.ok(tenants.some((t) => t.id === tenant.id), "the admin token lists every tenant");
    });

    test("an aborted signal cancels the call (CANCELLED)", async () => {
      const alice = user("abort");
      const { tenant } = await alice.createTenant({ plan: "free" });
      const aborted = AbortSignal.abort();
      await rejectsWith(() => alice.getMyTenant({ signal: aborted }), "CANCELLED");
      await rejectsWith(() => drain(alice.streamLogs(tenant.id, { follow: true, signal: aborted })), "CANCELLED");
    });
  });
}
