// The two credential forms the API accepts, as connect interceptors that set
// the request headers.
import type { Interceptor } from "@connectrpc/connect";

/**
 * The end user's SSO token (a JWT the server verifies), sent as
 * `authorization: Bearer <token>`. A function is called before every
 * request, so it can return a refreshed token. An operator's admin token
 * works the same way.
 */
export interface BearerAuth {
  bearer: string | (() => string | Promise<string>);
}

/**
 * The shared-secret form, for a backend that has already authenticated the
 * user (backend-for-frontend): `x-shared-secret`, `x-user-id`,
 * `x-user-email` and `x-user-teams`. Never use it in a browser: anyone who
 * holds the secret can act as any user.
 */
export interface SharedSecretAuth {
  sharedSecret: string;
  /** The user's stable id in your product (the tenant owner). */
  userId: string;
  /** The user's email (the default display name of their tenant); "" for none. */
  userEmail: string;
  /** Teams the user belongs to (for team tenants); ids must not contain ','. */
  teams?: readonly string[] | undefined;
}

export type ClawplaneAuth = BearerAuth | SharedSecretAuth;

/**
 * A connect interceptor that adds `auth`'s headers to every request. Use it
 * when you build your own Transport; createClawplaneClient adds it itself.
 */
export function authInterceptor(auth: ClawplaneAuth): Interceptor {
  if ("bearer" in auth) {
    const { bearer } = auth;
    if (typeof bearer !== "string" && typeof bearer !== "function") {
      throw new TypeError("auth.bearer must be a string or a function returning the token");
    }
    return (next) => async (req) => {
      const token = typeof bearer === "string" ? bearer : await bearer();
      req.header.set("authorization", `Bearer ${token}`);
      return next(req);
    };
  }
  if ("sharedSecret" in auth) {
    const headers = sharedSecretHeaders(auth);
    return (next) => async (req) => {
      for (const [name, value] of headers) req.header.set(name, value);
      return next(req);
    };
  }
  throw new TypeError("auth must be { bearer } or { sharedSecret, userId, userEmail, teams? }");
}

function sharedSecretHeaders(auth: SharedSecretAuth): [string, string][] {
  if (typeof auth.sharedSecret !== "string" || auth.sharedSecret === "") {
    throw new TypeError("auth.sharedSecret must be a non-empty string");
  }
  if (typeof auth.userId !== "string" || auth.userId.trim() === "") {
    throw new TypeError("auth.userId must be a non-empty string");
  }
  const headers: [string, string][] = [
    ["x-shared-secret", auth.sharedSecret],
    ["x-user-id", auth.userId],
  ];
  if (typeof auth.userEmail === "string" && auth.userEmail !== "") {
    headers.push(["x-user-email", auth.userEmail]);
  }
  const teams = auth.teams ?? [];
  for (const team of teams) {
    if (typeof team !== "string" || team.includes(",") || team.trim() === "") {
      throw new TypeError(`auth.teams: ${JSON.stringify(team)} is not a valid team id (non-empty, no ',')`);
    }
  }
  if (teams.length > 0) headers.push(["x-user-teams", teams.join(",")]);
  return headers;
}

/** True in a web page (a `window` with a `document`). */
export function inBrowser(): boolean {
  const g = globalThis as { window?: { document?: unknown } };
  return typeof g.window === "object" && g.window !== null && typeof g.window.document !== "undefined";
}
