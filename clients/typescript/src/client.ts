// The transport-independent client: typed service clients whose errors are
// ClawplaneErrors, and the helpers for the common calls.
import type { DescService } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { createClient, type CallOptions, type Client, type Transport } from "@connectrpc/connect";
import { ConfigService } from "./gen/clawplane/v1/config_pb.js";
import { HostService } from "./gen/clawplane/v1/host_pb.js";
import { SessionService, type TokenUsage } from "./gen/clawplane/v1/session_pb.js";
import { TenantService, type Tenant } from "./gen/clawplane/v1/tenant_pb.js";
import { UsageService, type Subscription } from "./gen/clawplane/v1/usage_pb.js";
import { ClawplaneError, toClawplaneError } from "./errors.js";

/** Per-call options of the helpers. */
export interface RequestOptions {
  /** Aborting it cancels the call (it then rejects with code CANCELLED). */
  signal?: AbortSignal | undefined;
  /**
   * Deadline of the call in milliseconds, sent to the server as
   * `grpc-timeout` (the server allows at most 5 minutes). Unary helpers
   * default to the client's `defaultTimeoutMs`; the streaming helpers
   * (streamLogs, sendMessage) have no deadline unless given one here.
   */
  timeoutMs?: number | undefined;
}

export interface CreateTenantOptions extends RequestOptions {
  /** Plan name, e.g. "free" (see UsageService.ListPlans). */
  plan: string;
  /** Wanted slug (3-40 of [a-z0-9-]); empty or absent derives one from the owner. */
  slug?: string | undefined;
  /** Create the team's tenant instead of the caller's (the caller must be a member). */
  teamId?: string | undefined;
  /** Display name; defaults to the caller's email or id. */
  displayName?: string | undefined;
  /** Labels a host must carry to run the tenant. */
  placementLabels?: Readonly<Record<string, string>> | undefined;
  /** Extra OpenClaw agents (team tenants only). */
  agentIds?: readonly string[] | undefined;
}

export interface CreateTenantResult {
  tenant: Tenant;
  /** True when this call created the tenant; false when the owner already had it. */
  created: boolean;
}

export interface GetMyTenantOptions extends RequestOptions {
  /** The team's tenant instead of the caller's own. */
  teamId?: string | undefined;
}

export interface StreamLogsOptions extends RequestOptions {
  /** How many of the latest lines to send first; 0 or absent means 100, capped at 10,000. */
  tailLines?: number | undefined;
  /** Keep streaming new lines until `signal` aborts. */
  follow?: boolean | undefined;
}

/** One line of a tenant's gateway log. */
export interface LogLine {
  text: string;
  /** When the host agent read the line. */
  observedAt: Date | undefined;
}

export interface SendMessageOptions extends RequestOptions {
  /** Continue this conversation (a `session_key` from an earlier `done`); absent starts a new one. */
  sessionKey?: string | undefined;
  /** The OpenClaw agent to talk to (team tenants with several agents). */
  agentId?: string | undefined;
}

/** The next piece of the assistant's answer. */
export interface SendMessageDelta {
  type: "delta";
  text: string;
}

/** The end of the turn: always the last event of a successful sendMessage. */
export interface SendMessageDone {
  type: "done";
  /** The assistant's whole answer (every delta, joined). */
  text: string;
  /** Pass it back as `sessionKey` to continue the conversation. */
  sessionKey: string;
  /** The synced OpenClaw session id (for sessions.getSession / listMessages); "" if not synced yet. */
  sessionId: string;
  agentId: string;
  /** The model that answered; "" if the transcript had not synced yet. */
  model: string;
  /** Tokens of this turn as the gateway reported them. */
  usage: TokenUsage | undefined;
  /** Why the model stopped: "stop", "length", "tool_calls", ... */
  finishReason: string;
}

export type SendMessageEvent = SendMessageDelta | SendMessageDone;

