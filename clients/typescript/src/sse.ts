/**
 * A Server-Sent Events parser (the WHATWG "event stream" format) over a fetch body, since Node
 * 20 has no EventSource and this package takes no dependencies. Comment lines (heartbeats) are
 * swallowed but still count as activity for the caller's idle timer, through `onBytes`.
 */

export interface SseMessage {
  event: string;
  data: string;
  id: string | undefined;
  retry: number | undefined;
}

/** One event larger than this is refused: a stream that never ends an event is not buffered. */
export const MAX_EVENT_CHARS = 16 * 1024 * 1024;

export async function* parseEventStream(
  body: AsyncIterable<Uint8Array>,
  onBytes: () => void = () => {},
): AsyncGenerator<SseMessage, void, undefined> {
  const decoder = new TextDecoder("utf-8");
  let pending = "";
  let data: string[] = [];
  let dataChars = 0;
  let event = "";
  let id: string | undefined;
  let retry: number | undefined;
  let skipLf = false;

  for await (const chunk of body) {
    onBytes();
    pending += decoder.decode(chunk, { stream: true });
    let start = 0;
    for (let i = 0; i < pending.length; i++) {
      const ch = pending.charCodeAt(i);
      if (ch !== 10 && ch !== 13) continue;
      if (ch === 10 && skipLf && i === start) {
        // The LF of a CRLF split across chunks.
        skipLf = false;
        start = i + 1;
        continue;
      }
      const line = pending.slice(start, i);
      skipLf = ch === 13;
      if (skipLf && pending.charCodeAt(i + 1) === 10) {
        i++;
        skipLf = false;
      }
      start = i + 1;
      if (line === "") {
        if (data.length > 0) {
          yield { event: event || "message", data: data.join("\n"), id, retry };
        }
        data = [];
        dataChars = 0;
        event = "";
        retry = undefined;
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      switch (field) {
        case "data":
          dataChars += value.length;
          if (dataChars > MAX_EVENT_CHARS) throw new Error("event stream: event too large");
          data.push(value);
          break;
        case "event":
          event = value;
          break;
        case "id":
          if (!value.includes("\0")) id = value;
          break;
        case "retry":
          if (/^\d+$/.test(value)) retry = Number(value);
          break;
        default:
          break; // unknown fields are ignored, as the format requires
      }
    }
    pending = pending.slice(start);
    if (pending.length > MAX_EVENT_CHARS) throw new Error("event stream: line too long");
  }
}
