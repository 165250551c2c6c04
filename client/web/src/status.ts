import { BinaryReader } from "@bufbuild/protobuf/wire";
import { ClientError, Status } from "nice-grpc-common";

export { Status };

/**
 * ChatError is a failed call or stream: its gRPC status code (Status: the
 * same numbers as google.golang.org/grpc/codes), the server's message, and
 * the google.rpc.ErrorInfo reason chatd attaches to some statuses
 * (STREAM_REPLACED, TOKEN_EXPIRED, DEVICE_REVOKED; see proto/chat/v1/chat.proto),
 * "" when there is none.
 */
export class ChatError extends Error {
  constructor(
    readonly code: Status,
    message: string,
    readonly reason = "",
  ) {
    super(message);
    this.name = "ChatError";
  }

  /** statusName is the code's name, e.g. "PERMISSION_DENIED". */
  get statusName(): string {
    return Status[this.code] ?? String(this.code);
  }
}

/**
 * toChatError turns what a call threw into a ChatError: a ClientError keeps
 * its code and message and gets the reason from trailers (the
 * grpc-status-details-bin value, if the caller captured it); anything else
 * (a transport failure, a closed socket) becomes UNAVAILABLE, which
 * reconnects.
 */
export function toChatError(err: unknown, detailsBin?: string | Uint8Array): ChatError {
  if (err instanceof ChatError) return err;
  if (err instanceof ClientError) {
    const reason = detailsBin ? errorInfoReason(detailsBin) : "";
    // A stream that ended without a status (the connection dropped) is
    // reported by nice-grpc-web as UNKNOWN "Transport error" or "closed
    // without gRPC status": for a chat client that is a lost connection.
    if (err.code === Status.UNKNOWN && /Transport error|without gRPC status/.test(err.details)) {
      return new ChatError(Status.UNAVAILABLE, err.details, reason);
    }
    return new ChatError(err.code, err.details, reason);
  }
  const msg = err instanceof Error ? err.message : String(err);
  return new ChatError(Status.UNAVAILABLE, msg);
}

/**
 * errorInfoReason returns the reason of the first google.rpc.ErrorInfo in
 * a grpc-status-details-bin trailer (base64 of a google.rpc.Status:
 * code = 1, message = 2, repeated google.protobuf.Any details = 3 with
 * type_url = 1 and value = 2; ErrorInfo: reason = 1, domain = 2), or "".
 */
export function errorInfoReason(detailsBin: string | Uint8Array): string {
  try {
    const status = new BinaryReader(typeof detailsBin === "string" ? base64Decode(detailsBin) : detailsBin);
    while (status.pos < status.len) {
      const [field, wire] = status.tag();
      if (field !== 3) {
        status.skip(wire);
        continue;
      }
      const any = new BinaryReader(status.bytes());
      let typeUrl = "";
      let value: Uint8Array | undefined;
      while (any.pos < any.len) {
        const [f, w] = any.tag();
        if (f === 1) typeUrl = any.string();
        else if (f === 2) value = any.bytes();
        else any.skip(w);
      }
      if (!typeUrl.endsWith("/google.rpc.ErrorInfo") || !value) continue;
      const info = new BinaryReader(value);
      while (info.pos < info.len) {
        const [f, w] = info.tag();
        if (f === 1) return info.string();
        info.skip(w);
      }
    }
  } catch {
    // A malformed detail is no reason.
  }
  return "";
}

function base64Decode(s: string): Uint8Array {
  let t = s.replace(/-/g, "+").replace(/_/g, "/");
  while (t.length % 4 !== 0) t += "=";
  const bin = atob(t);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
