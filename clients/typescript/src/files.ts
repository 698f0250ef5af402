/** File payloads: strings go as they are, bytes as base64 (the API's `encoding` field). */
import type { FileInput, FilesInput } from "./types.js";

interface WireFile {
  path: string;
  content: string;
  encoding: "utf-8" | "base64";
}

export function encodeFiles(files: FilesInput): Record<string, string> | WireFile[] {
  if (Array.isArray(files)) return files.map(encodeOne);
  const entries = Object.entries(files);
  if (entries.every(([, content]) => typeof content === "string")) {
    return files as Record<string, string>;
  }
  return entries.map(([path, content]) => encodeOne({ path, content }));
}

function encodeOne(file: FileInput): WireFile {
  if (typeof file.content === "string") {
    return { path: file.path, content: file.content, encoding: file.encoding ?? "utf-8" };
  }
  const bytes = file.content;
  return {
    path: file.path,
    content: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64"),
    encoding: "base64",
  };
}

/** The bytes of a file `read` returned, whatever its encoding. */
export function fileBytes(file: { content: string; encoding: "utf-8" | "base64" }): Uint8Array {
  return file.encoding === "base64"
    ? new Uint8Array(Buffer.from(file.content, "base64"))
    : new TextEncoder().encode(file.content);
}
