// How much the user's OpenClaw is used: UsageService.GetOverview (today,
// active conversations, this month against the plan's limit, the channels)
// and GetUsage (period DAY, the last 30 days including today) drawn as a bar
// chart in plain SVG. Counts come from synced transcripts, so they trail a
// message by a few seconds; days are calendar days in UTC.
import {
  timestampDate,
  UsagePeriod,
  type ClawplaneClient,
  type GetOverviewResponse,
  type GetUsageResponse,
  type UsagePoint,
} from "@clawplane/client";
import { useEffect, useId, useState } from "react";
import { ErrorNotice } from "./ErrorNotice";
import { describeError, type Problem } from "./errors";
import "./history-usage.css";

interface Figures {
  overview: GetOverviewResponse;
  usage: GetUsageResponse;
}

export function UsageOverview(props: {
  tenantId: string;
  /** Changing it fetches the figures again, e.g. after a chat turn. */
  refreshKey?: number;
  /** The panel's client (src/clawplane.ts). */
  client: ClawplaneClient;
  /** For error messages. */
  apiUrl: string;
}) {
  const { tenantId, refreshKey = 0, client, apiUrl } = props;

  // null until the first answer; kept on screen while a refresh runs or fails.
  const [figures, setFigures] = useState<Figures | null>(null);
  const [problem, setProblem] = useState<Problem | null>(null);
  const [busy, setBusy] = useState(true);
  // Finished loads (answer or error): lets a test wait for "the load after my click".
  const [loads, setLoads] = useState(0);
  const [attempt, setAttempt] = useState(0);

  useEffect(() => {
    const controller = new AbortController();
    const { signal } = controller;
    setBusy(true);
    Promise.all([
      client.usage.getOverview({ tenantId }, { signal }),
      // from/to unset: the 30 days up to now, today included (the server's default for DAY).
      client.usage.getUsage({ tenantId, period: UsagePeriod.DAY }, { signal }),
    ]).then(
      ([overview, usage]) => {
        if (signal.aborted) return;
        setFigures({ overview, usage });
        setProblem(null);
        setBusy(false);
        setLoads((n) => n + 1);
      },
      (err: unknown) => {
        if (signal.aborted) return; // superseded or unmounted: we cancelled it ourselves
        setProblem(describeError(err, apiUrl));
        setBusy(false);
        setLoads((n) => n + 1);
      },
    );
    return () => controller.abort();
  }, [client, apiUrl, tenantId, refreshKey, attempt]);

  const refresh = () => setAttempt((n) => n + 1);
  const state = figures === null ? (problem !== null ? "error" : "loading") : busy ? "refreshing" : "ready";

  return (
    <div className="usage" data-testid="usage" data-state={state} data-loads={loads}>
      <div className="usage-head">
        <h3>Usage</h3>
        <span className="muted usage-note">days in UTC, a few seconds behind</span>
        <button type="button" className="usage-refresh" onClick={refresh} data-testid="usage-refresh">
          {busy && figures !== null ? "Refreshing…" : "Refresh"}
        </button>
      </div>
      {problem !== null && <ErrorNotice problem={problem} onRetry={refresh} testId="usage-error" />}
      {figures === null && problem === null && (
        <p className="muted" data-testid="usage-loading" aria-busy="true">
          Loading usage…
        </p>
      )}
      {figures !== null && (
        <>
          <Tiles overview={figures.overview} usage={figures.usage} />
          <DailyChart points={figures.usage.points} />
          <Channels overview={figures.overview} />
        </>
      )}
    </div>
  );
}

