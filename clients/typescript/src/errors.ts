/**
 * Errors, as classes a caller can tell apart with `instanceof`. Every one carries the HTTP
 * status and the API's uniform error body (`{"error": {"code", "message", "details"?}}`) when
 * there was one.
 */
import type { ActionErrorInfo, ActionRecord } from "./types.js";

export interface ErrorBody {
  error: { code: string; message: string; details?: Record<string, unknown> };
}

interface ErrorInit {
  code: string;
  status?: number | undefined;
  body?: unknown;
  cause?: unknown;
}

/** The root of every error this package raises. */
export class QaiJobsError extends Error {
  readonly code: string;
  readonly status: number | undefined;
  readonly body: unknown;

  constructor(message: string, init: ErrorInit) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.code = init.code;
    this.status = init.status;
    this.body = init.body;
  }
}

/** 422: the request is invalid; `field` names what is wrong. Nothing was enqueued. */
export class ValidationError extends QaiJobsError {
  declare readonly body: ErrorBody | undefined;
  get field(): string | undefined {
    const field = this.body?.error.details?.["field"];
    return typeof field === "string" ? field : undefined;
  }
}

/** 413: the body or its files exceed the API's limits. Nothing was enqueued. */
export class PayloadTooLargeError extends QaiJobsError {}

/** 401: missing or wrong bearer token. */
export class AuthError extends QaiJobsError {}

/** 404: unknown action or project. */
export class NotFoundError extends QaiJobsError {}

/** 409: e.g. cancelling an action that is already running or finished. */
export class ConflictError extends QaiJobsError {}

/** The API kept failing (network errors, 5xx, 429) after every retry, or answered oddly. */
export class ApiError extends QaiJobsError {}

/** The action finished as `failed` or `cancelled`; `error` is its `{code, message, retryable}`. */
export class ActionFailed extends QaiJobsError {
  readonly error: ActionErrorInfo;
  readonly action: ActionRecord;

  constructor(action: ActionRecord) {
    const error = action.error ?? {
      code: action.status,
      message: `action ${action.status}`,
      retryable: false,
    };
    super(`action ${action.id} (${action.kind}) ${action.status}: ${error.code}: ${error.message}`, {
      code: error.code,
    });
    this.error = error;
    this.action = action;
  }
}

/** `wait(timeoutMs)` ran out before the action finished (the action itself goes on). */
export class ActionTimeoutError extends QaiJobsError {
  readonly actionId: string;
  readonly lastStatus: string;

  constructor(actionId: string, lastStatus: string, timeoutMs: number) {
    super(`action ${actionId} is still ${lastStatus} after ${timeoutMs} ms`, { code: "timeout" });
    this.actionId = actionId;
    this.lastStatus = lastStatus;
  }
}

/** The error for a non-2xx answer that is not retried. */
export function errorFor(status: number, body: unknown): QaiJobsError {
  const parsed = isErrorBody(body) ? body : undefined;
  const code = parsed?.error.code ?? `http_${status}`;
  const message = parsed?.error.message ?? `HTTP ${status}`;
  const init = { code, status, body };
  switch (status) {
    case 401:
      return new AuthError(message, init);
    case 404:
      return new NotFoundError(message, init);
    case 409:
      return new ConflictError(message, init);
    case 413:
      return new PayloadTooLargeError(message, init);
    case 422:
      return new ValidationError(message, init);
    default:
      return new ApiError(message, init);
  }
}

function isErrorBody(value: unknown): value is ErrorBody {
  if (typeof value !== "object" || value === null) return false;
  const error = (value as { error?: unknown }).error;
  return (
    typeof error === "object" &&
    error !== null &&
    typeof (error as { code?: unknown }).code === "string" &&
    typeof (error as { message?: unknown }).message === "string"
  );
}
