// The gateway's log, live: the last lines, then new ones as OpenClaw writes
// them (streamLogs with follow). The stream is cancelled when the component
// unmounts (the AbortSignal), and reopened after a pause if it breaks off,
// e.g. while the gateway restarts.
import type { ClawplaneClient } from "@clawplane/client";
import { useEffect, useLayoutEffect, useRef, useState } from "react";
import { ErrorNotice } from "./ErrorNotice";
import { describeError, type Problem } from "./errors";
import { formatLogLine } from "./logLine";

const TAIL_LINES = 200;
const KEEP_LINES = 1_000;
const RECONNECT_MS = 3_000;

interface Line {
  n: number;
  text: string;
  at: Date | undefined;
}

type StreamState = "connecting" | "live" | "reconnecting";

export function LiveLogs(props: { client: ClawplaneClient; apiUrl: string; tenantId: string }) {
  const { client, apiUrl, tenantId } = props;
  const [lines, setLines] = useState<Line[]>([]);
  const [state, setState] = useState<StreamState>("connecting");
  const [problem, setProblem] = useState<Problem | null>(null);
  const [attempt, setAttempt] = useState(0);
  const box = useRef<HTMLOListElement>(null);
  const stickToBottom = useRef(true);

  useEffect(() => {
    const controller = new AbortController();
    const { signal } = controller;
    let retry: ReturnType<typeof setTimeout> | undefined;
    let flush: ReturnType<typeof setTimeout> | undefined;
    let pending: Line[] = [];
    let first = true;
    let counter = 0;
    // Lines arrive in bursts (the tail comes at once): render them in batches.
    const push = (line: Line) => {
      pending.push(line);
      flush ??= setTimeout(() => {
        flush = undefined;
        const batch = pending;
        pending = [];
        const fresh = first;
        first = false;
        // A (re)opened stream starts with the tail again: it replaces what we had.
        setLines((old) => (fresh ? batch : [...old, ...batch]).slice(-KEEP_LINES));
      }, 50);
    };
    const reconnect = () => {
      if (signal.aborted) return;
      setState("reconnecting");
      retry = setTimeout(() => setAttempt((n) => n + 1), RECONNECT_MS);
    };

    setState("connecting");
    (async () => {
      try {
        const logs = client.streamLogs(tenantId, { tailLines: TAIL_LINES, follow: true, signal });
        for await (const line of logs) {
          setState("live");
          setProblem(null);
          push({ n: counter++, text: line.text, at: line.observedAt });
        }
        reconnect(); // the server ended the stream (e.g. the host reconnected)
      } catch (err) {
        if (signal.aborted) return; // unmounted: we cancelled it ourselves
        setProblem(describeError(err, apiUrl));
        reconnect();
      }
    })();

    return () => {
      controller.abort();
      clearTimeout(retry);
      clearTimeout(flush);
    };
  }, [client, apiUrl, tenantId, attempt]);

  // Follow the newest line unless the user scrolled up to read.
  useLayoutEffect(() => {
    const el = box.current;
    if (el !== null && stickToBottom.current) el.scrollTop = el.scrollHeight;
  }, [lines]);

  const stateText =
    state === "live" ? "live" : state === "connecting" ? "connecting…" : `reconnecting in ${RECONNECT_MS / 1000} s…`;

  return (
    <div className="logs" data-testid="logs" data-state={state}>
      <div className="logs-head">
        <h3>Logs</h3>
        <span className={`dot dot-${state}`} data-testid="logs-state">
          {stateText}
        </span>
      </div>
      {problem !== null && <ErrorNotice problem={problem} testId="logs-error" />}
      <ol
        className="log-lines"
        ref={box}
        onScroll={(event) => {
          const el = event.currentTarget;
          stickToBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 24;
        }}
      >
        {lines.length === 0 && <li className="muted">{state === "live" ? "No log lines yet." : "Waiting for the log…"}</li>}
        {lines.map((line) => (
          <LogLine key={line.n} line={line} />
        ))}
      </ol>
    </div>
  );
}

function LogLine({ line }: { line: Line }) {
  const formatted = formatLogLine(line.text);
  if (formatted === null) {
    return (
      <li data-testid="log-line" title={line.at?.toLocaleString()}>
        {line.text}
      </li>
    );
  }
  const level = formatted.level.toLowerCase();
  return (
    <li data-testid="log-line" className={`level-${level}`} title={line.text}>
      <span className="log-time">{formatted.time}</span> <span className="log-level">{formatted.level}</span>{" "}
      {formatted.source !== "" && <span className="log-source">{formatted.source}: </span>}
      {formatted.message}
    </li>
  );
}
