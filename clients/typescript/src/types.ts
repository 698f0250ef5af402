/**
 * Request and response types. Payloads and API records come from the API's OpenAPI document
 * (`openapi.json`, generated into `generated/openapi.ts` at build time), so they cannot drift
 * from what the API accepts; results per kind follow the documented action table, since the
 * API describes `result` only as an object.
 */
import type { components } from "./generated/openapi.js";

type Schemas = components["schemas"];
type Payload<K extends keyof Schemas> = Omit<Schemas[K], "kind">;

/** File content: text (sent as UTF-8) or bytes (sent base64). */
export type FileContent = string | Uint8Array;
export interface FileInput {
  path: string;
  content: FileContent;
  /** Only for string content that is already base64. */
  encoding?: "utf-8" | "base64";
}
/** `{ path: content }` or a list of `{ path, content, encoding? }`. */
export type FilesInput = Record<string, FileContent> | FileInput[];

type WithFiles<P> = Omit<P, "files"> & { files?: FilesInput | null };

export type EnsurePayload = WithFiles<Payload<"EnsureAction">>;
export type WritePayload = Omit<Payload<"WriteAction">, "files"> & { files: FilesInput };
export type ReadPayload = Payload<"ReadAction">;
export type CommandPayload = Payload<"CommandAction">;
export type PreviewPayload = Payload<"PreviewAction">;
export type LogsPayload = Payload<"LogsAction">;
export type SleepPayload = Payload<"SleepAction">;
export type WakePayload = Payload<"WakeAction">;
export type SnapshotPayload = Payload<"SnapshotAction">;
export type RestorePayload = Payload<"RestoreAction">;
export type DestroyPayload = Payload<"DestroyAction">;

export type ActionStatus = Schemas["Action"]["status"];
export type ActionErrorInfo = Required<Schemas["ActionError"]>;
/** An action as `GET /v1/actions/{id}` shows it. */
export type ActionRecord<R = Record<string, unknown>> = Omit<Schemas["Action"], "result" | "error"> & {
  result: R | null;
  error: ActionErrorInfo | null;
};
export type Workspace = Schemas["Workspace"];

export interface EnsureResult {
  workspace_id: string;
  sandbox_id: string;
  provider: string;
  preview_url: string | null;
  created: boolean;
  files_written: number;
  files_unchanged: number;
  installed: boolean;
}
export interface WriteResult {
  files_written: number;
  files_unchanged: number;
  files_deleted: number;
}
export interface ReadFile {
  path: string;
  content: string;
  encoding: "utf-8" | "base64";
  size: number;
}
export interface ReadResult {
  files: ReadFile[];
  missing: string[];
}
export interface CommandResult {
  exit_code: number;
  stdout: string;
  stderr: string;
  duration_ms: number;
  timed_out: boolean;
  truncated: boolean;
}
export interface PreviewResult {
  preview_url: string | null;
  healthy: boolean;
}
export interface LogsResult {
  text: string;
}
export interface SleepResult {
  snapshot_id: string | null;
}
export interface WakeResult {
  preview_url: string | null;
}
export interface SnapshotResult {
  snapshot_id: string;
}
export interface RestoreResult {
  preview_url: string | null;
}
export type DestroyResult = Record<string, unknown>;

export interface ProgressData {
  stage: string;
  done: number | null;
  total: number | null;
}
export interface OutputData {
  stream: "stdout" | "stderr";
  /** Characters of this stream sent before this chunk: a jump means some were missed. */
  offset: number;
  data: string;
}
/** One event of `action.events()`; the last is always `done`. */
export type ActionEvent<R = Record<string, unknown>> =
  | { event: "progress"; id: string | undefined; data: ProgressData }
  | { event: "output"; id: string | undefined; data: OutputData }
  | { event: "done"; id: string | undefined; data: ActionRecord<R> };

export interface CallOptions {
  /** Same key, same project: the same action comes back (default: a fresh UUID per call). */
  idempotencyKey?: string;
  signal?: AbortSignal;
}
