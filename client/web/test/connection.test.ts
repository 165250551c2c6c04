import assert from "node:assert/strict";
import { test } from "node:test";
import { BinaryWriter } from "@bufbuild/protobuf/wire";
import {
  AsyncQueue,
  backoffDelay,
  ChatConnection,
  ChatError,
  DEFAULT_BACKOFF,
  errorInfoReason,
  Status,
  type ClientFrame,
  type ConnectionState,
  type Delivery,
  type OpenChat,
  type ServerFrame,
} from "../src/index.js";

/**
 * FakeServer plays chatd's side of the Chat stream in memory, with the
 * server's rules: an inbox numbered 1, 2, 3, ...; sync pages after a seq;
 * sends idempotent by client_message_id; a cursor moved by acks. drop()
 * breaks the open stream as a lost connection does.
 */
class FakeServer {
  inbox: Delivery[] = [];
  cursor = 0n;
  sends = new Map<string, bigint>(); // client_message_id → message id
  received: ClientFrame[] = [];
  opens = 0;
  /** dropOnSend: break the stream when a send arrives, before answering it (once per count). */
  dropOnSend = 0;
  failNextOpen: ChatError | undefined;
  private live: AsyncQueue<ServerFrame | Error> | undefined;

  add(text: string, channelId = "dm:alice:bob"): Delivery {
    const seq = BigInt(this.inbox.length + 1);
    const d: Delivery = {
      inboxSeq: seq,
      message: {
        channelId,
        messageId: 1000n + seq,
        senderId: "alice",
        senderDeviceId: "d",
        clientMessageId: `c${seq}`,
        text,
        createdAt: undefined,
        kind: 1,
        refMessageId: 0n,
        forUser: "",
        edited: false,
        editedAt: undefined,
        deleted: false,
      },
    };
    this.inbox.push(d);
    this.live?.push({ frameId: 0n, delivery: d } as ServerFrame);
    return d;
  }

  /** drop ends the open stream with err (default: a lost connection). */
  drop(err: Error = new ChatError(Status.UNAVAILABLE, "connection lost")): void {
    this.live?.push(err);
    this.live = undefined;
  }

  open: OpenChat = (requests, { signal }) => {
    this.opens++;
    const out = new AsyncQueue<ServerFrame | Error>();
    const server = this;
    if (this.failNextOpen) {
      const e = this.failNextOpen;
      this.failNextOpen = undefined;
      out.push(e);
    } else {
      this.live = out;
      out.push({
        frameId: 0n,
        welcome: { userId: "bob", deviceId: "d1", cursor: this.cursor, headSeq: BigInt(this.inbox.length), heartbeatIntervalMs: 60_000, serverId: "fake" },
      } as ServerFrame);
      (async () => {
        for await (const f of requests) {
          if (this.live !== out) return;
          server.received.push(f);
          server.handle(f, out);
        }
      })();
    }
    signal.addEventListener("abort", () => out.push(new ChatError(Status.CANCELLED, "aborted")));
    return (async function* () {
      for await (const f of out) {
        if (f instanceof Error) throw f;
        yield f;
      }
    })();
  };

  private handle(f: ClientFrame, out: AsyncQueue<ServerFrame | Error>): void {
    const id = f.frameId;
    if (f.sync) {
      const limit = f.sync.limit || 100;
      const after = f.sync.afterSeq;
      const rest = this.inbox.filter((d) => d.inboxSeq > after);
      const page = rest.slice(0, limit);
      out.push({ frameId: id, syncPage: { deliveries: page, more: rest.length > limit, nextAfterSeq: page.length ? page[page.length - 1].inboxSeq : after } } as ServerFrame);
    } else if (f.ack) {
      if (f.ack.inboxSeq > this.cursor) this.cursor = f.ack.inboxSeq;
      out.push({ frameId: id, ackResult: { cursor: this.cursor } } as ServerFrame);
    } else if (f.send) {
      if (this.dropOnSend > 0) {
        this.dropOnSend--;
        this.drop();
        return;
      }
      const cmid = f.send.clientMessageId;
      let mid = this.sends.get(cmid);
      const duplicate = mid !== undefined;
      if (mid === undefined) {
        mid = this.add(f.send.text).message!.messageId;
        this.sends.set(cmid, mid);
      }
      out.push({ frameId: id, sendAck: { channelId: "dm:alice:bob", messageId: mid, clientMessageId: cmid, duplicate, createdAt: undefined } } as ServerFrame);
    } else if (f.heartbeat && id !== 0n) {
      out.push({ frameId: id, heartbeatAck: { serverTime: undefined } } as ServerFrame);
    }
  }
}

