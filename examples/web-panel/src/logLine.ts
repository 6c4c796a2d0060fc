// OpenClaw's gateway writes JSON log lines (tslog): the arguments of the
// log call as "0", "1", ... (the first is the logger's name, e.g.
// {"subsystem":"gateway"}), `message`, `time` and `_meta.logLevelName`.
// Shown as "17:38:31 INFO gateway: gateway ready"; other lines as they are.

export interface FormattedLine {
  time: string;
  level: string;
  source: string;
  message: string;
}

export function formatLogLine(text: string): FormattedLine | null {
  if (!text.startsWith("{")) return null;
  let entry: unknown;
  try {
    entry = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof entry !== "object" || entry === null) return null;
  const record = entry as Record<string, unknown>;
  const meta = (typeof record._meta === "object" && record._meta !== null ? record._meta : {}) as Record<string, unknown>;
  const time = String(record.time ?? meta.date ?? "");
  const level = String(meta.logLevelName ?? record.level ?? "");
  // The first argument names the logger: {"subsystem": "gateway"} or {"module": "cron", ...}.
  let source = "";
  const name = meta.name ?? record["0"];
  if (typeof name === "string") {
    try {
      const parsed = JSON.parse(name) as { subsystem?: unknown; module?: unknown };
      const label = parsed.subsystem ?? parsed.module;
      source = typeof label === "string" ? label : "";
    } catch {
      source = name;
    }
  }
  // The other arguments: the words first, then any values logged with them.
  const args = Object.keys(record)
    .filter((key) => /^\d+$/.test(key) && key !== "0")
    .map((key) => record[key]);
  const words = args.filter((arg): arg is string => typeof arg === "string");
  const values = args.filter((arg) => typeof arg !== "string").map((arg) => JSON.stringify(arg));
  const message =
    args.length > 0 ? [...words, ...values].join(" ") : String(record.message ?? record.msg ?? text);
  return { time: /T(\d\d:\d\d:\d\d)/.exec(time)?.[1] ?? "", level, source, message };
}