/** A Clawplane API client. Every call rejects with a ClawplaneError. */
export interface ClawplaneClient {
  /** TenantService: create, get, list (admin), delete, restart, logs. */
  readonly tenants: Client<typeof TenantService>;
  /** SessionService: conversations, transcripts, SendMessage. */
  readonly sessions: Client<typeof SessionService>;
  /** UsageService: usage, overview, plans, subscription. */
  readonly usage: Client<typeof UsageService>;
  /** ConfigService: channels, model, tools, agent profile. */
  readonly config: Client<typeof ConfigService>;
  /** HostService: hosts and join tokens (admin). */
  readonly hosts: Client<typeof HostService>;
  /** The transport the clients use (to build clients for other services). */
  readonly transport: Transport;

  /** Creates the caller's (or team's) tenant; idempotent per owner (`created` false when it existed). */
  createTenant(options: CreateTenantOptions): Promise<CreateTenantResult>;
  /** The caller's tenant (or their team's); NOT_FOUND when there is none. */
  getMyTenant(options?: GetMyTenantOptions): Promise<Tenant>;
  /** One tenant by id or slug, if the caller may see it; NOT_FOUND otherwise. */
  getTenant(tenantId: string, options?: RequestOptions): Promise<Tenant>;
  /** Soft-deletes the tenant; returns it as deleted. NOT_FOUND if already deleted. */
  deleteTenant(tenantId: string, options?: RequestOptions): Promise<Tenant>;
  /** Restarts the tenant's gateway and resolves once it is ready again. */
  restartTenant(tenantId: string, options?: RequestOptions): Promise<Tenant>;
  /**
   * The tenant's subscription: plan, status, current period, usage so far
   * and what remains, and `quotaExceeded` (with `quotaReason`) while the
   * platform's model refuses its calls.
   */
  getSubscription(tenantId: string, options?: RequestOptions): Promise<Subscription>;
  /**
   * Moves the tenant to another plan now (a new period starts, lifting a
   * used-up allowance). INVALID_ARGUMENT for an unknown plan;
   * FAILED_PRECONDITION when the tenant has more channels than it allows.
   */
  changePlan(tenantId: string, plan: string, options?: RequestOptions): Promise<Subscription>;
  /**
   * The tenant's gateway log: the last `tailLines`, then (with `follow`) new
   * lines until `signal` aborts or the loop breaks. FAILED_PRECONDITION while
   * the tenant is not placed on a host.
   */
  streamLogs(tenantId: string, options?: StreamLogsOptions): AsyncIterable<LogLine>;
  /**
   * One turn of the tenant's OpenClaw agent: `delta` events as the model
   * writes, then one `done`. Breaking out of the loop or aborting `signal`
   * aborts the turn. FAILED_PRECONDITION when the tenant is not RUNNING.
   */
  sendMessage(tenantId: string, text: string, options?: SendMessageOptions): AsyncIterable<SendMessageEvent>;
  /** Closes connections the client owns (the Node gRPC transport's HTTP/2 session); idempotent. */
  close(): void;
}

type AnyFn = (...args: unknown[]) => unknown;

/**
 * A connect client for `service` whose calls reject (and whose streams
 * throw) ClawplaneErrors instead of ConnectErrors.
 */
export function createServiceClient<T extends DescService>(service: T, transport: Transport): Client<T> {
  const raw = createClient(service, transport) as unknown as Record<string, AnyFn>;
  const wrapped: Record<string, AnyFn> = {};
  for (const method of service.methods) {
    const call = raw[method.localName];
    if (call === undefined) continue;
    switch (method.methodKind) {
      case "unary":
      case "client_streaming":
        wrapped[method.localName] = async (...args) => {
          try {
            return await call(...args);
          } catch (err) {
            throw toClawplaneError(err);
          }
        };
        break;
      case "server_streaming":
      case "bidi_streaming":
        wrapped[method.localName] = (...args) => convertErrors(call(...args) as AsyncIterable<unknown>);
        break;
    }
  }
  return wrapped as unknown as Client<T>;
}

async function* convertErrors<T>(stream: AsyncIterable<T>): AsyncGenerator<T, void, undefined> {
  try {
    yield* stream;
  } catch (err) {
    throw toClawplaneError(err);
  }
}

