// Turning a failed call into words a user understands. Every call of
// @clawplane/client rejects with a ClawplaneError: `code` is the gRPC status
// name for programs to branch on, `message` the server's own explanation.
import { ClawplaneError } from "@clawplane/client";

export interface Problem {
  /** What went wrong, in the user's terms. */
  title: string;
  /** The server's message (or the browser's), shown under the title. */
  detail: string;
  /** The gRPC status name, when the server answered. */
  code: string | undefined;
  /** The token is missing, expired or refused: offer to sign in again. */
  signInAgain: boolean;
}

/** A browser's own words for "the request never got an answer". */
const NETWORK_FAILURE = /failed to fetch|networkerror|load failed|network error/i;

export function describeError(err: unknown, apiUrl: string): Problem {
  if (!(err instanceof ClawplaneError)) {
    const detail = err instanceof Error ? err.message : String(err);
    return { title: "Something went wrong", detail, code: undefined, signInAgain: false };
  }
  const detail = err.message;
  const problem = (title: string, signInAgain = false): Problem => ({ title, detail, code: err.code, signInAgain });
  if ((err.code === "UNKNOWN" || err.code === "UNAVAILABLE") && NETWORK_FAILURE.test(detail)) {
    return problem(
      `Cannot reach Clawplane at ${apiUrl}. Is it running, and does it allow this page's origin ` +
        `(${window.location.origin}) with --cors-allowed-origins?`,
    );
  }
  switch (err.code) {
    case "UNAUTHENTICATED":
      return problem("Your sign-in was not accepted. Sign in again.", true);
    case "PERMISSION_DENIED":
      return problem("You are not allowed to do that.");
    case "NOT_FOUND":
      return problem("Your OpenClaw was not found; it may have been deleted.");
    case "FAILED_PRECONDITION":
      return problem("Your OpenClaw cannot do that right now.");
    case "INVALID_ARGUMENT":
      return problem("Clawplane refused the request.");
    case "ALREADY_EXISTS":
      return problem("That name is already taken.");
    case "RESOURCE_EXHAUSTED":
      return problem(
        err.retryAfterSeconds !== undefined
          ? `Too many requests: try again in ${err.retryAfterSeconds} s.`
          : "Too many requests: try again in a few seconds.",
      );
    case "DEADLINE_EXCEEDED":
      return problem("This is taking longer than expected; it goes on in the background.");
    case "UNAVAILABLE":
      return problem("Clawplane or your OpenClaw's host is unavailable right now; try again shortly.");
    case "CANCELLED":
      return problem("The request was cancelled.");
    default:
      return problem("Clawplane could not complete the request.");
  }
}
