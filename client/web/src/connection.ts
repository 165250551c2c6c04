import { Metadata } from "nice-grpc-common";
import type {
  ClientFrame,
  Delivery,
  ReceiptEvent,
  SendAck,
  ServerFrame,
  SyncPage,
  TypingEvent,
  UnreadEvent,
  Welcome,
} from "./gen/chat/v1/chat.js";
import { createClients } from "./clients.js";
import { AsyncQueue } from "./queue.js";
import { ChatError, Status, toChatError } from "./status.js";

/**
 * OpenChat opens one Chat stream: requests are the frames to send, the
 * result the server's frames; it throws (or the iteration throws) when the
 * stream fails. onTrailer receives the grpc-status-details-bin trailer.
 * The default speaks grpc-web over WebSocket to chatd; tests pass a fake.
 */
export type OpenChat = (
  requests: AsyncIterable<ClientFrame>,
  opts: { token: string; signal: AbortSignal; onDetails: (bin: string | Uint8Array | undefined) => void },
) => AsyncIterable<ServerFrame>;

/** The connection's state, for a "connecting…/reconnecting…" indicator. */
export type ConnectionState = "connecting" | "syncing" | "live" | "reconnecting" | "closed";

/** Reconnect backoff: the n-th retry waits a uniformly random time in
 * [0, min(maxMs, initialMs·factor^n)] ("full jitter", so that clients
 * dropped together do not return together), at least minMs. */
export interface Backoff {
  initialMs: number;
  maxMs: number;
  factor: number;
  minMs: number;
}

export const DEFAULT_BACKOFF: Backoff = { initialMs: 250, maxMs: 15_000, factor: 2, minMs: 50 };

/** backoffDelay is the wait before retry number attempt (0-based), in ms. */
export function backoffDelay(b: Backoff, attempt: number, random: () => number = Math.random): number {
  const cap = Math.min(b.maxMs, b.initialMs * Math.pow(b.factor, attempt));
  return Math.max(b.minMs, Math.floor(random() * cap));
}

export interface ConnectionOptions {
  /** baseUrl of chatd's HTTP port (location.origin for the served app). */
  baseUrl?: string;
  /** token: the device's bearer token (from logIn). */
  token: string;
  /**
   * onDelivery receives the device's inbox in inbox_seq order, each entry
   * once per connection object: what sync returns after the cursor, then
   * live deliveries, across reconnects. The next delivery waits for the
   * returned promise; the entry is acked (auto-ack) after it resolves.
   */
  onDelivery: (d: Delivery) => void | Promise<void>;
  onTyping?: (e: TypingEvent) => void;
  onReceipt?: (e: ReceiptEvent) => void;
  onUnread?: (e: UnreadEvent) => void;
  /** onState reports state changes; err is why the stream ended. */
  onState?: (state: ConnectionState, err?: ChatError) => void;
  /** resumeAfter: the highest inbox_seq the app already has (0: the server's cursor). */
  resumeAfter?: bigint;
  /** autoAck acks delivered entries (default true): at-most-once if the app loses them after onDelivery. */
  autoAck?: boolean;
  backoff?: Backoff;
  /** syncPageSize: entries per SyncRequest (default 200). */
  syncPageSize?: number;
  /** maxPendingSends bounds sends awaiting their SendAck (default 256); more are refused. */
  maxPendingSends?: number;
  openChat?: OpenChat;
  random?: () => number;
}

/** SendParams: one message; exactly one of toUser and channelId. */
export interface SendParams {
  toUser?: string;
  channelId?: string;
  text: string;
  /** clientMessageId: the idempotency key (default: a random UUID). */
  clientMessageId?: string;
}

interface Pending {
  frame: ClientFrame;
  resolve: (f: ServerFrame) => void;
  reject: (e: ChatError) => void;
  /** resend: sent again, with a new frame id, after a reconnect (sends, edits, deletes). */
  resend: boolean;
}

