// The user's instance: status (with the server's explanation), URL,
// restart, delete (after a confirmation), a chat with its agent (while it
// is RUNNING) and the live logs.
import { TenantStatus, timestampDate, type ClawplaneClient, type Tenant } from "@clawplane/client";
import { useState, type MouseEvent } from "react";
import { Chat } from "./Chat";
import { ConversationHistory } from "./ConversationHistory";
import { LiveLogs } from "./LiveLogs";
import type { Action } from "./MyOpenClaw";
import { UsageOverview } from "./UsageOverview";
import { getToken } from "./session";

/** What each status means to the user. */
const STATUS_TEXT: Record<TenantStatus, { label: string; hint: string; tone: string }> = {
  [TenantStatus.UNSPECIFIED]: { label: "Unknown", hint: "", tone: "grey" },
  [TenantStatus.PENDING]: { label: "Waiting for a server", hint: "It starts as soon as a server has room.", tone: "amber" },
  [TenantStatus.PROVISIONING]: { label: "Setting up", hint: "This takes about a minute.", tone: "amber" },
  [TenantStatus.RUNNING]: { label: "Running", hint: "", tone: "green" },
  [TenantStatus.FAILED]: { label: "Failed", hint: "Restarting it may help.", tone: "red" },
  [TenantStatus.SUSPENDED]: { label: "Suspended", hint: "An operator has stopped it.", tone: "red" },
  [TenantStatus.DELETED]: { label: "Deleted", hint: "", tone: "grey" },
  [TenantStatus.HIBERNATED]: {
    label: "Asleep",
    hint: "It sleeps while unused and wakes on your next message or visit (a few seconds).",
    tone: "green",
  },
};

const BUSY_TEXT: Record<Action, string> = {
  create: "Creating…",
  restart: "Restarting…",
  delete: "Deleting…",
};

export function InstanceCard(props: {
  client: ClawplaneClient;
  apiUrl: string;
  tenant: Tenant;
  action: Action | null;
  onRestart: () => void;
  onDelete: () => void;
}) {
  const { client, apiUrl, tenant, action, onRestart, onDelete } = props;
  const [confirming, setConfirming] = useState(false);
  const status = STATUS_TEXT[tenant.status] ?? STATUS_TEXT[TenantStatus.UNSPECIFIED];
  const statusName = TenantStatus[tenant.status] ?? "UNSPECIFIED";
  const placed = tenant.hostId !== "";
  // A running gateway, or a failed one (a restart may bring it back).
  const canRestart =
    placed && action === null && (tenant.status === TenantStatus.RUNNING || tenant.status === TenantStatus.FAILED);
  // SendMessage needs a RUNNING gateway, or a hibernated one, which the turn
  // wakes (FAILED_PRECONDITION otherwise). The chat stays (disabled) through
  // a restart, so the conversation survives it.
  const running = tenant.status === TenantStatus.RUNNING || tenant.status === TenantStatus.HIBERNATED;
  const showChat = placed && (running || action === "restart");
  const showLogs = placed && (tenant.status === TenantStatus.RUNNING || tenant.status === TenantStatus.FAILED);
  const created = tenant.createdAt ? timestampDate(tenant.createdAt).toLocaleString() : "";

  // The bridge signs the user in on their tenant's host name with this link
  // (it sets a session cookie for that host alone, then redirects to `next`).
  const openInstance = (event: MouseEvent<HTMLAnchorElement>) => {
    event.preventDefault();
    const url = new URL("/_clawplane/session", tenant.url);
    url.searchParams.set("token", getToken());
    url.searchParams.set("next", "/");
    window.open(url, "_blank", "noopener,noreferrer");
  };

  return (
    <div className="card" data-testid="instance" data-tenant-id={tenant.id}>
      <div className="instance-head">
        <h2>{tenant.displayName || tenant.slug}</h2>
        <span
          className={`badge badge-${action !== null ? "amber" : status.tone}`}
          data-testid="instance-status"
          data-status={statusName}
          data-busy={action ?? ""}
          aria-live="polite"
        >
          {action !== null ? BUSY_TEXT[action] : status.label}
        </span>
      </div>
      {(tenant.statusMessage !== "" || status.hint !== "") && (
        <p className="status-message" data-testid="instance-status-message">
          {tenant.statusMessage || status.hint}
        </p>
      )}
      <dl className="facts">
        <dt>Address</dt>
        <dd>
          {tenant.url !== "" ? (
            <a href={tenant.url} onClick={openInstance} data-testid="instance-url" target="_blank" rel="noreferrer">
              {tenant.url}
            </a>
          ) : (
            <span className="muted">not known yet</span>
          )}
        </dd>
        <dt>Plan</dt>
        <dd data-testid="instance-plan">{tenant.plan}</dd>
        <dt>Name</dt>
        <dd data-testid="instance-slug">{tenant.slug}</dd>
        {created !== "" && (
          <>
            <dt>Created</dt>
            <dd>{created}</dd>
          </>
        )}
      </dl>

      <div className="actions">
        <button type="button" onClick={onRestart} disabled={!canRestart} data-testid="restart-instance">
          {action === "restart" ? "Restarting…" : "Restart"}
        </button>
        <button
          type="button"
          className="danger"
          onClick={() => setConfirming(true)}
          disabled={action !== null || confirming}
          data-testid="delete-instance"
        >
          {action === "delete" ? "Deleting…" : "Delete"}
        </button>
      </div>

      {confirming && action === null && (
        <div className="confirm" role="alertdialog" aria-labelledby="confirm-title" data-testid="delete-confirm">
          <p id="confirm-title">
            <strong>Delete your OpenClaw?</strong> It stops at once, and its conversations and settings are archived;
            you can create a new one afterwards.
          </p>
          <div className="actions">
            <button
              type="button"
              className="danger"
              onClick={() => {
                setConfirming(false);
                onDelete();
              }}
              data-testid="confirm-delete"
            >
              Yes, delete it
            </button>
            <button type="button" onClick={() => setConfirming(false)} data-testid="cancel-delete">
              Cancel
            </button>
          </div>
        </div>
      )}

      {/* Keys unique among the card's children (React matches siblings by key). */}
      {showChat && (
        <Chat key={`chat-${tenant.id}`} client={client} apiUrl={apiUrl} tenantId={tenant.id} disabled={action !== null || !running} />
      )}

      {running && <ConversationHistory key={`history-${tenant.id}`} client={client} apiUrl={apiUrl} tenantId={tenant.id} />}
      {running && <UsageOverview key={`usage-${tenant.id}`} client={client} apiUrl={apiUrl} tenantId={tenant.id} />}
      {showLogs && <LiveLogs key={tenant.id} client={client} apiUrl={apiUrl} tenantId={tenant.id} />}
    </div>
  );
}
