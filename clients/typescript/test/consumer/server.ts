// A Node backend's use of the package, type-checked by `npm run pack:check`
// against the packed tarball (nodenext resolution, Node types).
import { createClawplaneClient, Http2SessionManager, type ClawplaneClient } from "@clawplane/client/node";

const connection = new Http2SessionManager("http://127.0.0.1:7700");

export function forUser(userId: string, userEmail: string): ClawplaneClient {
  return createClawplaneClient({
    baseUrl: "http://127.0.0.1:7700",
    transport: "grpc",
    http2SessionManager: connection,
    auth: { sharedSecret: process.env["CLAWPLANE_SHARED_SECRET"] ?? "", userId, userEmail },
  });
}
