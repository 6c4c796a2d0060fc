// ClawplaneError: the one error type every call of this package rejects with.
import { ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** `google.rpc.ErrorInfo.domain` of the reasons Clawplane sends. */
export const CLAWPLANE_ERROR_DOMAIN = "clawplane.dev";

/** gRPC status names, as the server documents them (`NOT_FOUND`, ...). */
export type ClawplaneErrorCode =
  | "CANCELLED"
  | "UNKNOWN"
  | "INVALID_ARGUMENT"
  | "DEADLINE_EXCEEDED"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "PERMISSION_DENIED"
  | "RESOURCE_EXHAUSTED"
  | "FAILED_PRECONDITION"
  | "ABORTED"
  | "OUT_OF_RANGE"
  | "UNIMPLEMENTED"
  | "INTERNAL"
  | "UNAVAILABLE"
  | "DATA_LOSS"
  | "UNAUTHENTICATED";

// Indexed by the gRPC status number (connect's `Code` uses the same numbers).
const CODE_NAMES: readonly ClawplaneErrorCode[] = [
  "UNKNOWN", // 0 is OK, never an error; treated as UNKNOWN
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
];

export interface ClawplaneErrorOptions {
  /** `google.rpc.ErrorInfo.reason` (domain clawplane.dev), e.g. "OPENCLAW_REJECTED". */
  reason?: string | undefined;
  /** `google.rpc.ErrorInfo.metadata`. */
  reasonMetadata?: Readonly<Record<string, string>> | undefined;
  /** Response headers and trailers of the failed call (e.g. `retry-after`). */
  metadata?: Headers | undefined;
  /** The underlying error (a ConnectError for failed calls). */
  cause?: unknown;
}

/**
 * A failed Clawplane call. `code` is the gRPC status name, `message` the
 * server's own message (for people; wording may change), `reason` the
 * machine-readable `clawplane.v1.ErrorReason` name when the server sent one.
 */
export class ClawplaneError extends Error {
  override readonly name = "ClawplaneError";
  /** gRPC status name, e.g. "NOT_FOUND". */
  readonly code: ClawplaneErrorCode;
  /** gRPC status number, e.g. 5 for NOT_FOUND. */
  readonly grpcStatus: number;
  /**
   * `reason` of the status' `google.rpc.ErrorInfo` detail with domain
   * "clawplane.dev": a `clawplane.v1.ErrorReason` name such as
   * "OPENCLAW_REJECTED"; undefined when the server sent none.
   */
  readonly reason: string | undefined;
  /** `metadata` of that ErrorInfo (empty when none). */
  readonly reasonMetadata: Readonly<Record<string, string>>;
  /** Response headers and trailers of the failed call. */
  readonly metadata: Headers;
  /**
   * Seconds to wait before retrying, from the `retry-after` metadata the
   * server sends with RESOURCE_EXHAUSTED (rate limits); undefined otherwise.
   */
  readonly retryAfterSeconds: number | undefined;

  constructor(code: ClawplaneErrorCode, message: string, options: ClawplaneErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.grpcStatus = Math.max(0, CODE_NAMES.indexOf(code, 1));
    this.reason = options.reason;
    this.reasonMetadata = options.reasonMetadata ?? {};
    this.metadata = options.metadata ?? new Headers();
    const retryAfter = Number.parseInt(this.metadata.get("retry-after") ?? "", 10);
    this.retryAfterSeconds = Number.isFinite(retryAfter) && retryAfter >= 0 ? retryAfter : undefined;
  }

  /**
   * True when `value` is a ClawplaneError (of `code`, if given); narrows the
   * type in `catch` blocks.
   */
  static is(value: unknown, code?: ClawplaneErrorCode): value is ClawplaneError {
    return value instanceof ClawplaneError && (code === undefined || value.code === code);
  }
}

/**
 * Converts anything a call can throw (a ConnectError from the transport, an
 * AbortError, ...) into a ClawplaneError. ClawplaneErrors pass through.
 */
export function toClawplaneError(err: unknown): ClawplaneError {
  if (err instanceof ClawplaneError) return err;
  const connectError = ConnectError.from(err);
  const code = CODE_NAMES[connectError.code] ?? "UNKNOWN";
  let reason: string | undefined;
  let reasonMetadata: Record<string, string> | undefined;
  try {
    const info = connectError
      .findDetails(ErrorInfoSchema)
      .find((detail) => detail.domain === CLAWPLANE_ERROR_DOMAIN);
    if (info !== undefined) {
      reason = info.reason;
      reasonMetadata = { ...info.metadata };
    }
  } catch {
    // A malformed detail must not hide the status itself.
  }
  return new ClawplaneError(code, connectError.rawMessage, {
    reason,
    reasonMetadata,
    metadata: connectError.metadata,
    cause: err,
  });
}