// Recent (channel_id, message_id) keys remembered to drop a message seen
// twice under two seqs (a rare cluster race, see Delivery.inbox_seq).
const RECENT_KEYS = 2048;

/**
 * ChatConnection is the device's Chat stream kept open: it mirrors the Go
 * SDK (client.Session plus its reconnect loop). On every (re)connect it
 * reads the Welcome, heartbeats at the Welcome's interval, syncs from the
 * last seq it delivered (or the server's cursor) page by page, then goes
 * live, handing the app one ordered, duplicate-free stream of deliveries
 * (onDelivery) and acking them. Sends carry a client_message_id and are
 * resent with the same id after a reconnect until their SendAck arrives,
 * so each is stored once. A lost stream is reopened with jittered
 * exponential backoff; a Drain frame closes the stream and reopens it after
 * the delay the server asked for; UNAUTHENTICATED (token expired or device logged out)
 * and a STREAM_REPLACED eviction end the connection for good (onState
 * "closed" with the error).
 */
export class ChatConnection {
  private readonly o: Required<Omit<ConnectionOptions, "onTyping" | "onReceipt" | "onUnread" | "onState">> &
    ConnectionOptions;
  private state: ConnectionState = "connecting";
  private closed = false;
  private abort: AbortController | undefined;
  private out: AsyncQueue<ClientFrame> | undefined;
  private nextFrameId = 1n;
  private pending = new Map<bigint, Pending>();
  private lastSeq = 0n;
  private ackedSeq = 0n;
  private ackTimer: ReturnType<typeof setTimeout> | undefined;
  private recent = new Set<string>();
  private deliveryChain: Promise<void> = Promise.resolve();
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private lastHeard = 0;
  private welcomeFrame: Welcome | undefined;
  private loopDone: Promise<void> | undefined;
  private terminal: ChatError | undefined;

  constructor(opts: ConnectionOptions) {
    const base = opts.baseUrl ?? (typeof location !== "undefined" ? location.origin : "");
    this.o = {
      autoAck: true,
      backoff: DEFAULT_BACKOFF,
      syncPageSize: 200,
      maxPendingSends: 256,
      resumeAfter: 0n,
      random: Math.random,
      openChat: defaultOpenChat(base),
      baseUrl: base,
      ...opts,
    };
    this.lastSeq = this.o.resumeAfter;
  }

  /** start opens the stream and keeps it open until close(). */
  start(): this {
    this.loopDone ??= this.loop();
    return this;
  }

  /** close ends the stream for good; pending sends fail with CANCELLED. */
  async close(): Promise<void> {
    this.closed = true;
    this.abort?.abort();
    this.failPending(new ChatError(Status.CANCELLED, "connection closed"));
    await this.loopDone;
  }

  /** welcome is the last stream's Welcome (user, device, cursor, server). */
  get welcome(): Welcome | undefined {
    return this.welcomeFrame;
  }

  /** seq is the highest inbox_seq handed to onDelivery. */
  get seq(): bigint {
    return this.lastSeq;
  }

  get connectionState(): ConnectionState {
    return this.state;
  }

  /** error is why the connection closed for good, if it did. */
  get error(): ChatError | undefined {
    return this.terminal;
  }

  /**
   * send stores and delivers a message once: it resolves with the SendAck
   * (duplicate set when the key was seen before), or rejects with the
   * server's FrameError as a ChatError, or CANCELLED on close().
   */
  send(p: SendParams): Promise<SendAck> {
    const cmid = p.clientMessageId ?? randomId();
    const frame = this.frame({
      send: { toUser: p.toUser, channelId: p.channelId, clientMessageId: cmid, text: p.text },
    });
    return this.request(frame, true).then((f) => f.sendAck as SendAck);
  }

  /** edit replaces the text of one of the user's messages (idempotent like send). */
  edit(channelId: string, messageId: bigint, text: string, clientMessageId = randomId()): Promise<SendAck> {
    const frame = this.frame({ edit: { channelId, messageId, text, clientMessageId } });
    return this.request(frame, true).then((f) => f.sendAck as SendAck);
  }

