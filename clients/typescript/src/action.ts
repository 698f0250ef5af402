/**
 * An enqueued action: `id`, `wait(timeoutMs)` and `events()`.
 *
 * `wait` long-polls `GET /v1/actions/{id}?wait=S` (the API wakes on the action's completion
 * notice, so there is no polling delay). `events` reads the action's Server-Sent Events
 * stream, resuming with `Last-Event-ID` when the connection drops: the API then sends at least
 * the `done`, so the end is never missed.
 */
import { ActionFailed, ActionTimeoutError, ApiError, type QaiJobsError, errorFor } from "./errors.js";
import { parseEventStream } from "./sse.js";
import { type Transport, isTransient, retryAfterMs, sleep } from "./transport.js";
import type { ActionEvent, ActionRecord } from "./types.js";

/** One long-poll lasts at most this long; `wait` loops until its own deadline. */
const POLL_SECONDS = 30;
/** No byte (not even a heartbeat, every 15 s by default) for this long: the stream is dead. */
const IDLE_TIMEOUT_MS = 60_000;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export interface EventsOptions {
  signal?: AbortSignal;
}

export class ActionHandle<R = Record<string, unknown>> {
  readonly id: string;
  readonly projectId: string;
  readonly kind: string;
  readonly #transport: Transport;

  constructor(transport: Transport, id: string, projectId: string, kind: string) {
    this.#transport = transport;
    this.id = id;
    this.projectId = projectId;
    this.kind = kind;
  }

  /** The action as it stands. */
  get(options: { signal?: AbortSignal } = {}): Promise<ActionRecord<R>> {
    return this.#transport.request("GET", `/v1/actions/${encodeURIComponent(this.id)}`, {
      signal: options.signal,
    });
  }

  /**
   * The result once the action succeeds. Rejects with `ActionFailed` (carrying `error`) if it
   * fails or is cancelled, and with `ActionTimeoutError` after `timeoutMs` (default: no limit).
   */
  async wait(timeoutMs?: number, options: { signal?: AbortSignal } = {}): Promise<R> {
    const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    for (;;) {
      const left = deadline === undefined ? POLL_SECONDS : (deadline - Date.now()) / 1000;
      const seconds = Math.max(0, Math.min(POLL_SECONDS, left));
      const action = await this.#transport.request<ActionRecord<R>>(
        "GET",
        `/v1/actions/${encodeURIComponent(this.id)}`,
        {
          query: seconds > 0 ? { wait: Math.round(seconds * 1000) / 1000 } : {},
          extraTimeoutMs: seconds * 1000,
          signal: options.signal,
        },
      );
      if (TERMINAL.has(action.status)) return settle(action);
      if (deadline !== undefined && Date.now() >= deadline) {
        throw new ActionTimeoutError(this.id, action.status, timeoutMs ?? 0);
      }
    }
  }

  /**
   * The action's events as they happen: `progress`, `output`, then one `done` (whose data is
   * the action), after which the iteration ends. Breaking out of the loop closes the stream.
   */
  async *events(options: EventsOptions = {}): AsyncGenerator<ActionEvent<R>, void, undefined> {
    const transport = this.#transport;
    const path = `/v1/actions/${encodeURIComponent(this.id)}/events`;
    let lastId: string | undefined;
    let failures = 0;
    for (;;) {
      const controller = new AbortController();
      const outer = options.signal;
      const onAbort = (): void => controller.abort(outer?.reason);
      if (outer?.aborted) throw outer.reason;
      outer?.addEventListener("abort", onAbort, { once: true });
      let idle: NodeJS.Timeout | undefined;
      const touch = (): void => {
        clearTimeout(idle);
        idle = setTimeout(
          () => controller.abort(new Error(`no byte for ${IDLE_TIMEOUT_MS} ms`)),
          IDLE_TIMEOUT_MS,
        );
      };
      let failure: QaiJobsError | undefined;
      let waitMs: number | undefined;
      try {
        touch();
        const headers = transport.headers({ accept: "text/event-stream" });
        if (lastId !== undefined) headers["last-event-id"] = lastId;
        const response = await transport.fetch(transport.url(path), {
          headers,
          signal: controller.signal,
        });
        if (!response.ok) {
          const text = await response.text().catch(() => "");
          const error = errorFor(response.status, safeJson(text));
          if (!isTransient(response.status)) throw error;
          failure = error;
          waitMs = retryAfterMs(response.headers.get("retry-after"));
        } else if (response.body) {
          for await (const message of parseEventStream(response.body, touch)) {
            failures = 0;
            if (message.id !== undefined) lastId = message.id;
            if (message.event === "done") {
              yield { event: "done", id: message.id, data: JSON.parse(message.data) };
              return;
            }
            if (message.event === "progress" || message.event === "output") {
              yield { event: message.event, id: message.id, data: JSON.parse(message.data) };
            }
          }
        }
        // The stream ended without a done (the API restarted, a proxy cut it): resume.
        failure ??= new ApiError(`${path}: the stream ended early`, { code: "stream_ended" });
      } catch (error) {
        if (outer?.aborted) throw outer.reason;
        if (isFinal(error)) throw error;
        failure = new ApiError(`${path}: ${String(error)}`, { code: "network_error", cause: error });
      } finally {
        clearTimeout(idle);
        outer?.removeEventListener("abort", onAbort);
        controller.abort(); // closes the connection when the caller stopped iterating
      }
      failures++;
      if (failures > transport.maxRetries) throw failure;
      await sleep(waitMs ?? transport.backoffMs(failures - 1), outer);
    }
  }
}

/** Errors from the API's answer that a reconnect cannot fix (401, 404, 422, ...). */
function isFinal(error: unknown): boolean {
  return (
    typeof error === "object" &&
    error !== null &&
    "status" in error &&
    typeof error.status === "number" &&
    !isTransient(error.status)
  );
}

export function settle<R>(action: ActionRecord<R>): R {
  if (action.status === "succeeded") return (action.result ?? {}) as R;
  throw new ActionFailed(action as ActionRecord);
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
