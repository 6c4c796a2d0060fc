// The "My OpenClaw" section: the signed-in user's one OpenClaw (Clawplane
// tenant). No instance: offer the plans and create one. An instance: its
// status, URL and live logs, with restart and delete.
import { ClawplaneError, TenantStatus, type ClawplaneClient, type Tenant } from "@clawplane/client";
import { useCallback, useEffect, useRef, useState } from "react";
import { RESTART_TIMEOUT_MS } from "./clawplane";
import { CreateInstance } from "./CreateInstance";
import { ErrorNotice } from "./ErrorNotice";
import { describeError, type Problem } from "./errors";
import { InstanceCard } from "./InstanceCard";

type View =
  | { kind: "loading" }
  | { kind: "none" }
  | { kind: "instance"; tenant: Tenant }
  | { kind: "error"; problem: Problem };

export type Action = "create" | "restart" | "delete";

/** Statuses that change on their own soon: poll often while in them. */
const SETTLING = new Set([TenantStatus.PENDING, TenantStatus.PROVISIONING]);
const FAST_POLL_MS = 2_000;
const SLOW_POLL_MS = 10_000;

export function MyOpenClaw(props: { client: ClawplaneClient; apiUrl: string }) {
  const { client, apiUrl } = props;
  const [view, setView] = useState<View>({ kind: "loading" });
  // A refresh that failed while something is on screen: keep showing it, say so.
  const [staleProblem, setStaleProblem] = useState<Problem | null>(null);
  const [action, setAction] = useState<Action | null>(null);
  const [actionProblem, setActionProblem] = useState<Problem | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [reload, setReload] = useState(0);

  // Bumped by every change this page makes, so that an older poll's answer
  // (sent before the change) never overwrites the newer state.
  const epoch = useRef(0);
  // What is on screen, for the poller (which outlives renders).
  const shown = useRef(view);
  useEffect(() => {
    shown.current = view;
  }, [view]);

  /**
   * Fetches the user's tenant and shows it; answers when to look again
   * (sooner while it is settling), or null when the user must act first.
   */
  const refresh = useCallback(
    async (signal: AbortSignal): Promise<number | null> => {
      const sent = epoch.current;
      try {
        const tenant = await client.getMyTenant({ signal });
        if (sent === epoch.current && !signal.aborted) {
          setView({ kind: "instance", tenant });
          setStaleProblem(null);
        }
        return SETTLING.has(tenant.status) ? FAST_POLL_MS : SLOW_POLL_MS;
      } catch (err) {
        if (sent !== epoch.current || signal.aborted) return SLOW_POLL_MS;
        if (ClawplaneError.is(err, "NOT_FOUND")) {
          setView({ kind: "none" });
          setStaleProblem(null);
          return SLOW_POLL_MS;
        }
        const problem = describeError(err, apiUrl);
        const showing = shown.current.kind === "instance" || shown.current.kind === "none";
        if (showing) setStaleProblem(problem);
        else setView({ kind: "error", problem });
        // Keep refreshing what is on screen; a first load that failed waits for "Try again".
        return showing && !problem.signInAgain ? SLOW_POLL_MS : null;
      }
    },
    [client, apiUrl],
  );

  // Load, then poll; an action restarts the cycle (`reload`).
  useEffect(() => {
    const controller = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const tick = async () => {
      const next = await refresh(controller.signal);
      if (next !== null && !controller.signal.aborted) timer = setTimeout(tick, next);
    };
    void tick();
    return () => {
      controller.abort();
      clearTimeout(timer);
    };
  }, [refresh, reload]);

  const run = useCallback(
    async (which: Action, call: () => Promise<void>) => {
      setAction(which);
      setActionProblem(null);
      setNotice(null);
      try {
        await call();
      } catch (err) {
        setActionProblem(describeError(err, apiUrl));
      } finally {
        setAction(null);
      }
    },
    [apiUrl],
  );

  const create = (plan: string) =>
    run("create", async () => {
      const { tenant, created } = await client.createTenant({ plan });
      epoch.current++;
      setView({ kind: "instance", tenant });
      setReload((n) => n + 1); // poll the new instance at once, and often while it settles
      if (!created) setNotice("You already had an OpenClaw: here it is.");
    });

  const restart = (tenant: Tenant) =>
    run("restart", async () => {
      // Answers once the gateway is ready again, which can take a while.
      const restarted = await client.restartTenant(tenant.id, { timeoutMs: RESTART_TIMEOUT_MS });
      epoch.current++;
      setView({ kind: "instance", tenant: restarted });
      setNotice(`Restarted at ${new Date().toLocaleTimeString()}: your OpenClaw is ready again.`);
    });

  const remove = (tenant: Tenant) =>
    run("delete", async () => {
      try {
        await client.deleteTenant(tenant.id);
      } catch (err) {
        // Already gone (deleted elsewhere): the outcome the user asked for.
        if (!ClawplaneError.is(err, "NOT_FOUND")) throw err;
      }
      epoch.current++;
      setView({ kind: "none" });
      setNotice("Your OpenClaw was deleted. Its data is archived.");
    });

  const retry = () => {
    setView((current) => (current.kind === "error" ? { kind: "loading" } : current));
    setReload((n) => n + 1);
  };

  return (
    <section className="section" data-testid="my-openclaw" data-view={view.kind}>
      {notice !== null && (
        <div className="notice notice-ok" role="status" data-testid="notice">
          {notice}
        </div>
      )}
      {actionProblem !== null && <ErrorNotice problem={actionProblem} testId="action-error" />}
      {staleProblem !== null && (
        <ErrorNotice problem={staleProblem} onRetry={retry} testId="refresh-error" />
      )}
      {view.kind === "loading" && (
        <div className="card muted" data-testid="loading" aria-busy="true">
          Loading your OpenClaw…
        </div>
      )}
      {view.kind === "error" && <ErrorNotice problem={view.problem} onRetry={retry} />}
      {view.kind === "none" && (
        <CreateInstance client={client} apiUrl={apiUrl} busy={action === "create"} onCreate={create} />
      )}
      {view.kind === "instance" && (
        <InstanceCard
          client={client}
          apiUrl={apiUrl}
          tenant={view.tenant}
          action={action}
          onRestart={() => restart(view.tenant)}
          onDelete={() => remove(view.tenant)}
        />
      )}
    </section>
  );
}
