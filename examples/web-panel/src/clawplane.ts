// One Clawplane client for the page: grpc-web straight from the browser to
// the control plane's API port, as the signed-in user (their SSO token).
// The control plane must list this page's origin:
//   clawplane serve --cors-allowed-origins https://app.example.com
import { createClawplaneClient, type ClawplaneClient } from "@clawplane/client";
import { getToken } from "./session";

/**
 * The API's base URL: `?api=` (handy to point one build at another control
 * plane), else VITE_CLAWPLANE_URL at build time, else a local `clawplane serve`.
 */
export function apiBaseUrl(): string {
  const fromQuery = new URL(window.location.href).searchParams.get("api");
  const fromBuild = import.meta.env.VITE_CLAWPLANE_URL as string | undefined;
  return (fromQuery || fromBuild || "http://127.0.0.1:7700").replace(/\/+$/, "");
}

export function createClient(baseUrl: string): ClawplaneClient {
  return createClawplaneClient({
    baseUrl,
    // A function, so every call carries the current (possibly refreshed) token.
    auth: { bearer: getToken },
    // Calls answer within the server's default 30 s; restart asks for more.
    defaultTimeoutMs: 30_000,
  });
}

/** How long a restart may take: the server answers once the gateway is ready again. */
export const RESTART_TIMEOUT_MS = 180_000;
