// @clawplane/client: the Clawplane API (clawplane.v1) for browsers, Node and
// edge runtimes, over grpc-web. Node's native gRPC transport is in
// "@clawplane/client/node", so browser bundles never pull in Node modules.
import type { Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { clientOverTransport, type ClawplaneClient } from "./client.js";
import {
  isTransportOptions,
  transportInterceptors,
  type ClawplaneClientOptions,
  type ClawplaneTransportOptions,
} from "./options.js";

/**
 * A client for the Clawplane API. By default it speaks grpc-web (binary),
 * which the server accepts on its API port over HTTP/1.1 and HTTP/2, from
 * browsers (allow the page's origin with `--cors-allowed-origins`) and from
 * servers alike.
 */
export function createClawplaneClient(options: ClawplaneClientOptions | ClawplaneTransportOptions): ClawplaneClient {
  if (isTransportOptions(options)) return clientOverTransport(options.transport);
  if (options.transport !== undefined && options.transport !== "grpc-web") {
    throw new TypeError(
      `transport ${JSON.stringify(options.transport)} is not available here: use "grpc-web" ` +
        `(or import createClawplaneClient from "@clawplane/client/node" for "grpc")`,
    );
  }
  return clientOverTransport(createClawplaneGrpcWebTransport(options));
}

/** The grpc-web transport createClawplaneClient builds, with `auth` on it. */
export function createClawplaneGrpcWebTransport(options: Omit<ClawplaneClientOptions, "transport">): Transport {
  const interceptors = transportInterceptors(options);
  return createGrpcWebTransport({
    baseUrl: options.baseUrl,
    useBinaryFormat: true,
    interceptors,
    ...(options.defaultTimeoutMs !== undefined ? { defaultTimeoutMs: options.defaultTimeoutMs } : {}),
    ...(options.fetch !== undefined ? { fetch: options.fetch } : {}),
  });
}

export type { ClawplaneClientOptions, ClawplaneTransportOptions } from "./options.js";
export {
  createServiceClient,
  clientOverTransport,
  type ClawplaneClient,
  type CreateTenantOptions,
  type CreateTenantResult,
  type GetMyTenantOptions,
  type LogLine,
  type RequestOptions,
  type SendMessageDelta,
  type SendMessageDone,
  type SendMessageEvent,
  type SendMessageOptions,
  type StreamLogsOptions,
} from "./client.js";
export { authInterceptor, type BearerAuth, type ClawplaneAuth, type SharedSecretAuth } from "./auth.js";
export {
  CLAWPLANE_ERROR_DOMAIN,
  ClawplaneError,
  toClawplaneError,
  type ClawplaneErrorCode,
  type ClawplaneErrorOptions,
} from "./errors.js";
export type { CallOptions, Client, Interceptor, Transport } from "@connectrpc/connect";
// For building messages and turning them into JSON (int64 fields and
// Timestamp seconds are bigints, which JSON.stringify refuses).
export { create, fromJson, toJson } from "@bufbuild/protobuf";
export { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";

// The API's messages, enums and service descriptors (clawplane.v1).
export * from "./gen/clawplane/v1/config_pb.js";
export * from "./gen/clawplane/v1/errors_pb.js";
export * from "./gen/clawplane/v1/host_pb.js";
export * from "./gen/clawplane/v1/route_pb.js";
export * from "./gen/clawplane/v1/session_pb.js";
export * from "./gen/clawplane/v1/tenant_pb.js";
export * from "./gen/clawplane/v1/usage_pb.js";
export { ErrorInfoSchema, type ErrorInfo } from "./gen/google/rpc/error_details_pb.js";

/** The API this package tracks; the package version follows it. */
export const CLAWPLANE_API_VERSION = "clawplane.v1";
