// The tenant's past conversations, from any channel (the panel's chat,
// Telegram, ...): SessionService.ListSessions (most recent activity first)
// and, for the one picked, ListMessages (oldest first). Both read what the
// host agent has synced from OpenClaw, so a turn shows up a few seconds
// after it happened: Refresh (or a new `refreshKey`) fetches both again.
import {
  MessageRole,
  timestampDate,
  type ClawplaneClient,
  type Message,
  type Session,
  type TokenUsage,
} from "@clawplane/client";
import { useEffect, useLayoutEffect, useRef, useState } from "react";
import { ErrorNotice } from "./ErrorNotice";
import { describeError, type Problem } from "./errors";
import "./history-usage.css";

/** Sessions asked for (one page, the most recent). */
const SESSIONS_PAGE = 20;
/** Messages per ListMessages page, and how many pages one transcript may take. */
const MESSAGES_PAGE = 200;
const MAX_MESSAGE_PAGES = 5;

type RoleName = "user" | "assistant" | "tool" | "system" | "unknown";

const ROLES: Record<MessageRole, { name: RoleName; label: string }> = {
  [MessageRole.UNSPECIFIED]: { name: "unknown", label: "Other" },
  [MessageRole.USER]: { name: "user", label: "You" },
  [MessageRole.ASSISTANT]: { name: "assistant", label: "OpenClaw" },
  [MessageRole.TOOL_RESULT]: { name: "tool", label: "Tool result" },
  [MessageRole.SYSTEM]: { name: "system", label: "System" },
};

interface Transcript {
  sessionId: string;
  messages: Message[];
  /** More messages than MAX_MESSAGE_PAGES pages: only the first ones are shown. */
  truncated: boolean;
}

