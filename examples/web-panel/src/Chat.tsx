// A chat with the tenant's OpenClaw agent (SessionService.SendMessage via
// `client.sendMessage`): the answer appears as the model writes it (`delta`
// events), and `done` names the conversation (`sessionKey`), which the next
// message sends back so the agent sees what was said before. Stop aborts the
// turn (the AbortSignal cancels the call; the server aborts the turn in the
// gateway); leaving the page does the same.
//
// One wrinkle: the control plane knows a conversation once the host agent
// has synced its transcript. `done` waits a few seconds for that; when it
// comes without a `sessionId` the sync is still on its way, and a message
// sent with that `sessionKey` meanwhile answers NOT_FOUND (before any turn
// starts, so sending it again is safe). The chat then tries again for a
// little while instead of showing the error at once.
import { ClawplaneError, type ClawplaneClient, type SendMessageDone } from "@clawplane/client";
import { useEffect, useLayoutEffect, useRef, useState, type FormEvent, type KeyboardEvent } from "react";
import { ErrorNotice } from "./ErrorNotice";
import { describeError, type Problem } from "./errors";

type Role = "user" | "assistant";
/** streaming: deltas are arriving; done: `done` came; stopped: the user pressed Stop; failed: the call failed. */
type MessageState = "streaming" | "done" | "stopped" | "failed";

interface ChatMessage {
  n: number;
  role: Role;
  text: string;
  state: MessageState;
  /** How many `delta` events built this answer. */
  deltas: number;
  /** How many times it was sent again while its conversation synced. */
  retries: number;
}

/** How long a continuation may wait for its conversation to sync (see above). */
const SYNC_GRACE_MS = 20_000;
const SYNC_RETRY_MS = 1_000;

/** What `done` said about the last answered turn. */
interface TurnInfo {
  model: string;
  inputTokens: bigint;
  outputTokens: bigint;
  totalTokens: bigint;
}