  /** delete deletes a message for everyone, or with forMe for this user only. */
  delete(channelId: string, messageId: bigint, forMe = false, clientMessageId = randomId()): Promise<SendAck> {
    const frame = this.frame({ delete: { channelId, messageId, forMe, clientMessageId } });
    return this.request(frame, true).then((f) => f.sendAck as SendAck);
  }

  /** markRead moves the read marker of a channel (0: to its newest message). */
  markRead(channelId: string, messageId = 0n): Promise<UnreadEvent> {
    return this.request(this.frame({ markRead: { channelId, messageId } }), false).then((f) => f.unread as UnreadEvent);
  }

  /** typing tells the channel's other members the user is typing (best effort, no reply). */
  typing(channelId: string): void {
    if (this.state === "live") this.out?.push({ ...this.frame({ typing: { channelId } }), frameId: 0n });
  }

  /** ack moves the device's cursor to seq (done for you with autoAck). */
  ack(seq: bigint): Promise<bigint> {
    return this.request(this.frame({ ack: { inboxSeq: seq, noReply: false } }), false).then((f) => f.ackResult?.cursor ?? 0n);
  }

  // --- the stream loop ---

  private setState(s: ConnectionState, err?: ChatError): void {
    if (this.state === s && !err) return;
    this.state = s;
    this.o.onState?.(s, err);
  }

  private async loop(): Promise<void> {
    let attempt = 0;
    while (!this.closed) {
      this.setState(attempt === 0 && !this.welcomeFrame ? "connecting" : "reconnecting");
      const { live: wentLive, err, drainDelayMs } = await this.runStream();
      this.stopHeartbeat();
      if (this.closed) break;
      if (wentLive) attempt = 0;
      if (err && isTerminal(err)) {
        this.terminal = err;
        this.closed = true;
        this.failPending(err);
        this.setState("closed", err);
        return;
      }
      this.setState("reconnecting", err ?? new ChatError(Status.UNAVAILABLE, "stream ended"));
      if (drainDelayMs !== undefined) {
        // The server is draining: reconnect after the delay it chose (spread
        // over its clients), not a backoff: this is no failure.
        attempt = 0;
        await sleep(drainDelayMs);
      } else {
        await sleep(backoffDelay(this.o.backoff, attempt++, this.o.random));
      }
    }
    this.setState("closed");
  }

