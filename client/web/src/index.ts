/**
 * @chatd/web: a browser client of chatd over grpc-web (WebSocket for the
 * Chat and Presence streams, fetch for unary calls).
 *
 *   const creds = await logIn(location.origin, "alice", "password", "browser");
 *   const conn = new ChatConnection({ token: creds.accessToken, onDelivery: (d) => show(d) }).start();
 *   await conn.send({ toUser: "bob", text: "hi" });
 */
export { ChatConnection, backoffDelay, isTerminal, DEFAULT_BACKOFF } from "./connection.js";
export type { Backoff, ConnectionOptions, ConnectionState, OpenChat, SendParams } from "./connection.js";
export { createClients, logIn, signUp } from "./clients.js";
export type { ChatdClients, Credentials } from "./clients.js";
export { ChatError, Status, errorInfoReason, toChatError } from "./status.js";
export { AsyncQueue } from "./queue.js";
export * from "./gen/chat/v1/chat.js";
export {
  PresenceStatus,
  type Presence,
  type SubscribeResponse,
} from "./gen/chat/v1/presence.js";
export type { Profile } from "./gen/chat/v1/account.js";