export function ConversationHistory(props: {
  tenantId: string;
  /** Changing it fetches the list (and the open conversation) again, e.g. after a chat turn. */
  refreshKey?: number;
  /** The panel's client (src/clawplane.ts). */
  client: ClawplaneClient;
  /** For error messages. */
  apiUrl: string;
}) {
  const { tenantId, refreshKey = 0, client, apiUrl } = props;

  // null until the first answer; kept on screen while a refresh runs or fails.
  const [sessions, setSessions] = useState<Session[] | null>(null);
  const [listProblem, setListProblem] = useState<Problem | null>(null);
  const [listBusy, setListBusy] = useState(true);
  // Finished list loads (answer or error): lets a test wait for "the load after my click".
  const [listLoads, setListLoads] = useState(0);
  const [selected, setSelected] = useState<string | null>(null);
  const [transcript, setTranscript] = useState<Transcript | null>(null);
  const [transcriptProblem, setTranscriptProblem] = useState<Problem | null>(null);
  const [transcriptBusy, setTranscriptBusy] = useState(false);
  // Bumped by Refresh and "Try again".
  const [attempt, setAttempt] = useState(0);
  const box = useRef<HTMLOListElement>(null);

  // The sessions: on mount, on Refresh, when refreshKey changes.
  useEffect(() => {
    const controller = new AbortController();
    const { signal } = controller;
    setListBusy(true);
    client.sessions.listSessions({ tenantId, pageSize: SESSIONS_PAGE }, { signal }).then(
      (res) => {
        if (signal.aborted) return;
        setSessions(res.sessions);
        setListProblem(null);
        setListBusy(false);
        setListLoads((n) => n + 1);
      },
      (err: unknown) => {
        if (signal.aborted) return; // superseded or unmounted: we cancelled it ourselves
        setListProblem(describeError(err, apiUrl));
        setListBusy(false);
        setListLoads((n) => n + 1);
      },
    );
    return () => controller.abort();
  }, [client, apiUrl, tenantId, refreshKey, attempt]);

  // The picked conversation's messages: when picked, on Refresh, when refreshKey changes.
  useEffect(() => {
    if (selected === null) return;
    const controller = new AbortController();
    const { signal } = controller;
    setTranscriptBusy(true);
    (async () => {
      try {
        const messages: Message[] = [];
        let pageToken = "";
        let pages = 0;
        do {
          const res = await client.sessions.listMessages(
            { tenantId, sessionId: selected, pageSize: MESSAGES_PAGE, pageToken },
            { signal },
          );
          messages.push(...res.messages);
          pageToken = res.nextPageToken;
          pages++;
        } while (pageToken !== "" && pages < MAX_MESSAGE_PAGES);
        if (signal.aborted) return;
        setTranscript({ sessionId: selected, messages, truncated: pageToken !== "" });
        setTranscriptProblem(null);
      } catch (err) {
        if (signal.aborted) return;
        setTranscriptProblem(describeError(err, apiUrl));
      } finally {
        if (!signal.aborted) setTranscriptBusy(false);
      }
    })();
    return () => controller.abort();
  }, [client, apiUrl, tenantId, selected, refreshKey, attempt]);

  const shown = transcript !== null && transcript.sessionId === selected ? transcript : null;

  // A conversation just opened: start at its latest message.
  const scrolledFor = useRef<string | null>(null);
  useLayoutEffect(() => {
    const el = box.current;
    if (el === null || shown === null || scrolledFor.current === shown.sessionId) return;
    scrolledFor.current = shown.sessionId;
    el.scrollTop = el.scrollHeight;
  }, [shown]);

  const refresh = () => setAttempt((n) => n + 1);
  const pick = (sessionId: string) => {
    if (sessionId === selected) return;
    setSelected(sessionId);
    setTranscriptProblem(null);
  };

  const state = sessions === null ? (listProblem !== null ? "error" : "loading") : listBusy ? "refreshing" : "ready";
  const selectedSession = sessions?.find((s) => s.id === selected);

  return (
    <div className="history" data-testid="history" data-state={state} data-loads={listLoads}>
      <div className="history-head">
        <h3>Conversations</h3>
        <span className="muted history-note">from every channel, synced a few seconds after each message</span>
        <button type="button" className="history-refresh" onClick={refresh} data-testid="history-refresh">
          {listBusy && sessions !== null ? "Refreshing…" : "Refresh"}
        </button>
      </div>

      {listProblem !== null && (
        <ErrorNotice problem={listProblem} onRetry={refresh} testId="history-error" />
      )}
      {sessions === null && listProblem === null && (
        <p className="muted" data-testid="history-loading" aria-busy="true">
          Loading conversations…
        </p>
      )}
      {sessions !== null && sessions.length === 0 && (
        <p className="muted history-empty" data-testid="history-empty">
          No conversations yet. Chat with your OpenClaw (here or on a connected channel) and it appears here.
        </p>
      )}

      {sessions !== null && sessions.length > 0 && (
        <div className="history-body">
          <ul className="history-sessions" aria-label="Conversations, most recent first">
            {sessions.map((session) => (
              <li key={session.id}>
                <SessionRow session={session} picked={session.id === selected} onPick={() => pick(session.id)} />
              </li>
            ))}
          </ul>

          <div
            className="history-transcript"
            data-testid="history-transcript"
            data-session-id={selected ?? ""}
            data-state={selected === null ? "none" : shown === null ? (transcriptProblem ? "error" : "loading") : transcriptBusy ? "refreshing" : "ready"}
          >
            {selected === null && <p className="muted">Pick a conversation to read it.</p>}
            {selected !== null && (
              <>
                {selectedSession !== undefined && <TranscriptHead session={selectedSession} />}
                {transcriptProblem !== null && (
                  <ErrorNotice problem={transcriptProblem} onRetry={refresh} testId="history-messages-error" />
                )}
                {shown === null && transcriptProblem === null && (
                  <p className="muted" aria-busy="true">
                    Loading messages…
                  </p>
                )}
                {shown !== null && shown.messages.length === 0 && (
                  <p className="muted">No messages synced for this conversation yet.</p>
                )}
                {shown !== null && shown.messages.length > 0 && (
                  <ol className="history-messages" ref={box} aria-label="Messages, oldest first">
                    {shown.messages.map((message) => (
                      <MessageItem key={message.id} message={message} />
                    ))}
                  </ol>
                )}
                {shown?.truncated === true && (
                  <p className="muted history-note">Only the first {shown.messages.length} messages are shown.</p>
                )}
              </>
            )}
          </div>
        </div>
      )}
    </div>
  );
}