  /**
   * runStream runs one stream to its end: whether it went live, why it
   * ended, and, when the server sent a Drain frame, the delay it asked for.
   */
  private async runStream(): Promise<{ live: boolean; err: ChatError; drainDelayMs?: number }> {
    const abort = new AbortController();
    const out = new AsyncQueue<ClientFrame>();
    this.abort = abort;
    this.out = out;
    let details: string | Uint8Array | undefined;
    let live = false;
    // Frames of this stream only: replies to frames of an older stream
    // never arrive on it.
    const inFlight = new Set<bigint>();
    this.inFlight = inFlight;
    try {
      const frames = this.o.openChat(out, { token: this.o.token, signal: abort.signal, onDetails: (d) => (details = d) });
      const it = frames[Symbol.asyncIterator]();
      const first = await it.next();
      if (first.done || !first.value.welcome) throw new ChatError(Status.UNAVAILABLE, "stream ended before its Welcome");
      const welcome = first.value.welcome;
      this.welcomeFrame = welcome;
      this.ackedSeq = welcome.cursor;
      if (this.lastSeq < welcome.cursor) this.lastSeq = welcome.cursor;
      this.startHeartbeat(welcome.heartbeatIntervalMs || 30_000, abort);
      this.setState("syncing");

      // Sync from lastSeq, then go live. Live deliveries that arrive while
      // syncing are held and handed over after the last page, past lastSeq.
      const held: Delivery[] = [];
      let syncing = true;
      const syncDone = this.syncAll(() => syncing).then(
        () => {
          syncing = false;
          for (const d of held) this.deliver(d);
          held.length = 0;
          this.resendPending(inFlight);
          live = true;
          this.setState("live");
        },
        (e) => {
          abort.abort();
          throw e;
        },
      );
      syncDone.catch(() => {});
      for (;;) {
        const r = await it.next();
        if (r.done) break;
        this.lastHeard = Date.now();
        const f = r.value;
        if (f.drain) {
          // Drain (issue 14): the server is going away; leave now and come
          // back after reconnect_delay_ms. A browser reconnects to the same
          // origin (a load balancer in front picks another server); the
          // endpoints of the frame are for native clients.
          await syncDone.catch(() => {});
          return { live, err: new ChatError(Status.UNAVAILABLE, `server ${f.drain.serverId} is draining`), drainDelayMs: f.drain.reconnectDelayMs };
        }
        if (f.delivery) {
          if (syncing) held.push(f.delivery);
          else this.deliver(f.delivery);
        } else if (f.typing) {
          this.o.onTyping?.(f.typing);
        } else if (f.receipt) {
          this.o.onReceipt?.(f.receipt);
        } else if (f.unread) {
          this.o.onUnread?.(f.unread);
        }
        if (f.frameId !== 0n) this.reply(f, inFlight);
      }
      await syncDone.catch(() => {});
      return { live, err: new ChatError(Status.UNAVAILABLE, "stream ended") };
    } catch (e) {
      return { live, err: toChatError(e, details) };
    } finally {
      out.end();
      abort.abort();
      // Replies that can no longer come: one-shot requests fail; sends,
      // edits and deletes stay pending (same ids, so the same order) and
      // are sent again on the next stream.
      for (const id of inFlight) {
        const p = this.pending.get(id);
        if (p && !p.resend) {
          this.pending.delete(id);
          p.reject(new ChatError(Status.UNAVAILABLE, "connection lost before the reply"));
        }
      }
      if (this.inFlight === inFlight) this.inFlight = undefined;
    }
  }

  private inFlight: Set<bigint> | undefined;

  /** syncAll pages through the inbox after lastSeq until the last page. */
  private async syncAll(active: () => boolean): Promise<void> {
    let after = this.lastSeq;
    for (;;) {
      const f = await this.request(this.frame({ sync: { afterSeq: after, limit: this.o.syncPageSize } }), false, true);
      const page = f.syncPage as SyncPage;
      for (const d of page.deliveries) this.deliver(d);
      if (!active()) return;
      if (!page.more) return;
      after = page.nextAfterSeq > after ? page.nextAfterSeq : after;
    }
  }

  private deliver(d: Delivery): void {
    if (d.inboxSeq <= this.lastSeq) return; // seen: a sync page and a live push overlap
    this.lastSeq = d.inboxSeq;
    const m = d.message;
    if (m) {
      const key = `${m.channelId}/${m.messageId}`;
      if (this.recent.has(key)) return;
      this.recent.add(key);
      if (this.recent.size > RECENT_KEYS) this.recent.delete(this.recent.values().next().value as string);
    }
    const seq = d.inboxSeq;
    this.deliveryChain = this.deliveryChain
      .then(() => this.o.onDelivery(d))
      .then(
        () => this.scheduleAck(seq),
        () => {}, // an app error does not stop the stream, and the entry is not acked
      );
  }

