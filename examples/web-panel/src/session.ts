// The stand-in for your product's SSO session.
//
// In your app the user is already signed in, and your SSO library hands out
// their access token (a JWT the control plane verifies with
// CLAWPLANE_JWT_HS256_SECRET / _PUBLIC_KEY_FILE / CLAWPLANE_JWKS_FILE and
// CLAWPLANE_JWT_ISSUER / _AUDIENCE). Replace `getToken` with that library's
// call (e.g. `() => auth0.getTokenSilently()`): the client calls it before
// every request, so refreshed tokens are picked up.
//
// Here the token arrives as `?token=<jwt>` (taken out of the address bar at
// once, so it is neither bookmarked nor sent as a Referer) or is pasted into
// the sign-in form, and lives in sessionStorage: this tab only, gone when
// the tab closes. Never put the shared secret in a page: it lets anyone act
// as any user (see server/bff.mjs for that pattern).

const STORAGE_KEY = "clawplane-example.sso-token";

let token: string | null = null;
const listeners = new Set<() => void>();

/** Reads `?token=` once at start-up, else the token this tab kept. */
export function initSession(): void {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl !== null) {
    url.searchParams.delete("token");
    window.history.replaceState(window.history.state, "", url);
    setToken(fromUrl);
    return;
  }
  token = sessionStorage.getItem(STORAGE_KEY);
}

/** The current token; the client's `auth.bearer` calls this for every request. */
export function getToken(): string {
  if (token === null) throw new Error("not signed in");
  return token;
}

export function hasToken(): boolean {
  return token !== null;
}

export function setToken(value: string): void {
  token = value.trim();
  sessionStorage.setItem(STORAGE_KEY, token);
  listeners.forEach((listener) => listener());
}

export function signOut(): void {
  token = null;
  sessionStorage.removeItem(STORAGE_KEY);
  listeners.forEach((listener) => listener());
}

export function onSessionChange(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** Who the token says the user is, for display only (the server verifies it). */
export function describeUser(): string | null {
  const payload = token?.split(".")[1];
  if (payload === undefined) return null;
  try {
    const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/"));
    const claims = JSON.parse(json) as { email?: unknown; sub?: unknown };
    if (typeof claims.email === "string" && claims.email !== "") return claims.email;
    if (typeof claims.sub === "string") return claims.sub;
  } catch {
    // Not a JWT we can read: the server will say what is wrong with it.
  }
  return null;
}
