/**
 * `WorkspaceClient`: every action kind, inspection and cancel, over the qai-jobs HTTP API.
 *
 * Each enqueueing call fixes one idempotency key (the caller's, or a fresh UUID) before its
 * first attempt and sends it on every retry, so a retried request never enqueues twice. The
 * API validates payloads: a 422 rejects with `ValidationError` and nothing is enqueued.
 */
import { ActionHandle } from "./action.js";
import { ConflictError } from "./errors.js";
import { encodeFiles } from "./files.js";
import { Transport, type TransportOptions } from "./transport.js";
import type {
  ActionRecord,
  ActionStatus,
  CallOptions,
  CommandPayload,
  CommandResult,
  DestroyPayload,
  DestroyResult,
  EnsurePayload,
  EnsureResult,
  LogsPayload,
  LogsResult,
  PreviewPayload,
  PreviewResult,
  ReadPayload,
  ReadResult,
  RestorePayload,
  RestoreResult,
  SleepPayload,
  SleepResult,
  SnapshotPayload,
  SnapshotResult,
  WakePayload,
  WakeResult,
  Workspace,
  WritePayload,
  WriteResult,
} from "./types.js";

export type WorkspaceClientOptions = TransportOptions;

interface Accepted {
  action_id: string;
  status: ActionStatus;
}

export class WorkspaceClient {
  readonly #transport: Transport;

  constructor(options: WorkspaceClientOptions) {
    if (!options.baseUrl) throw new TypeError("WorkspaceClient: baseUrl is required");
    this.#transport = new Transport(options);
  }

  get baseUrl(): string {
    return this.#transport.baseUrl;
  }

  ensure(projectId: string, payload: EnsurePayload = {}, options?: CallOptions) {
    return this.#enqueue<EnsureResult>(projectId, "ensure", payload, options);
  }
  write(projectId: string, payload: WritePayload, options?: CallOptions) {
    return this.#enqueue<WriteResult>(projectId, "write", payload, options);
  }
  read(projectId: string, payload: ReadPayload, options?: CallOptions) {
    return this.#enqueue<ReadResult>(projectId, "read", payload, options);
  }
  command(projectId: string, payload: CommandPayload, options?: CallOptions) {
    return this.#enqueue<CommandResult>(projectId, "command", payload, options);
  }
  preview(projectId: string, payload: PreviewPayload = {}, options?: CallOptions) {
    return this.#enqueue<PreviewResult>(projectId, "preview", payload, options);
  }
  logs(projectId: string, payload: LogsPayload = {}, options?: CallOptions) {
    return this.#enqueue<LogsResult>(projectId, "logs", payload, options);
  }
  sleep(projectId: string, payload: SleepPayload = {}, options?: CallOptions) {
    return this.#enqueue<SleepResult>(projectId, "sleep", payload, options);
  }
  wake(projectId: string, payload: WakePayload = {}, options?: CallOptions) {
    return this.#enqueue<WakeResult>(projectId, "wake", payload, options);
  }
  snapshot(projectId: string, payload: SnapshotPayload = {}, options?: CallOptions) {
    return this.#enqueue<SnapshotResult>(projectId, "snapshot", payload, options);
  }
  restore(projectId: string, payload: RestorePayload, options?: CallOptions) {
    return this.#enqueue<RestoreResult>(projectId, "restore", payload, options);
  }
  destroy(projectId: string, payload: DestroyPayload = {}, options?: CallOptions) {
    return this.#enqueue<DestroyResult>(projectId, "destroy", payload, options);
  }

  /** A handle for an action enqueued elsewhere (to `wait` for it or follow its `events`). */
  action<R = Record<string, unknown>>(actionId: string, projectId = "", kind = ""): ActionHandle<R> {
    return new ActionHandle<R>(this.#transport, actionId, projectId, kind);
  }

  getAction(actionId: string, options: { signal?: AbortSignal } = {}): Promise<ActionRecord> {
    return this.#transport.request("GET", `/v1/actions/${encodeURIComponent(actionId)}`, {
      signal: options.signal,
    });
  }

  /** The project's most recent actions, oldest first. */
  async listActions(
    projectId: string,
    options: { limit?: number; status?: ActionStatus; signal?: AbortSignal } = {},
  ): Promise<ActionRecord[]> {
    const body = await this.#transport.request<{ actions: ActionRecord[] }>(
      "GET",
      `/v1/projects/${encodeURIComponent(projectId)}/actions`,
      { query: { limit: options.limit, status: options.status }, signal: options.signal },
    );
    return body.actions;
  }

  getWorkspace(projectId: string, options: { signal?: AbortSignal } = {}): Promise<Workspace> {
    return this.#transport.request("GET", `/v1/projects/${encodeURIComponent(projectId)}`, {
      signal: options.signal,
    });
  }

  /** Cancel a queued action; `ConflictError` if it is running or already finished. */
  async cancel(actionId: string, options: { signal?: AbortSignal } = {}): Promise<ActionRecord> {
    const path = `/v1/actions/${encodeURIComponent(actionId)}/cancel`;
    let retried = false;
    try {
      return await this.#transport.request<ActionRecord>("POST", path, {
        signal: options.signal,
        onRetry: () => {
          retried = true;
        },
      });
    } catch (error) {
      // A retry after a lost answer finds the action cancelled by the first attempt.
      if (retried && error instanceof ConflictError) {
        const action = await this.getAction(actionId, options);
        if (action.status === "cancelled") return action;
      }
      throw error;
    }
  }

  async #enqueue<R>(
    projectId: string,
    kind: string,
    payload: object,
    options: CallOptions = {},
  ): Promise<ActionHandle<R>> {
    const body: Record<string, unknown> = { ...payload, kind };
    if ("files" in payload && payload.files != null) {
      body["files"] = encodeFiles(payload.files as Parameters<typeof encodeFiles>[0]);
    }
    const key = options.idempotencyKey ?? crypto.randomUUID();
    const accepted = await this.#transport.request<Accepted>(
      "POST",
      `/v1/projects/${encodeURIComponent(projectId)}/actions`,
      { body, headers: { "idempotency-key": key }, signal: options.signal },
    );
    return new ActionHandle<R>(this.#transport, accepted.action_id, projectId, kind);
  }
}