  private scheduleAck(seq: bigint): void {
    if (!this.o.autoAck || seq <= this.ackedSeq) return;
    this.pendingAck = seq > (this.pendingAck ?? 0n) ? seq : this.pendingAck;
    if (this.ackTimer) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = undefined;
      const s = this.pendingAck;
      if (!s || s <= this.ackedSeq || this.state !== "live") return;
      this.ack(s).then(
        (c) => {
          if (c > this.ackedSeq) this.ackedSeq = c;
        },
        () => {}, // the next stream acks again
      );
    }, 100);
  }

  private pendingAck: bigint | undefined;

  private startHeartbeat(intervalMs: number, abort: AbortController): void {
    this.stopHeartbeat();
    this.lastHeard = Date.now();
    this.heartbeat = setInterval(() => {
      // Nothing heard for two intervals and a half (at least 10 s: a busy
      // page's timers run late): the connection is dead even if the socket
      // has not noticed; reconnect.
      if (Date.now() - this.lastHeard > Math.max(intervalMs * 2.5, 10_000)) {
        abort.abort();
        return;
      }
      // With a frame id, so that the server answers (HeartbeatAck) and
      // the silence check above hears it.
      this.out?.push({ ...this.frame({ heartbeat: {} }), frameId: this.nextFrameId++ });
    }, intervalMs);
  }

  private stopHeartbeat(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }

  private frame(payload: Partial<ClientFrame>): ClientFrame {
    return { frameId: 0n, ...payload } as ClientFrame;
  }

  private frameIdFor(p: Pending): bigint {
    const id = this.nextFrameId++;
    p.frame = { ...p.frame, frameId: id };
    return id;
  }

  /**
   * request sends a frame that gets a reply (echoing its frame id). resend:
   * kept across reconnects and sent again (same client_message_id) until
   * answered. now: sent even before the stream is live (sync).
   */
  private request(frame: ClientFrame, resend: boolean, now = false): Promise<ServerFrame> {
    if (this.closed) return Promise.reject(this.terminal ?? new ChatError(Status.CANCELLED, "connection closed"));
    if (resend && this.countResends() >= this.o.maxPendingSends) {
      return Promise.reject(new ChatError(Status.RESOURCE_EXHAUSTED, "too many sends awaiting their ack"));
    }
    return new Promise<ServerFrame>((resolve, reject) => {
      const p: Pending = { frame, resolve, reject, resend };
      const id = this.frameIdFor(p);
      this.pending.set(id, p);
      if ((this.state === "live" || now) && this.inFlight && this.out) {
        this.inFlight.add(id);
        this.out.push(p.frame);
      } else if (!resend) {
        this.pending.delete(id);
        reject(new ChatError(Status.UNAVAILABLE, "not connected"));
      }
      // A resend-able frame waits for the next live stream (resendPending).
    });
  }

  private countResends(): number {
    let n = 0;
    for (const p of this.pending.values()) if (p.resend) n++;
    return n;
  }

  /** resendPending sends every unanswered send/edit/delete, in their order, on the new stream. */
  private resendPending(inFlight: Set<bigint>): void {
    const waiting = [...this.pending.entries()].filter(([id]) => !inFlight.has(id)).sort(([a], [b]) => (a < b ? -1 : 1));
    for (const [id, p] of waiting) {
      if (!p.resend) continue;
      this.pending.delete(id);
      const nid = this.frameIdFor(p);
      this.pending.set(nid, p);
      inFlight.add(nid);
      this.out?.push(p.frame);
    }
  }

  private reply(f: ServerFrame, inFlight: Set<bigint>): void {
    const p = this.pending.get(f.frameId);
    if (!p) return;
    this.pending.delete(f.frameId);
    inFlight.delete(f.frameId);
    if (f.error) p.reject(new ChatError(f.error.code as Status, f.error.message));
    else p.resolve(f);
  }

  private failPending(err: ChatError): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}

/** isTerminal: errors after which reconnecting cannot help. */
export function isTerminal(err: ChatError): boolean {
  if (err.code === Status.UNAUTHENTICATED) return true; // log in again
  if (err.code === Status.RESOURCE_EXHAUSTED && err.reason === "STREAM_REPLACED") return true;
  return false;
}

function defaultOpenChat(baseUrl: string): OpenChat {
  return (requests, { token, signal, onDetails }) => {
    const clients = createClients(baseUrl);
    return clients.chatStream.chat(requests, {
      metadata: Metadata({ authorization: `Bearer ${token}` }),
      signal,
      onTrailer: (t) => onDetails(t.get("grpc-status-details-bin")),
    });
  };
}

function randomId(): string {
  if (typeof crypto !== "undefined" && "randomUUID" in crypto) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
