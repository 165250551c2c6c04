import {
  createChannel,
  createClientFactory,
  FetchTransport,
  Metadata,
  WebsocketTransport,
  type Client,
} from "nice-grpc-web";
import { AccountServiceDefinition } from "./gen/chat/v1/account.js";
import { ChatServiceDefinition } from "./gen/chat/v1/chat.js";
import { DiscoveryServiceDefinition } from "./gen/chat/v1/discovery.js";
import { PresenceServiceDefinition } from "./gen/chat/v1/presence.js";

/** The typed clients of chatd's four services. */
export interface ChatdClients {
  account: Client<typeof AccountServiceDefinition>;
  chat: Client<typeof ChatServiceDefinition>;
  presence: Client<typeof PresenceServiceDefinition>;
  discovery: Client<typeof DiscoveryServiceDefinition>;
  /** streaming: the same services over grpc-web's WebSocket transport (Chat, Presence.Subscribe). */
  chatStream: Client<typeof ChatServiceDefinition>;
  presenceStream: Client<typeof PresenceServiceDefinition>;
}

/**
 * createClients returns clients of chatd at baseUrl (its HTTP port, e.g.
 * "http://127.0.0.1:8080" or location.origin). Unary calls use grpc-web
 * over fetch; streams use grpc-web over WebSocket (improbable-eng's
 * "grpc-websockets" protocol), the only grpc-web transport that carries
 * a client stream, hence the bidirectional Chat stream. With a token every
 * call carries `authorization: Bearer <token>` metadata (never a URL).
 */
export function createClients(baseUrl: string, token?: string): ChatdClients {
  const base = baseUrl.replace(/\/+$/, "");
  const unary = createChannel(base, FetchTransport());
  const ws = createChannel(base, WebsocketTransport());
  const factory = createClientFactory();
  const opts = token ? { "*": { metadata: Metadata({ authorization: `Bearer ${token}` }) } } : {};
  return {
    account: factory.create(AccountServiceDefinition, unary, opts),
    chat: factory.create(ChatServiceDefinition, unary, opts),
    presence: factory.create(PresenceServiceDefinition, unary, opts),
    discovery: factory.create(DiscoveryServiceDefinition, unary, opts),
    chatStream: factory.create(ChatServiceDefinition, ws, opts),
    presenceStream: factory.create(PresenceServiceDefinition, ws, opts),
  };
}

/** A logged-in device. */
export interface Credentials {
  userId: string;
  deviceId: string;
  accessToken: string;
}

/** signUp creates an account (AccountService.SignUp). */
export async function signUp(baseUrl: string, username: string, password: string, displayName: string): Promise<void> {
  await createClients(baseUrl).account.signUp({ username, password, displayName });
}

/** logIn logs a new device in (AccountService.LogIn) and returns its token. */
export async function logIn(baseUrl: string, username: string, password: string, deviceName: string): Promise<Credentials> {
  const r = await createClients(baseUrl).account.logIn({ username, password, deviceName });
  return { userId: r.userId, deviceId: r.deviceId, accessToken: r.accessToken };
}
