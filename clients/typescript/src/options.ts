// Options shared by the browser and Node entry points.
import type { Interceptor, Transport } from "@connectrpc/connect";
import { authInterceptor, inBrowser, type ClawplaneAuth } from "./auth.js";

export interface ClawplaneClientOptions {
  /** The API listener, e.g. "https://clawplane.internal:7700" or "http://127.0.0.1:7700". */
  baseUrl: string;
  /** The end user's credential: `{ bearer }` or `{ sharedSecret, userId, userEmail, teams? }`. */
  auth: ClawplaneAuth;
  /**
   * "grpc-web" (the default, over fetch: browsers, Node, edge runtimes).
   * The server does not speak the Connect protocol: to bring a connect
   * Transport of your own, pass `{ transport }` alone (see
   * ClawplaneTransportOptions).
   */
  transport?: "grpc-web" | undefined;
  /** More connect interceptors, run after the one that adds `auth`. */
  interceptors?: Interceptor[] | undefined;
  /**
   * Deadline of every call that has none of its own, in milliseconds
   * (sent as `grpc-timeout`). Absent: the server's (30 s for a call to
   * answer). The streaming helpers streamLogs and sendMessage never use it.
   */
  defaultTimeoutMs?: number | undefined;
  /** The fetch the grpc-web transport uses (default: globalThis.fetch). */
  fetch?: typeof globalThis.fetch | undefined;
  /**
   * The shared secret lets its holder act as any user, so it is refused in
   * a web page unless you set this (you should not).
   */
  dangerouslyAllowSharedSecretInBrowser?: boolean | undefined;
}

/**
 * A client over a connect Transport you built yourself: a grpc-web or gRPC
 * transport (never createConnectTransport: the server does not speak the
 * Connect protocol) with `authInterceptor(auth)` among its interceptors.
 */
export interface ClawplaneTransportOptions {
  transport: Transport;
}

export function isTransportOptions(options: object): options is ClawplaneTransportOptions {
  const transport = (options as { transport?: unknown }).transport;
  return typeof transport === "object" && transport !== null;
}

/** The interceptors a client's own transport gets, after checking the options. */
export function transportInterceptors(options: Omit<ClawplaneClientOptions, "transport">): Interceptor[] {
  if (typeof options.baseUrl !== "string") throw new TypeError("baseUrl must be the API's URL, e.g. http://127.0.0.1:7700");
  let url: URL;
  try {
    url = new URL(options.baseUrl);
  } catch {
    throw new TypeError(`baseUrl ${JSON.stringify(options.baseUrl)} is not a URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`baseUrl must be http:// or https://, not ${url.protocol}`);
  }
  if (options.auth === undefined || options.auth === null) {
    throw new TypeError("auth is required: { bearer } or { sharedSecret, userId, userEmail }");
  }
  if ("sharedSecret" in options.auth && inBrowser() && options.dangerouslyAllowSharedSecretInBrowser !== true) {
    throw new TypeError(
      "the shared secret must not reach a browser (it lets anyone act as any user): " +
        "call Clawplane from your backend, or use { bearer: <the user's SSO token> } in the browser",
    );
  }
  return [authInterceptor(options.auth), ...(options.interceptors ?? [])];
}