function Tiles({ overview, usage }: { overview: GetOverviewResponse; usage: GetUsageResponse }) {
  const month = overview.monthMessages;
  const limit = overview.monthlyMessageLimit;
  const share = limit > 0n ? Math.min(1, Number(month) / Number(limit)) : 0;
  const tokens = usage.total?.tokens;
  const cost = tokens?.cost ?? 0;
  return (
    <dl className="usage-tiles">
      <div className="usage-tile">
        <dt>Messages today</dt>
        <dd data-testid="usage-today-messages" data-value={overview.todayMessages.toString()}>
          {overview.todayMessages.toLocaleString()}
        </dd>
      </div>
      <div className="usage-tile">
        <dt>Active conversations</dt>
        <dd data-testid="usage-active-sessions">{overview.activeSessions.toLocaleString()}</dd>
        <dd className="usage-sub muted">in the last 24 hours</dd>
      </div>
      <div className="usage-tile">
        <dt>Messages this month</dt>
        <dd data-testid="usage-month-messages">{month.toLocaleString()}</dd>
        {limit > 0n ? (
          <>
            <dd className="usage-sub muted">
              of {limit.toLocaleString()} in your plan ({Math.round(share * 100)}%)
            </dd>
            <dd className="usage-sub">
              <span
                className={`usage-meter ${share >= 0.9 ? "usage-meter-high" : ""}`}
                role="meter"
                aria-label="Share of the plan's monthly messages used"
                aria-valuemin={0}
                aria-valuemax={Number(limit)}
                aria-valuenow={Number(month)}
              >
                <span style={{ width: `${share * 100}%` }} />
              </span>
            </dd>
          </>
        ) : (
          <dd className="usage-sub muted">no monthly limit in your plan</dd>
        )}
      </div>
      <div className="usage-tile">
        <dt>Tokens, 30 days</dt>
        <dd data-testid="usage-tokens">{(tokens?.totalTokens ?? 0n).toLocaleString()}</dd>
        {cost > 0 && <dd className="usage-sub muted">about {formatCost(cost)} at the model's prices</dd>}
      </div>
    </dl>
  );
}

// The chart's drawing box (SVG units; it scales to the card's width).
const WIDTH = 600;
const HEIGHT = 170;
const LEFT = 32;
const RIGHT = 4;
const TOP = 10;
const BOTTOM = 22;

const DAY_LONG = new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short", timeZone: "UTC" });
const DAY_SHORT = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", timeZone: "UTC" });

function DailyChart({ points }: { points: UsagePoint[] }) {
  const titleId = useId();
  const descId = useId();
  const days = points.map((point) => ({
    day: point.periodStart ? timestampDate(point.periodStart) : undefined,
    messages: Number(point.messages),
    tokens: Number(point.tokens?.totalTokens ?? 0n),
  }));
  const total = days.reduce((sum, d) => sum + d.messages, 0);
  const max = Math.max(1, ...days.map((d) => d.messages));
  const plotWidth = WIDTH - LEFT - RIGHT;
  const plotHeight = HEIGHT - TOP - BOTTOM;
  const slot = plotWidth / Math.max(1, days.length);
  const barWidth = Math.max(2, slot * 0.7);
  const baseline = TOP + plotHeight;
  const first = days[0]?.day;
  const last = days[days.length - 1]?.day;

  return (
    <figure className="usage-chart">
      <figcaption className="usage-chart-caption">
        Messages per day, last {days.length} days: {total.toLocaleString()} in all
      </figcaption>
      <svg
        viewBox={`0 0 ${WIDTH} ${HEIGHT}`}
        className="usage-svg"
        role="group"
        aria-labelledby={titleId}
        aria-describedby={descId}
        data-testid="usage-chart"
      >
        <title id={titleId}>Messages per day, last {days.length} days</title>
        <desc id={descId}>
          One bar per day (UTC), oldest on the left; {total.toLocaleString()} messages in all, at most {max} in a day.
        </desc>
        {/* Scale: the day with the most messages, and zero. */}
        <line className="usage-grid" x1={LEFT} x2={WIDTH - RIGHT} y1={TOP} y2={TOP} />
        <line className="usage-axis" x1={LEFT} x2={WIDTH - RIGHT} y1={baseline} y2={baseline} />
        <text className="usage-label" x={LEFT - 6} y={TOP + 4} textAnchor="end">
          {max}
        </text>
        <text className="usage-label" x={LEFT - 6} y={baseline + 4} textAnchor="end">
          0
        </text>
        {days.map((d, i) => {
          const height = (d.messages / max) * plotHeight;
          const x = LEFT + i * slot + (slot - barWidth) / 2;
          const label = `${d.day !== undefined ? DAY_LONG.format(d.day) : `Day ${i + 1}`}: ${d.messages.toLocaleString()} message${
            d.messages === 1 ? "" : "s"
          }${d.tokens > 0 ? `, ${d.tokens.toLocaleString()} tokens` : ""}`;
          const today = i === days.length - 1;
          return (
            <g
              key={i}
              className={`usage-bar ${today ? "usage-bar-today" : ""}`}
              role="img"
              aria-label={label}
              data-testid="usage-bar"
              data-messages={d.messages}
              data-day={d.day?.toISOString().slice(0, 10) ?? ""}
            >
              <title>{label}</title>
              {/* The whole column answers the pointer, so empty days show their title too. */}
              <rect className="usage-bar-hit" x={LEFT + i * slot} y={TOP} width={slot} height={plotHeight} />
              {d.messages > 0 ? (
                <rect className="usage-bar-fill" x={x} y={baseline - height} width={barWidth} height={height} rx={2} />
              ) : (
                <rect className="usage-bar-zero" x={x} y={baseline - 1} width={barWidth} height={1} />
              )}
            </g>
          );
        })}
        {first !== undefined && (
          <text className="usage-label" x={LEFT} y={HEIGHT - 6} textAnchor="start">
            {DAY_SHORT.format(first)}
          </text>
        )}
        {last !== undefined && (
          <text className="usage-label" x={WIDTH - RIGHT} y={HEIGHT - 6} textAnchor="end">
            today
          </text>
        )}
      </svg>
    </figure>
  );
}

function Channels({ overview }: { overview: GetOverviewResponse }) {
  if (overview.channels.length === 0) return null;
  return (
    <table className="usage-channels" data-testid="usage-channels">
      <caption>By channel, last 30 days</caption>
      <thead>
        <tr>
          <th scope="col">Channel</th>
          <th scope="col">Messages</th>
          <th scope="col">Conversations</th>
          <th scope="col">Typical reply time</th>
        </tr>
      </thead>
      <tbody>
        {overview.channels.map((share) => (
          <tr key={share.channel} data-testid="usage-channel" data-channel={share.channel}>
            <th scope="row">{share.channel === "unknown" || share.channel === "" ? "Unknown" : share.channel}</th>
            <td>{share.messages.toLocaleString()}</td>
            <td>{share.sessions.toLocaleString()}</td>
            <td>{share.avgResponseTimeMs > 0 ? formatDuration(share.avgResponseTimeMs) : "–"}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function formatDuration(ms: number): string {
  if (ms < 1_000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1_000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  return `${(ms / 60_000).toFixed(1)} min`;
}

function formatCost(cost: number): string {
  // OpenClaw records the provider's billing currency, normally USD.
  return new Intl.NumberFormat(undefined, { style: "currency", currency: "USD", maximumFractionDigits: cost < 1 ? 4 : 2 }).format(cost);
}
