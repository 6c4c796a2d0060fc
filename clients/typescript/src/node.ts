// @clawplane/client/node: everything of "@clawplane/client", plus the native
// gRPC transport (HTTP/2; h2c for http:// URLs) from @connectrpc/connect-node.
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { clientOverTransport, type ClawplaneClient } from "./client.js";
import { createClawplaneGrpcWebTransport } from "./index.js";
import {
  isTransportOptions,
  transportInterceptors,
  type ClawplaneClientOptions,
  type ClawplaneTransportOptions,
} from "./options.js";

export * from "./index.js";

export interface NodeClawplaneClientOptions extends Omit<ClawplaneClientOptions, "transport"> {
  /**
   * "grpc-web" (the default, over fetch) or "grpc" (native gRPC over one
   * multiplexed HTTP/2 connection; h2c for http:// URLs).
   */
  transport?: "grpc-web" | "grpc" | undefined;
  /**
   * With "grpc": the HTTP/2 connection to use, to share one between many
   * clients (e.g. one client per signed-in user in a backend). The client
   * then leaves it open on close(). Default: a connection of its own.
   */
  http2SessionManager?: Http2SessionManager | undefined;
}

/**
 * A client for the Clawplane API in Node: like the browser entry's, and
 * with `transport: "grpc"` for native gRPC over HTTP/2. Call `close()` when
 * done with a "grpc" client (its HTTP/2 connection otherwise closes after
 * being idle).
 */
export function createClawplaneClient(
  options: NodeClawplaneClientOptions | ClawplaneTransportOptions,
): ClawplaneClient {
  if (isTransportOptions(options)) return clientOverTransport(options.transport);
  if (options.transport === undefined || options.transport === "grpc-web") {
    return clientOverTransport(createClawplaneGrpcWebTransport(options));
  }
  if (options.transport !== "grpc") {
    throw new TypeError(`transport must be "grpc-web" or "grpc", not ${JSON.stringify(options.transport)}`);
  }
  const interceptors = transportInterceptors(options);
  const owned = options.http2SessionManager === undefined;
  const sessionManager = options.http2SessionManager ?? new Http2SessionManager(options.baseUrl);
  const transport = createGrpcTransport({
    baseUrl: options.baseUrl,
    interceptors,
    sessionManager,
    ...(options.defaultTimeoutMs !== undefined ? { defaultTimeoutMs: options.defaultTimeoutMs } : {}),
  });
  return clientOverTransport(transport, () => {
    if (owned) sessionManager.abort();
  });
}

export { Http2SessionManager };
