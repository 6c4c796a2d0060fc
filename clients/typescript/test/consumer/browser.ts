// A web app's use of the package, type-checked by `npm run pack:check`
// against the packed tarball (bundler resolution, DOM, no Node types).
import { ClawplaneError, TenantStatus, createClawplaneClient, type SendMessageEvent } from "@clawplane/client";

const client = createClawplaneClient({
  baseUrl: "https://clawplane.example.com",
  auth: { bearer: async () => "the user's SSO token" },
});

export async function chat(text: string): Promise<string> {
  try {
    const tenant = await client.getMyTenant();
    if (tenant.status !== TenantStatus.RUNNING) return `not running: ${tenant.statusMessage}`;
    let answer = "";
    for await (const event of client.sendMessage(tenant.id, text)) {
      const e: SendMessageEvent = event;
      if (e.type === "delta") answer += e.text;
    }
    const overview = await client.usage.getOverview({ tenantId: tenant.id });
    return `${answer} (${overview.monthMessages} messages this month)`;
  } catch (err) {
    if (ClawplaneError.is(err, "NOT_FOUND")) return "no tenant yet";
    throw err;
  }
}