function SessionRow(props: { session: Session; picked: boolean; onPick: () => void }) {
  const { session, picked, onPick } = props;
  const last = session.lastActivityAt ? timestampDate(session.lastActivityAt) : undefined;
  const count = Number(session.messageCount);
  return (
    <button
      type="button"
      className={`history-session ${picked ? "picked" : ""}`}
      onClick={onPick}
      aria-pressed={picked}
      data-testid="history-session"
      data-session-id={session.id}
    >
      <span className="history-channel">
        {channelName(session.channel)}
        {session.chatType !== "" && <span className="muted"> · {session.chatType}</span>}
      </span>
      <span className="history-when" title={last?.toLocaleString()}>
        {last !== undefined ? relativeTime(last) : "never"}
      </span>
      <span className="history-agent muted">agent {session.agentId || "default"}</span>
      <span className="history-count muted">
        {count.toLocaleString()} message{count === 1 ? "" : "s"}
      </span>
    </button>
  );
}

function TranscriptHead({ session }: { session: Session }) {
  const started = session.startedAt ? timestampDate(session.startedAt).toLocaleString() : "";
  const total = session.usage?.totalTokens ?? 0n;
  return (
    <p className="history-transcript-head muted">
      {channelName(session.channel)} with agent {session.agentId || "default"}
      {started !== "" && ` · started ${started}`}
      {session.model !== "" && ` · ${session.model}`}
      {total > 0n && ` · ${total.toLocaleString()} tokens`}
    </p>
  );
}

function MessageItem({ message }: { message: Message }) {
  const role = ROLES[message.role] ?? ROLES[MessageRole.UNSPECIFIED];
  const at = message.createdAt ? timestampDate(message.createdAt) : undefined;
  const time = at?.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  // Tool output and system text can be long and are not the conversation: folded away.
  if (role.name === "tool" || role.name === "system" || role.name === "unknown") {
    return (
      <li className={`history-message history-${role.name}`} data-testid="history-message" data-role={role.name}>
        <details>
          <summary>
            {role.label}
            {time !== undefined && <span className="history-time"> {time}</span>}
          </summary>
          <span className="history-text">{message.text}</span>
        </details>
      </li>
    );
  }
  return (
    <li
      className={`history-message history-${role.name}`}
      data-testid="history-message"
      data-role={role.name}
      title={at?.toLocaleString()}
    >
      <span className="history-who">
        {role.label}
        {time !== undefined && <span className="history-time"> {time}</span>}
      </span>
      {message.text !== "" ? (
        <span className="history-text" data-testid="history-message-text">
          {message.text}
        </span>
      ) : (
        <span className="history-text muted" data-testid="history-message-text">
          (no text: a tool call or an attachment)
        </span>
      )}
      {role.name === "assistant" && (message.model !== "" || hasTokens(message.usage)) && (
        <span className="history-meta" data-testid="history-message-meta">
          {[message.model, tokensText(message.usage)].filter((part) => part !== "").join(" · ")}
        </span>
      )}
    </li>
  );
}

function channelName(channel: string): string {
  if (channel === "" || channel === "unknown") return "Unknown channel";
  return channel.charAt(0).toUpperCase() + channel.slice(1);
}

function hasTokens(usage: TokenUsage | undefined): boolean {
  return usage !== undefined && (usage.inputTokens > 0n || usage.outputTokens > 0n || usage.totalTokens > 0n);
}

function tokensText(usage: TokenUsage | undefined): string {
  if (!hasTokens(usage) || usage === undefined) return "";
  return `${usage.inputTokens.toLocaleString()} in / ${usage.outputTokens.toLocaleString()} out tokens`;
}

const RELATIVE = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const UNITS: [Intl.RelativeTimeFormatUnit, number][] = [
  ["year", 365 * 24 * 3600],
  ["month", 30 * 24 * 3600],
  ["week", 7 * 24 * 3600],
  ["day", 24 * 3600],
  ["hour", 3600],
  ["minute", 60],
];

/** "2 minutes ago", "yesterday", ...; "just now" under a minute. */
function relativeTime(at: Date): string {
  const seconds = (at.getTime() - Date.now()) / 1000;
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size) return RELATIVE.format(Math.round(seconds / size), unit);
  }
  return "just now";
}
