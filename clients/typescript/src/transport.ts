/**
 * HTTP with retries: network errors, 5xx and 429 are retried with exponential backoff and full
 * jitter, waiting what `Retry-After` says when the server says it. Requests that change state
 * are only ever sent with an idempotency key the caller fixed before the first attempt, so a
 * request whose answer was lost can be sent again without doing twice what it asks.
 */
import { ApiError, errorFor, type QaiJobsError } from "./errors.js";

export interface TransportOptions {
  baseUrl: string;
  token?: string | undefined;
  /** Attempts after the first one for transient failures (default 8). */
  maxRetries?: number | undefined;
  /** First backoff step (default 100 ms); doubles per attempt up to `backoffMaxMs`. */
  backoffInitialMs?: number | undefined;
  backoffMaxMs?: number | undefined;
  /** One attempt's limit, not counting a requested long-poll (default 30 s). */
  timeoutMs?: number | undefined;
  /** A fetch implementation (default: the platform's). */
  fetch?: typeof fetch | undefined;
}

export interface RequestOptions {
  query?: Record<string, string | number | undefined>;
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal | undefined;
  /** Extra time one attempt may take (a long-poll the server holds open). */
  extraTimeoutMs?: number;
  /** Called before each retry. */
  onRetry?: () => void;
}

/** `Retry-After` hints beyond this are capped: a client should not stall for minutes. */
const MAX_RETRY_AFTER_MS = 30_000;

export class Transport {
  readonly baseUrl: string;
  readonly maxRetries: number;
  readonly backoffInitialMs: number;
  readonly backoffMaxMs: number;
  readonly timeoutMs: number;
  readonly #token: string | undefined;
  readonly #fetch: typeof fetch;

  constructor(options: TransportOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.#token = options.token;
    this.maxRetries = options.maxRetries ?? 8;
    this.backoffInitialMs = options.backoffInitialMs ?? 100;
    this.backoffMaxMs = options.backoffMaxMs ?? 5_000;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.#fetch = options.fetch ?? globalThis.fetch;
  }

  /** The configured fetch, for streams that handle their own retries. */
  fetch(url: string, init: RequestInit): Promise<Response> {
    return this.#fetch(url, init);
  }

  url(path: string, query?: Record<string, string | number | undefined>): string {
    const url = new URL(this.baseUrl + path);
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined) url.searchParams.set(key, String(value));
    }
    return url.toString();
  }

  headers(extra?: Record<string, string>): Record<string, string> {
    const headers: Record<string, string> = { accept: "application/json", ...extra };
    if (this.#token) headers["authorization"] = `Bearer ${this.#token}`;
    return headers;
  }

  /** The parsed JSON of a 2xx answer, retrying transient failures; a typed error otherwise. */
  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const response = await this.send(method, path, options);
    const text = await response.text();
    let body: unknown;
    try {
      body = text ? JSON.parse(text) : undefined;
    } catch {
      body = text;
    }
    if (response.ok) return body as T;
    throw errorFor(response.status, body);
  }

  /** The first answer that is not transient (any status), after retries. */
  async send(method: string, path: string, options: RequestOptions = {}): Promise<Response> {
    const url = this.url(path, options.query);
    const headers = this.headers(options.headers);
    let payload: string | undefined;
    if (options.body !== undefined) {
      headers["content-type"] = "application/json";
      payload = JSON.stringify(options.body);
    }
    for (let attempt = 0; ; attempt++) {
      const limit = this.timeoutMs + (options.extraTimeoutMs ?? 0);
      const { signal, done } = attemptSignal(limit, options.signal);
      let failure: QaiJobsError;
      let waitMs: number | undefined;
      try {
        const init: RequestInit = { method, headers, signal };
        if (payload !== undefined) init.body = payload;
        const response = await this.#fetch(url, init);
        if (!isTransient(response.status)) {
          done();
          return response;
        }
        waitMs = retryAfterMs(response.headers.get("retry-after"));
        const text = await response.text().catch(() => "");
        done();
        failure = errorFor(response.status, safeJson(text));
      } catch (error) {
        done();
        if (options.signal?.aborted) throw options.signal.reason;
        failure = new ApiError(`${method} ${path}: ${describe(error)}`, {
          code: "network_error",
          cause: error,
        });
      }
      if (attempt >= this.maxRetries) throw failure;
      await sleep(waitMs ?? this.backoffMs(attempt), options.signal);
      options.onRetry?.();
    }
  }

  /** Full jitter: a random pause up to the exponential step, so retrying clients spread out. */
  backoffMs(attempt: number): number {
    const step = Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** attempt);
    return Math.random() * step;
  }
}

export function isTransient(status: number): boolean {
  return status === 429 || status >= 500;
}

export function retryAfterMs(value: string | null): number | undefined {
  if (!value) return undefined;
  const seconds = Number(value);
  const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(value) - Date.now();
  if (Number.isNaN(ms)) return undefined;
  return Math.min(Math.max(0, ms), MAX_RETRY_AFTER_MS);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** One attempt's signal: aborts after `ms`, or with the caller's own signal. */
export function attemptSignal(
  ms: number,
  outer?: AbortSignal,
): { signal: AbortSignal; done: () => void } {
  const controller = new AbortController();
  const timer = setTimeout(
    () => controller.abort(new Error(`no answer within ${ms} ms`)),
    ms,
  );
  const onAbort = (): void => controller.abort(outer?.reason);
  if (outer?.aborted) controller.abort(outer.reason);
  else outer?.addEventListener("abort", onAbort, { once: true });
  return {
    signal: controller.signal,
    done: () => {
      clearTimeout(timer);
      outer?.removeEventListener("abort", onAbort);
    },
  };
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const cause = error.cause instanceof Error ? ` (${error.cause.message})` : "";
    return `${error.message}${cause}`;
  }
  return String(error);
}
