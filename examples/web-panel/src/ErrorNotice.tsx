import type { Problem } from "./errors";
import { signOut } from "./session";

/** A failed call, in words: what went wrong, the server's message, what to do. */
export function ErrorNotice(props: { problem: Problem; onRetry?: (() => void) | undefined; testId?: string }) {
  const { problem, onRetry, testId = "error" } = props;
  return (
    <div className="notice notice-error" role="alert" data-testid={testId} data-code={problem.code ?? ""}>
      <strong>{problem.title}</strong>
      {problem.detail !== "" && (
        <p className="detail">
          {problem.code !== undefined && <code>{problem.code}</code>} {problem.detail}
        </p>
      )}
      <div className="actions">
        {onRetry !== undefined && !problem.signInAgain && (
          <button type="button" onClick={onRetry} data-testid={`${testId}-retry`}>
            Try again
          </button>
        )}
        {problem.signInAgain && (
          <button type="button" onClick={signOut} data-testid={`${testId}-sign-in`}>
            Sign in again
          </button>
        )}
      </div>
    </div>
  );
}