function callOptions(options: RequestOptions | undefined, stream: boolean): CallOptions {
  const call: CallOptions = {};
  if (options?.signal !== undefined) call.signal = options.signal;
  // 0 tells connect "no deadline" instead of the transport's default.
  if (options?.timeoutMs !== undefined) call.timeoutMs = options.timeoutMs;
  else if (stream) call.timeoutMs = 0;
  return call;
}

function required<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new ClawplaneError("INTERNAL", `the server's answer has no ${what}`);
  return value;
}

/** Builds a ClawplaneClient over `transport` (auth must already be on it). */
export function clientOverTransport(transport: Transport, close: () => void = () => {}): ClawplaneClient {
  const tenants = createServiceClient(TenantService, transport);
  const sessions = createServiceClient(SessionService, transport);
  const usage = createServiceClient(UsageService, transport);
  let closed = false;
  return {
    tenants,
    sessions,
    usage,
    config: createServiceClient(ConfigService, transport),
    hosts: createServiceClient(HostService, transport),
    transport,

    async createTenant(options) {
      const res = await tenants.createTenant(
        {
          plan: options.plan,
          slug: options.slug ?? "",
          teamId: options.teamId ?? "",
          displayName: options.displayName ?? "",
          placementLabels: { ...options.placementLabels },
          agentIds: [...(options.agentIds ?? [])],
        },
        callOptions(options, false),
      );
      return { tenant: required(res.tenant, "tenant"), created: res.created };
    },

    async getMyTenant(options) {
      const res = await tenants.getMyTenant({ teamId: options?.teamId ?? "" }, callOptions(options, false));
      return required(res.tenant, "tenant");
    },

    async getTenant(tenantId, options) {
      const res = await tenants.getTenant({ tenantId }, callOptions(options, false));
      return required(res.tenant, "tenant");
    },

    async deleteTenant(tenantId, options) {
      const res = await tenants.deleteTenant({ tenantId }, callOptions(options, false));
      return required(res.tenant, "tenant");
    },

    async restartTenant(tenantId, options) {
      const res = await tenants.restartTenant({ tenantId }, callOptions(options, false));
      return required(res.tenant, "tenant");
    },

    async getSubscription(tenantId, options) {
      const res = await usage.getSubscription({ tenantId }, callOptions(options, false));
      return required(res.subscription, "subscription");
    },

    async changePlan(tenantId, plan, options) {
      const res = await usage.changePlan({ tenantId, plan }, callOptions(options, false));
      return required(res.subscription, "subscription");
    },

    async *streamLogs(tenantId, options) {
      const stream = tenants.streamTenantLogs(
        { tenantId, tailLines: options?.tailLines ?? 0, follow: options?.follow ?? false },
        callOptions(options, true),
      );
      for await (const chunk of stream) {
        for (const line of chunk.lines) {
          yield { text: line.text, observedAt: line.observedAt && timestampDate(line.observedAt) };
        }
      }
    },

    async *sendMessage(tenantId, text, options) {
      const stream = sessions.sendMessage(
        { tenantId, text, sessionKey: options?.sessionKey ?? "", agentId: options?.agentId ?? "" },
        callOptions(options, true),
      );
      let finished = false;
      // Read to the end of the stream (not just to `done`), so the call's
      // final status is checked and the server sees a completed call.
      for await (const res of stream) {
        const event = res.event;
        if (finished) continue;
        if (event.case === "delta") {
          yield { type: "delta", text: event.value.text };
        } else if (event.case === "done") {
          finished = true;
          const done = event.value;
          yield {
            type: "done",
            text: done.text,
            sessionKey: done.sessionKey,
            sessionId: done.sessionId,
            agentId: done.agentId,
            model: done.model,
            usage: done.usage,
            finishReason: done.finishReason,
          };
        }
      }
      if (finished) return;
      throw new ClawplaneError(
        "UNAVAILABLE",
        "the SendMessage stream ended without `done`: the text so far is not a complete answer",
      );
    },

    close() {
      if (closed) return;
      closed = true;
      close();
    },
  };
}
