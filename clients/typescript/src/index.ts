/** `@qai-jobs/client`: the qai-jobs HTTP API for Node.js (>= 20), on the platform's fetch. */
export { ActionHandle, type EventsOptions } from "./action.js";
export { WorkspaceClient, type WorkspaceClientOptions } from "./client.js";
export {
  ActionFailed,
  ActionTimeoutError,
  ApiError,
  AuthError,
  ConflictError,
  type ErrorBody,
  NotFoundError,
  PayloadTooLargeError,
  QaiJobsError,
  ValidationError,
} from "./errors.js";
export { fileBytes } from "./files.js";
export type * from "./types.js";