export function Chat(props: {
  client: ClawplaneClient;
  apiUrl: string;
  tenantId: string;
  /** The instance is busy (restarting, being deleted): no new turns meanwhile. */
  disabled: boolean;
}) {
  const { client, apiUrl, tenantId, disabled } = props;
  const [messages, setMessages] = useState<ChatMessage[]>([]);
  const [draft, setDraft] = useState("");
  const [sessionKey, setSessionKey] = useState<string | undefined>(undefined);
  // The last `done` came before its transcript synced (no sessionId).
  const unsynced = useRef(false);
  const [synced, setSynced] = useState(true);
  const [turn, setTurn] = useState<AbortController | null>(null);
  const [problem, setProblem] = useState<Problem | null>(null);
  const [info, setInfo] = useState<TurnInfo | null>(null);
  const counter = useRef(0);
  const box = useRef<HTMLOListElement>(null);
  const stickToBottom = useRef(true);
  // The turn in flight, for the unmount cleanup.
  const inFlight = useRef<AbortController | null>(null);

  // Leaving (the section unmounts, the instance goes away): abort the turn.
  useEffect(() => () => inFlight.current?.abort(), []);

  // Follow the answer as it grows unless the user scrolled up to read.
  useLayoutEffect(() => {
    const el = box.current;
    if (el !== null && stickToBottom.current) el.scrollTop = el.scrollHeight;
  }, [messages]);

  const busy = turn !== null;

  const send = async () => {
    const text = draft.trim();
    if (text === "" || busy || disabled) return;
    const controller = new AbortController();
    inFlight.current = controller;
    setTurn(controller);
    setProblem(null);
    setDraft("");
    stickToBottom.current = true;
    const answer = (counter.current += 2);
    setMessages((old) => [
      ...old,
      { n: answer - 1, role: "user", text, state: "done", deltas: 0, retries: 0 },
      { n: answer, role: "assistant", text: "", state: "streaming", deltas: 0, retries: 0 },
    ]);
    const update = (change: (message: ChatMessage) => ChatMessage) =>
      setMessages((old) => old.map((message) => (message.n === answer ? change(message) : message)));

    let done: SendMessageDone | undefined;
    const started = Date.now();
    const mayWaitForSync = sessionKey !== undefined && unsynced.current;
    try {
      for (;;) {
        let events = 0;
        try {
          // No deadline: a turn takes as long as the model does; Stop ends it.
          for await (const event of client.sendMessage(tenantId, text, { sessionKey, signal: controller.signal })) {
            events++;
            if (event.type === "delta") {
              update((m) => ({ ...m, text: m.text + event.text, deltas: m.deltas + 1 }));
            } else {
              done = event;
              // `done.text` is the whole answer: the authority over the deltas joined.
              update((m) => ({ ...m, text: event.text, state: "done" }));
              // The conversation continues with the next message.
              setSessionKey(event.sessionKey);
              unsynced.current = event.sessionId === "";
              setSynced(event.sessionId !== "");
              setInfo({
                model: event.model,
                inputTokens: event.usage?.inputTokens ?? 0n,
                outputTokens: event.usage?.outputTokens ?? 0n,
                totalTokens: event.usage?.totalTokens ?? 0n,
              });
            }
          }
          break;
        } catch (err) {
          const notSyncedYet =
            mayWaitForSync && events === 0 && ClawplaneError.is(err, "NOT_FOUND") && Date.now() - started < SYNC_GRACE_MS;
          if (!notSyncedYet || controller.signal.aborted) throw err;
          update((m) => ({ ...m, retries: m.retries + 1 }));
          await pause(SYNC_RETRY_MS, controller.signal);
          if (controller.signal.aborted) throw err;
        }
      }
    } catch (err) {
      if (controller.signal.aborted) {
        // Stop (or leaving): keep what came so far, marked as cut short.
        update((m) => ({ ...m, state: "stopped" }));
      } else {
        // Text streamed before an error is not a complete answer.
        update((m) => ({ ...m, state: "failed" }));
        setProblem(describeError(err, apiUrl));
        // Offer the message again, unless the user typed a new one meanwhile.
        setDraft((current) => (current === "" ? text : current));
      }
    } finally {
      if (inFlight.current === controller) inFlight.current = null;
      setTurn((current) => (current === controller ? null : current));
      if (done === undefined && !controller.signal.aborted) {
        // Ended without `done` and without an error cannot happen (the client
        // throws UNAVAILABLE then), but never leave a message "streaming".
        update((m) => (m.state === "streaming" ? { ...m, state: "failed" } : m));
      }
    }
  };

  const submit = (event: FormEvent) => {
    event.preventDefault();
    void send();
  };

  // Enter sends, Shift+Enter starts a new line (not while an IME composes).
  const onKeyDown = (event: KeyboardEvent<HTMLTextAreaElement>) => {
    if (event.key === "Enter" && !event.shiftKey && !event.nativeEvent.isComposing) {
      event.preventDefault();
      void send();
    }
  };

  const stop = () => turn?.abort();

  const newConversation = () => {
    if (busy) return;
    setMessages([]);
    setSessionKey(undefined);
    unsynced.current = false;
    setSynced(true);
    setInfo(null);
    setProblem(null);
  };

  return (
    <div
      className="chat"
      data-testid="chat"
      data-state={busy ? "streaming" : "idle"}
      data-session-key={sessionKey ?? ""}
      data-session-synced={String(synced)}
    >
      <div className="chat-head">
        <h3>Chat with your OpenClaw</h3>
        {info !== null && (
          <span className="muted chat-info" data-testid="chat-info">
            {info.model !== "" ? `${info.model} · ` : ""}
            {`${info.inputTokens} in / ${info.outputTokens} out tokens`}
          </span>
        )}
        <button
          type="button"
          className="link chat-new"
          onClick={newConversation}
          disabled={busy || messages.length === 0}
          data-testid="chat-new"
        >
          New conversation
        </button>
      </div>
      <ol
        className="chat-messages"
        ref={box}
        data-testid="chat-messages"
        aria-live="polite"
        onScroll={(event) => {
          const el = event.currentTarget;
          stickToBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 24;
        }}
      >
        {messages.length === 0 && (
          <li className="muted chat-empty">Ask your OpenClaw anything; the answer appears as it is written.</li>
        )}
        {messages.map((message) => (
          <li
            key={message.n}
            className={`chat-message chat-${message.role} chat-${message.state}`}
            data-testid="chat-message"
            data-role={message.role}
            data-state={message.state}
            data-deltas={message.deltas}
            data-retries={message.retries}
          >
            <span className="chat-who">{message.role === "user" ? "You" : "OpenClaw"}</span>
            <span className="chat-text" data-testid="chat-message-text">
              {message.text}
            </span>
            {message.state === "streaming" && message.text === "" && <span className="muted">thinking…</span>}
            {message.state === "stopped" && <span className="chat-note">(stopped)</span>}
            {message.state === "failed" && <span className="chat-note">(not a complete answer)</span>}
          </li>
        ))}
      </ol>
      {problem !== null && <ErrorNotice problem={problem} testId="chat-error" />}
      <form className="chat-form" onSubmit={submit}>
        <textarea
          data-testid="chat-input"
          aria-label="Message to your OpenClaw"
          rows={2}
          value={draft}
          onChange={(event) => setDraft(event.target.value)}
          onKeyDown={onKeyDown}
          placeholder={disabled ? "Your OpenClaw is busy…" : "Message your OpenClaw (Enter sends, Shift+Enter: new line)"}
          disabled={disabled}
        />
        {busy ? (
          <button type="button" onClick={stop} data-testid="chat-stop">
            Stop
          </button>
        ) : (
          <button
            type="submit"
            className="primary"
            disabled={disabled || draft.trim() === ""}
            data-testid="chat-send"
          >
            Send
          </button>
        )}
      </form>
    </div>
  );
}

/** Waits `ms`, or less if `signal` aborts. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}