const fast = { initialMs: 5, maxMs: 20, factor: 2, minMs: 1 };

function connect(server: FakeServer, got: Delivery[], states: ConnectionState[] = [], extra: object = {}) {
  return new ChatConnection({
    token: "t",
    openChat: server.open,
    backoff: fast,
    onDelivery: (d) => {
      got.push(d);
    },
    onState: (s) => states.push(s),
    ...extra,
  }).start();
}

async function until(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function seqs(ds: Delivery[]): number[] {
  return ds.map((d) => Number(d.inboxSeq));
}

test("syncs from the cursor, then live, in order, each once", async () => {
  const server = new FakeServer();
  for (let i = 0; i < 450; i++) server.add(`old ${i}`);
  server.cursor = 20n;
  const got: Delivery[] = [];
  const conn = connect(server, got, [], { syncPageSize: 100 });
  await until(() => conn.connectionState === "live", "live");
  server.add("new 1");
  server.add("new 2");
  await until(() => got.length === 432, "432 deliveries");
  assert.deepEqual(seqs(got), Array.from({ length: 432 }, (_, i) => 21 + i));
  assert.equal(got[got.length - 1].message?.text, "new 2");
  await until(() => server.cursor === 452n, "auto-ack of the last seq");
  await conn.close();
});

test("a live push overlapping a sync page is delivered once", async () => {
  const server = new FakeServer();
  for (let i = 0; i < 5; i++) server.add(`m${i}`);
  const got: Delivery[] = [];
  const conn = connect(server, got);
  await until(() => conn.connectionState === "live", "live");
  // The server pushes seq 3..5 again (as after a hand-over race) and a new 6.
  const live = (server as unknown as { live: AsyncQueue<ServerFrame> }).live;
  for (const d of server.inbox.slice(2)) live.push({ frameId: 0n, delivery: d } as ServerFrame);
  server.add("m5");
  await until(() => got.length >= 6, "6 deliveries");
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(seqs(got), [1, 2, 3, 4, 5, 6]);
  await conn.close();
});

test("reconnects after a lost stream and loses nothing", async () => {
  const server = new FakeServer();
  const got: Delivery[] = [];
  const states: ConnectionState[] = [];
  const conn = connect(server, got, states);
  await until(() => conn.connectionState === "live", "live");
  for (let i = 0; i < 10; i++) server.add(`a${i}`);
  await until(() => got.length === 10, "10 deliveries");
  server.drop();
  for (let i = 0; i < 10; i++) server.add(`b${i}`); // while disconnected
  await until(() => got.length === 20 && conn.connectionState === "live", "20 deliveries after reconnect");
  assert.deepEqual(seqs(got), Array.from({ length: 20 }, (_, i) => i + 1));
  assert.ok(states.includes("reconnecting"), `states ${states}`);
  assert.equal(server.opens, 2);
  await conn.close();
});

test("a send is resent with the same client_message_id after a reconnect and stored once", async () => {
  const server = new FakeServer();
  server.dropOnSend = 2; // the first two attempts are lost before the server answers
  const got: Delivery[] = [];
  const conn = connect(server, got);
  await until(() => conn.connectionState === "live", "live");
  const ack = await conn.send({ toUser: "alice", text: "hello", clientMessageId: "k1" });
  const sends = server.received.filter((f) => f.send);
  assert.equal(sends.length, 3, "three attempts");
  assert.ok(sends.every((f) => f.send?.clientMessageId === "k1"), "same key every time");
  assert.equal(new Set(sends.map((f) => f.frameId)).size, 3, "a new frame id per attempt");
  assert.equal(server.inbox.length, 1, "stored once");
  assert.equal(ack.messageId, server.inbox[0].message?.messageId);
  // A second send of the same key is the same message.
  const again = await conn.send({ toUser: "alice", text: "hello", clientMessageId: "k1" });
  assert.equal(again.duplicate, true);
  assert.equal(again.messageId, ack.messageId);
  await until(() => got.length === 1, "own message delivered once");
  await conn.close();
});

test("sends queued while disconnected go out in order once live", async () => {
  const server = new FakeServer();
  server.failNextOpen = new ChatError(Status.UNAVAILABLE, "server down");
  const got: Delivery[] = [];
  const conn = connect(server, got);
  const acks = Promise.all([1, 2, 3].map((i) => conn.send({ toUser: "alice", text: `q${i}` })));
  await acks;
  assert.deepEqual(server.inbox.map((d) => d.message?.text), ["q1", "q2", "q3"]);
  await conn.close();
});

test("UNAUTHENTICATED ends the connection for good and fails pending sends", async () => {
  const server = new FakeServer();
  const states: ConnectionState[] = [];
  let closedErr: ChatError | undefined;
  const conn = new ChatConnection({
    token: "t",
    openChat: server.open,
    backoff: fast,
    onDelivery: () => {},
    onState: (s, e) => {
      states.push(s);
      if (s === "closed") closedErr = e;
    },
  }).start();
  await until(() => conn.connectionState === "live", "live");
  server.dropOnSend = 0;
  const pending = conn.send({ toUser: "alice", text: "x" }).catch((e) => e);
  server.drop(new ChatError(Status.UNAUTHENTICATED, "device revoked", "DEVICE_REVOKED"));
  await until(() => conn.connectionState === "closed", "closed");
  assert.equal(closedErr?.code, Status.UNAUTHENTICATED);
  assert.equal(closedErr?.reason, "DEVICE_REVOKED");
  const opens = server.opens;
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(server.opens, opens, "no reconnect after UNAUTHENTICATED");
  const r = await pending;
  // The send either made it before the drop or failed with the status.
  assert.ok(r instanceof ChatError ? r.code === Status.UNAUTHENTICATED : r.messageId > 0n, String(r));
});

test("a Drain frame closes the stream and reconnects after its delay, losing nothing", async () => {
  const server = new FakeServer();
  const got: Delivery[] = [];
  // A backoff so long that only the drain's own delay can explain a quick reconnect.
  const conn = connect(server, got, [], { backoff: { initialMs: 60_000, maxMs: 60_000, factor: 1, minMs: 60_000 } });
  await until(() => conn.connectionState === "live", "live");
  server.add("before");
  await until(() => got.length === 1, "1 delivery");
  const live = (server as unknown as { live: AsyncQueue<ServerFrame> }).live;
  live.push({ frameId: 0n, drain: { reconnectDelayMs: 30, endpoints: [], serverId: "s1" } } as ServerFrame);
  (server as unknown as { live: unknown }).live = undefined;
  server.add("during");
  const t0 = Date.now();
  await until(() => server.opens === 2 && conn.connectionState === "live" && got.length === 2, "reconnect after the drain", 2000);
  assert.ok(Date.now() - t0 >= 25, "waited the drain's delay");
  assert.deepEqual(got.map((d) => d.message?.text), ["before", "during"]);
  await conn.close();
});

test("backoff is jittered, grows exponentially and is capped", () => {
  const b = DEFAULT_BACKOFF;
  assert.equal(backoffDelay(b, 0, () => 0), b.minMs);
  assert.equal(backoffDelay(b, 0, () => 0.999999), Math.floor(0.999999 * b.initialMs));
  assert.equal(backoffDelay(b, 3, () => 0.5), Math.floor(0.5 * b.initialMs * 8));
  assert.equal(backoffDelay(b, 50, () => 0.999999), Math.floor(0.999999 * b.maxMs));
  const seen = new Set<number>();
  for (let i = 0; i < 50; i++) seen.add(backoffDelay(b, 4));
  assert.ok(seen.size > 10, "random spread");
});

test("errorInfoReason reads google.rpc.ErrorInfo from grpc-status-details-bin", () => {
  const info = new BinaryWriter().uint32(10).string("DEVICE_REVOKED").uint32(18).string("chatd").finish();
  const any = new BinaryWriter().uint32(10).string("type.googleapis.com/google.rpc.ErrorInfo").uint32(18).bytes(info).finish();
  const status = new BinaryWriter().uint32(8).int32(16).uint32(18).string("revoked").uint32(26).bytes(any).finish();
  const b64 = Buffer.from(status).toString("base64").replace(/=+$/, "");
  assert.equal(errorInfoReason(b64), "DEVICE_REVOKED");
  assert.equal(errorInfoReason(status), "DEVICE_REVOKED");
  assert.equal(errorInfoReason("not base64 at all!"), "");
});
