// No instance yet: the plans (UsageService.ListPlans) and a create button.
import type { ClawplaneClient, Plan } from "@clawplane/client";
import { useEffect, useState, type FormEvent } from "react";
import { ErrorNotice } from "./ErrorNotice";
import { describeError, type Problem } from "./errors";

type Plans = { kind: "loading" } | { kind: "ready"; plans: Plan[] } | { kind: "error"; problem: Problem };

export function CreateInstance(props: {
  client: ClawplaneClient;
  apiUrl: string;
  busy: boolean;
  onCreate: (plan: string) => void;
}) {
  const { client, apiUrl, busy, onCreate } = props;
  const [plans, setPlans] = useState<Plans>({ kind: "loading" });
  const [chosen, setChosen] = useState<string | null>(null);
  const [attempt, setAttempt] = useState(0);

  useEffect(() => {
    const controller = new AbortController();
    setPlans({ kind: "loading" });
    client.usage.listPlans({}, { signal: controller.signal }).then(
      (res) => {
        setPlans({ kind: "ready", plans: res.plans });
        // Cheapest first: preselect it.
        setChosen((current) => current ?? res.plans[0]?.name ?? null);
      },
      (err: unknown) => {
        if (!controller.signal.aborted) setPlans({ kind: "error", problem: describeError(err, apiUrl) });
      },
    );
    return () => controller.abort();
  }, [client, apiUrl, attempt]);

  const submit = (event: FormEvent) => {
    event.preventDefault();
    if (chosen !== null && !busy) onCreate(chosen);
  };

  return (
    <div className="card" data-testid="no-instance">
      <h2>You have no OpenClaw yet</h2>
      <p className="muted">Your own OpenClaw assistant, running for you alone. Pick a plan to create it.</p>
      {plans.kind === "loading" && (
        <p className="muted" data-testid="plans-loading" aria-busy="true">
          Loading plans…
        </p>
      )}
      {plans.kind === "error" && (
        <ErrorNotice problem={plans.problem} onRetry={() => setAttempt((n) => n + 1)} testId="plans-error" />
      )}
      {plans.kind === "ready" && (
        <form onSubmit={submit}>
          <fieldset className="plans" disabled={busy}>
            <legend>Plan</legend>
            {plans.plans.map((plan) => (
              <label
                key={plan.name}
                className={`plan ${chosen === plan.name ? "chosen" : ""}`}
                data-testid={`plan-option-${plan.name}`}
              >
                <input
                  type="radio"
                  name="plan"
                  value={plan.name}
                  checked={chosen === plan.name}
                  onChange={() => setChosen(plan.name)}
                />
                <span className="plan-name">{plan.displayName || plan.name}</span>
                <span className="plan-price">{price(plan)}</span>
                <span className="plan-limits">{limits(plan)}</span>
              </label>
            ))}
          </fieldset>
          <button type="submit" className="primary" data-testid="create-instance" disabled={busy || chosen === null}>
            {busy ? "Creating…" : "Create my OpenClaw"}
          </button>
        </form>
      )}
    </div>
  );
}

function price(plan: Plan): string {
  const amount = Number(plan.priceMonthlyCents) / 100;
  try {
    return `${new Intl.NumberFormat(undefined, { style: "currency", currency: plan.currency || "USD" }).format(amount)} / month`;
  } catch {
    return `${amount.toFixed(2)} ${plan.currency} / month`;
  }
}

function limits(plan: Plan): string {
  const messages =
    plan.monthlyMessageLimit === 0n
      ? "unlimited messages"
      : `${plan.monthlyMessageLimit.toLocaleString()} messages a month`;
  const channels =
    plan.channelLimit === 0 ? "any number of channels" : `${plan.channelLimit} channel${plan.channelLimit === 1 ? "" : "s"}`;
  return `${messages}, ${channels}`;
}
