// chatd's web app: sign up and log in, conversations with presence and
// unread counts, live messages with history, receipts, typing, edits and
// deletes, groups. Plain DOM (no framework): every text is set with
// textContent (never innerHTML), so a message is shown as the characters
// it contains. The page is served with a CSP that allows no inline script.
import {
  ChannelType,
  ChatConnection,
  ChatError,
  createClients,
  logIn,
  MessageKind,
  PresenceStatus,
  signUp,
  Status,
  toChatError,
  type Channel,
  type ChatdClients,
  type ConnectionState,
  type Delivery,
  type Message,
  type Presence,
  type ReceiptEvent,
} from "../src/index.js";

const BASE = location.origin;
const STORE_KEY = "chatd.session";

interface Session {
  userId: string;
  deviceId: string;
  accessToken: string;
}

// ---- tiny DOM helper ----

type Attrs = Record<string, string | boolean | number | ((e: Event) => void) | undefined>;

function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: (Node | string | null | undefined | false)[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (typeof v === "function") el.addEventListener(k.slice(2), v as EventListener);
    else if (k === "class") el.className = String(v);
    else if (k === "value") (el as HTMLInputElement).value = String(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return el;
}

function errText(e: unknown): string {
  const ce = e instanceof ChatError ? e : toChatError(e);
  return `${ce.statusName}: ${ce.message}`;
}

function fmtTime(d: Date | undefined): string {
  if (!d) return "";
  const now = new Date();
  return d.toDateString() === now.toDateString()
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

function lastSeen(p: Presence | undefined): string {
  if (!p) return "";
  if (p.status === PresenceStatus.PRESENCE_STATUS_ONLINE) return "online";
  return p.lastActiveAt ? `last seen ${fmtTime(p.lastActiveAt)}` : "offline";
}

// ---- auth screen ----

function showAuth(root: HTMLElement, message = ""): void {
  const err = h("p", { class: "error", role: "alert", id: "auth-error" }, message);
  const user = h("input", { id: "username", name: "username", autocomplete: "username", required: true, autocapitalize: "none" });
  const pass = h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true, minlength: 8 });
  const display = h("input", { id: "display-name", name: "display-name", autocomplete: "nickname", placeholder: "for sign-up" });
  const act = async (signup: boolean) => {
    err.textContent = "";
    try {
      if (signup) await signUp(BASE, user.value.trim(), pass.value, display.value.trim() || user.value.trim());
      const c = await logIn(BASE, user.value.trim(), pass.value, deviceName());
      localStorage.setItem(STORE_KEY, JSON.stringify(c));
      start(root, c);
    } catch (e) {
      err.textContent = errText(e);
    }
  };
  const form = h(
    "form",
    { class: "auth", "aria-labelledby": "auth-title", onsubmit: (e) => (e.preventDefault(), act(false)) },
    h("h1", { id: "auth-title" }, "chatd"),
    h("label", { for: "username" }, "Username"),
    user,
    h("label", { for: "password" }, "Password (at least 8 characters)"),
    pass,
    h("label", { for: "display-name" }, "Display name (sign-up only)"),
    display,
    h(
      "div",
      { class: "row" },
      h("button", { type: "submit", class: "primary" }, "Log in"),
      h("button", { type: "button", onclick: () => act(true) }, "Sign up"),
    ),
    err,
  );
  root.replaceChildren(form);
  user.focus();
}

function deviceName(): string {
  const ua = navigator.userAgent;
  const b = /Firefox/.test(ua) ? "Firefox" : /Edg\//.test(ua) ? "Edge" : /Chrom/.test(ua) ? "Chromium" : /Safari/.test(ua) ? "Safari" : "browser";
  return `${b} (web)`;
}

// ---- the model ----

interface Conv {
  channel: Channel;
  messages: Map<bigint, Message>; // by message_id, folded (edits and deletes applied)
  loaded: boolean;
  more: boolean; // older history remains
  oldest: bigint;
  receipts: Map<string, ReceiptEvent>;
  typing: Map<string, number>; // user → expiry (ms)
  error: string;
}

class App {
  clients: ChatdClients;
  conn: ChatConnection;
  convs = new Map<string, Conv>();
  presence = new Map<string, Presence>();
  selected = "";
  connState: ConnectionState = "connecting";
  presenceAbort: AbortController | undefined;
  presenceUsers = "";
  contactsAdded = new Set<string>();
  lastTypingSent = 0;
  editing: { channelId: string; messageId: bigint } | undefined;

  // regions
  el = {
    conn: h("span", { class: "conn", role: "status", "aria-live": "polite" }),
    list: h("ul", { class: "channels", "aria-label": "Conversations" }),
    listErr: h("p", { class: "error", role: "alert" }),
    head: h("div", { class: "head" }),
    msgs: h("ol", { class: "messages", "aria-label": "Messages", "aria-live": "polite" }),
    convErr: h("p", { class: "error", role: "alert", id: "conversation-error" }),
    typing: h("div", { class: "typing", "aria-live": "polite" }),
    input: h("textarea", { id: "composer", "aria-label": "Message", placeholder: "Write a message — Enter sends, Shift+Enter for a new line", rows: 1 }),
    sendBtn: h("button", { type: "submit", class: "primary" }, "Send"),
    cancelBtn: h("button", { type: "button", hidden: true }, "Cancel edit"),
  };

  constructor(
    readonly root: HTMLElement,
    readonly me: Session,
  ) {
    this.clients = createClients(BASE, me.accessToken);
    this.conn = new ChatConnection({
      baseUrl: BASE,
      token: me.accessToken,
      onDelivery: (d) => this.onDelivery(d),
      onTyping: (t) => {
        if (t.userId === me.userId) return;
        const c = this.convs.get(t.channelId);
        if (!c) return;
        c.typing.set(t.userId, t.expiresAt ? t.expiresAt.getTime() : Date.now() + 5000);
        this.renderTyping();
      },
      onReceipt: (r) => {
        const c = this.convs.get(r.channelId);
        if (!c) return;
        this.mergeReceipt(c, r);
        if (r.channelId === this.selected) this.renderMessages(false);
      },
      onUnread: (u) => {
        const c = this.convs.get(u.channelId);
        if (!c) return;
        c.channel.unreadCount = u.unreadCount;
        this.renderList();
      },
      onState: (s, err) => {
        this.connState = s;
        this.renderConn();
        if (s === "live") void this.refreshChannels();
        if (s === "closed" && err && err.code === Status.UNAUTHENTICATED) this.logout(`Logged out: ${err.message}`);
      },
    });
  }

  mount(): void {
    const newChat = h("input", { id: "new-chat", "aria-label": "Username to chat with", placeholder: "username", autocapitalize: "none" });
    const groupName = h("input", { id: "group-name", "aria-label": "Group name", placeholder: "group name" });
    const groupMembers = h("input", { id: "group-members", "aria-label": "Group members (comma-separated usernames)", placeholder: "members: bob, carol" });
    const composer = h(
      "form",
      { class: "composer", "aria-label": "Send a message", onsubmit: (e) => (e.preventDefault(), void this.submit()) },
      this.el.input,
      this.el.cancelBtn,
      this.el.sendBtn,
    );
    this.el.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        void this.submit();
      } else if (e.key === "Escape" && this.editing) {
        e.preventDefault();
        this.cancelEdit();
      }
    });
    this.el.input.addEventListener("input", () => this.sendTyping());
    this.el.cancelBtn.addEventListener("click", () => this.cancelEdit());
    const app = h(
      "div",
      { class: "app" },
      h(
        "header",
        { class: "top" },
        h("span", { class: "me" }, this.me.userId),
        this.el.conn,
        h("span", { class: "spacer" }),
        h("button", { type: "button", onclick: () => void this.logout("") }, "Log out"),
      ),
      h(
        "aside",
        { "aria-label": "Conversations and new chats" },
        h("h2", {}, "New chat"),
        h(
          "form",
          { "aria-label": "Start a chat", onsubmit: (e) => (e.preventDefault(), void this.startChat(newChat)) },
          newChat,
          h("button", { type: "submit" }, "Start chat"),
        ),
        h("h2", {}, "New group"),
        h(
          "form",
          { "aria-label": "Create a group", onsubmit: (e) => (e.preventDefault(), void this.createGroup(groupName, groupMembers)) },
          groupName,
          groupMembers,
          h("button", { type: "submit" }, "Create group"),
        ),
        this.el.listErr,
        h("h2", {}, "Conversations"),
        this.el.list,
      ),
      h("main", { "aria-label": "Conversation" }, this.el.head, this.el.convErr, this.el.msgs, this.el.typing, composer),
    );
    this.root.replaceChildren(app);
    this.renderConn();
    this.renderConversation();
    window.addEventListener("hashchange", () => this.fromHash());
    setInterval(() => this.renderTyping(), 1000);
    this.conn.start();
    void this.refreshChannels().then(() => this.fromHash());
  }

  fromHash(): void {
    const m = /^#c=(.+)$/.exec(location.hash);
    if (m) void this.select(decodeURIComponent(m[1]));
  }

  // ---- data ----

  async refreshChannels(): Promise<void> {
    try {
      const r = await this.clients.chat.listChannels({ pageSize: 200 });
      for (const ch of r.channels) {
        const c = this.conv(ch.channelId, ch);
        // Markers only move forward: a list fetched before a local mark-read
        // must not move it back.
        const read = c.channel.readUpTo && c.channel.readUpTo > ch.readUpTo ? c.channel.readUpTo : ch.readUpTo;
        const unread = read > ch.readUpTo ? 0 : ch.unreadCount;
        c.channel = { ...ch, readUpTo: read, unreadCount: unread, members: ch.members.length ? ch.members : c.channel.members };
        for (const rc of ch.receipts) this.mergeReceipt(c, rc);
      }
      this.el.listErr.textContent = "";
      this.renderList();
      void this.watchPresence();
    } catch (e) {
      this.el.listErr.textContent = errText(e);
    }
  }

  private refreshTimer: ReturnType<typeof setTimeout> | undefined;

  /** scheduleRefresh reloads the conversation list once, 300 ms after the last call. */
  scheduleRefresh(): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = undefined;
      void this.refreshChannels();
    }, 300);
  }

  conv(id: string, ch?: Channel): Conv {
    let c = this.convs.get(id);
    if (!c) {
      c = {
        channel: ch ?? ({ channelId: id, type: id.startsWith("dm:") ? ChannelType.CHANNEL_TYPE_DIRECT : ChannelType.CHANNEL_TYPE_GROUP, name: "", members: [], unreadCount: 0 } as unknown as Channel),
        messages: new Map(),
        loaded: false,
        more: true,
        oldest: 0n,
        receipts: new Map(),
        typing: new Map(),
        error: "",
      };
      this.convs.set(id, c);
    }
    return c;
  }

  /** mergeReceipt keeps each member's highest markers: an event carries the marker that moved (the other may be 0), and markers never move back. */
  mergeReceipt(c: Conv, r: ReceiptEvent): void {
    const old = c.receipts.get(r.userId);
    const max = (a: bigint, b: bigint) => (a > b ? a : b);
    c.receipts.set(r.userId, old ? { ...r, deliveredUpTo: max(old.deliveredUpTo, r.deliveredUpTo), readUpTo: max(old.readUpTo, r.readUpTo) } : r);
  }

  peerOf(c: Conv): string {
    if (c.channel.type !== ChannelType.CHANNEL_TYPE_DIRECT) return "";
    const parts = c.channel.channelId.split(":").slice(1);
    return parts.find((p) => p !== this.me.userId) ?? parts[0] ?? "";
  }

  title(c: Conv): string {
    return c.channel.type === ChannelType.CHANNEL_TYPE_DIRECT ? this.peerOf(c) : c.channel.name || c.channel.channelId;
  }

  /**
   * watchPresence subscribes to the presence of the 1:1 peers. Each peer is
   * added as a contact first (so that they see ours), then the page
   * subscribes with an empty user list: the server sends the presence of
   * every contact who has added us back and leaves the others out. Naming
   * the peers instead would fail the whole stream with PermissionDenied
   * for one peer who has not added us, and hide everyone's dot.
   */
  async watchPresence(recheckMs = 2000): Promise<void> {
    const peers = [...this.convs.values()].map((c) => this.peerOf(c)).filter((p) => p && p !== this.me.userId);
    const key = [...new Set(peers)].sort().join(",");
    const adds: Promise<unknown>[] = [];
    for (const p of peers) {
      if (this.contactsAdded.has(p)) continue;
      this.contactsAdded.add(p);
      adds.push(this.clients.account.addContact({ username: p }).catch(() => this.contactsAdded.delete(p)));
    }
    if (key === this.presenceUsers || !key) return;
    this.presenceUsers = key;
    this.presenceAbort?.abort();
    const abort = new AbortController();
    this.presenceAbort = abort;
    await Promise.all(adds); // the subscription lists contacts as they are when it opens
    // A peer who adds us back later is not in that list: while some peer's
    // presence is missing, subscribe again after a growing delay (capped at
    // a minute), as the old per-peer subscription's retries did.
    setTimeout(() => {
      if (abort.signal.aborted || peers.every((p) => this.presence.has(p))) return;
      this.presenceUsers = "";
      void this.watchPresence(Math.min(recheckMs * 2, 60_000));
    }, recheckMs);
    for (let attempt = 0; !abort.signal.aborted; attempt++) {
      try {
        for await (const r of this.clients.presenceStream.subscribe({ userIds: [] }, { signal: abort.signal })) {
          attempt = 0;
          if (r.presence) {
            this.presence.set(r.presence.userId, r.presence);
            this.renderList();
            this.renderHead();
          }
        }
      } catch (e) {
        // A server restart ends the stream: reconnect below. A refusal
        // that a retry cannot change ends the subscription.
        const code = toChatError(e).code;
        if (code === Status.PERMISSION_DENIED || code === Status.UNAUTHENTICATED || code === Status.INVALID_ARGUMENT) return;
      }
      await new Promise((res) => setTimeout(res, Math.min(10_000, 500 * 2 ** attempt) * Math.random() + 200));
    }
  }

  onDelivery(d: Delivery): void {
    const m = d.message;
    if (!m) return;
    const known = this.convs.has(m.channelId);
    const c = this.conv(m.channelId);
    this.apply(c, m);
    if (m.kind === MessageKind.MESSAGE_KIND_TEXT || m.kind === MessageKind.MESSAGE_KIND_SYSTEM) {
      c.channel.lastMessage = m;
      c.channel.lastMessageId = m.messageId;
      c.typing.delete(m.senderId);
      if (m.senderId !== this.me.userId) {
        if (m.channelId === this.selected && document.visibilityState === "visible") this.markRead(c);
        else c.channel.unreadCount = (c.channel.unreadCount || 0) + 1;
      }
    }
    // The server's counts are authoritative (a local +1 can race a refresh
    // that already counted the message): refresh soon after a burst.
    if (!known || m.kind === MessageKind.MESSAGE_KIND_SYSTEM || m.channelId !== this.selected) this.scheduleRefresh();
    this.renderList();
    if (m.channelId === this.selected) {
      this.renderMessages(true);
      this.renderTyping();
    }
  }

  /** apply folds one stored row into the conversation's view. */
  apply(c: Conv, m: Message): void {
    switch (m.kind) {
      case MessageKind.MESSAGE_KIND_EDIT: {
        const t = c.messages.get(m.refMessageId);
        if (t) c.messages.set(t.messageId, { ...t, text: m.text, edited: true, editedAt: m.createdAt });
        const last = c.channel.lastMessage;
        if (last && last.messageId === m.refMessageId) c.channel.lastMessage = { ...last, text: m.text, edited: true };
        break;
      }
      case MessageKind.MESSAGE_KIND_DELETE: {
        if (m.forUser && m.forUser !== this.me.userId) break;
        const t = c.messages.get(m.refMessageId);
        if (m.forUser) c.messages.delete(m.refMessageId);
        else if (t) c.messages.set(t.messageId, { ...t, text: "", deleted: true });
        const last = c.channel.lastMessage;
        if (last && last.messageId === m.refMessageId) c.channel.lastMessage = { ...last, text: "", deleted: true };
        break;
      }
      default:
        if (c.loaded || c.messages.size > 0 || m.channelId === this.selected) c.messages.set(m.messageId, m);
    }
  }

  markRead(c: Conv): void {
    const id = c.channel.lastMessageId;
    if (!id || (c.channel.readUpTo && c.channel.readUpTo >= id)) return;
    c.channel.readUpTo = id;
    c.channel.unreadCount = 0;
    // A unary call: it does not depend on the stream being up at this
    // moment, and a read marker only moves forward, so a retry is safe.
    const req = { channelId: c.channel.channelId, messageId: id };
    this.clients.chat.markRead(req).catch(() => setTimeout(() => this.clients.chat.markRead(req).catch(() => {}), 1000));
  }

  async select(id: string): Promise<void> {
    this.selected = id;
    this.cancelEdit();
    if (location.hash !== `#c=${encodeURIComponent(id)}`) history.replaceState(null, "", `#c=${encodeURIComponent(id)}`);
    const c = this.conv(id);
    this.renderList();
    this.renderConversation();
    if (!c.loaded) await this.loadOlder(c, true);
    if (!c.error) this.markRead(c);
    this.renderList();
    this.el.input.focus();
  }

  async loadOlder(c: Conv, first = false): Promise<void> {
    try {
      const r = await this.clients.chat.getHistory({ channelId: c.channel.channelId, beforeMessageId: first ? 0n : c.oldest, pageSize: 30 });
      for (const m of r.messages) {
        if (m.kind === MessageKind.MESSAGE_KIND_TEXT || m.kind === MessageKind.MESSAGE_KIND_SYSTEM) c.messages.set(m.messageId, m);
      }
      if (r.messages.length) {
        const min = r.messages[0].messageId;
        c.oldest = c.oldest === 0n || min < c.oldest ? min : c.oldest;
      }
      c.more = r.more;
      if (r.more && r.nextMessageId) c.oldest = r.nextMessageId;
      c.loaded = true;
      c.error = "";
    } catch (e) {
      const ce = toChatError(e);
      if (ce.code === Status.NOT_FOUND && this.peerOf(c)) {
        c.loaded = true; // a 1:1 chat that has no message yet: its channel is created by the first one
        c.more = false;
        c.error = "";
      } else {
        c.error = errText(e);
      }
    }
    if (c.channel.channelId === this.selected) this.renderConversation(first);
  }

  // ---- actions ----

  async submit(): Promise<void> {
    const text = this.el.input.value;
    if (!text.trim() || !this.selected) return;
    const c = this.conv(this.selected);
    this.el.convErr.textContent = "";
    const editing = this.editing;
    this.el.input.value = "";
    this.cancelEdit();
    try {
      if (editing) await this.conn.edit(editing.channelId, editing.messageId, text);
      else if (this.peerOf(c)) await this.conn.send({ toUser: this.peerOf(c), text }); // creates the 1:1 channel on first use
      else await this.conn.send({ channelId: c.channel.channelId, text });
    } catch (e) {
      this.el.convErr.textContent = errText(e);
      if (!editing) this.el.input.value = text;
    }
  }

  sendTyping(): void {
    if (!this.selected || this.editing) return;
    const now = Date.now();
    if (now - this.lastTypingSent < 2000) return;
    this.lastTypingSent = now;
    this.conn.typing(this.selected);
  }

  startEdit(m: Message): void {
    this.editing = { channelId: m.channelId, messageId: m.messageId };
    this.el.input.value = m.text;
    this.el.sendBtn.textContent = "Save";
    this.el.cancelBtn.hidden = false;
    this.el.input.focus();
  }

  cancelEdit(): void {
    if (!this.editing) return;
    this.editing = undefined;
    this.el.input.value = "";
    this.el.sendBtn.textContent = "Send";
    this.el.cancelBtn.hidden = true;
  }

  async deleteMessage(m: Message): Promise<void> {
    if (!confirm("Delete this message for everyone?")) return;
    try {
      await this.conn.delete(m.channelId, m.messageId);
    } catch (e) {
      this.el.convErr.textContent = errText(e);
    }
  }

  async startChat(input: HTMLInputElement): Promise<void> {
    const who = input.value.trim().toLowerCase();
    if (!who) return;
    this.el.listErr.textContent = "";
    try {
      await this.clients.account.getProfile({ username: who });
      const id = `dm:${[this.me.userId, who].sort().join(":")}`;
      this.conv(id, { channelId: id, type: ChannelType.CHANNEL_TYPE_DIRECT, members: [], name: "", unreadCount: 0 } as unknown as Channel);
      input.value = "";
      void this.watchPresence();
      await this.select(id);
    } catch (e) {
      this.el.listErr.textContent = errText(e);
    }
  }

  async createGroup(name: HTMLInputElement, members: HTMLInputElement): Promise<void> {
    this.el.listErr.textContent = "";
    try {
      const ids = members.value.split(/[\s,]+/).map((s) => s.trim().toLowerCase()).filter(Boolean);
      const r = await this.clients.chat.createGroup({ name: name.value.trim(), memberIds: ids });
      if (!r.channel) return;
      this.conv(r.channel.channelId, r.channel).channel = r.channel;
      name.value = members.value = "";
      await this.select(r.channel.channelId);
    } catch (e) {
      this.el.listErr.textContent = errText(e);
    }
  }

  async addMember(c: Conv, input: HTMLInputElement): Promise<void> {
    try {
      const r = await this.clients.chat.addMember({ channelId: c.channel.channelId, userId: input.value.trim().toLowerCase(), role: 0 });
      if (r.channel) c.channel = { ...c.channel, members: r.channel.members };
      input.value = "";
      this.renderHead();
    } catch (e) {
      this.el.convErr.textContent = errText(e);
    }
  }

  async removeMember(c: Conv, user: string): Promise<void> {
    try {
      await this.clients.chat.removeMember({ channelId: c.channel.channelId, userId: user });
      c.channel.members = c.channel.members.filter((m) => m.userId !== user);
      this.renderHead();
    } catch (e) {
      this.el.convErr.textContent = errText(e);
    }
  }

  async logout(message: string): Promise<void> {
    if (!message) await this.clients.account.logOut({}).catch(() => {});
    this.presenceAbort?.abort();
    await this.conn.close();
    localStorage.removeItem(STORE_KEY);
    history.replaceState(null, "", "/");
    showAuth(this.root, message);
  }

  // ---- rendering ----

  renderConn(): void {
    const labels: Record<ConnectionState, string> = {
      connecting: "connecting…",
      syncing: "syncing…",
      live: "connected",
      reconnecting: "reconnecting…",
      closed: "disconnected",
    };
    this.el.conn.dataset.state = this.connState;
    this.el.conn.textContent = labels[this.connState];
  }

  renderList(): void {
    const convs = [...this.convs.values()].sort((a, b) => (b.channel.lastMessageId ?? 0n) > (a.channel.lastMessageId ?? 0n) ? 1 : -1);
    const items = convs.map((c) => {
      const peer = this.peerOf(c);
      const p = peer ? this.presence.get(peer) : undefined;
      const online = p?.status === PresenceStatus.PRESENCE_STATUS_ONLINE;
      const last = c.channel.lastMessage;
      const preview = last ? (last.deleted ? "message deleted" : `${last.senderId === this.me.userId ? "You" : last.senderId}: ${last.text}`) : "no messages yet";
      const unread = c.channel.unreadCount || 0;
      return h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            "data-channel": c.channel.channelId,
            "aria-current": c.channel.channelId === this.selected ? "true" : "false",
            "aria-label": `${this.title(c)}${peer ? `, ${lastSeen(p) || "presence unknown"}` : ""}${unread ? `, ${unread} unread` : ""}`,
            onclick: () => void this.select(c.channel.channelId),
          },
          h("span", { class: peer ? "dot" : "dot none", "data-online": online ? "true" : "false", "data-presence": peer, title: lastSeen(p) }),
          h("span", { class: "name" }, this.title(c)),
          unread ? h("span", { class: "badge", "aria-hidden": "true" }, String(unread)) : h("span", {}),
          h("span", { class: "last" }, preview),
        ),
      );
    });
    this.el.list.replaceChildren(...items);
  }

  renderConversation(scrollToEnd = true): void {
    this.renderHead();
    this.renderMessages(scrollToEnd);
    this.renderTyping();
    const has = !!this.selected;
    this.el.input.disabled = !has;
    this.el.sendBtn.disabled = !has;
  }

  renderHead(): void {
    if (!this.selected) {
      this.el.head.replaceChildren(h("h2", {}, "No conversation selected"));
      return;
    }
    const c = this.conv(this.selected);
    const peer = this.peerOf(c);
    const p = peer ? this.presence.get(peer) : undefined;
    const parts: Node[] = [
      h(
        "h2",
        { id: "conversation-title" },
        peer ? h("span", { class: "dot", "data-online": p?.status === PresenceStatus.PRESENCE_STATUS_ONLINE ? "true" : "false" }) : "",
        this.title(c),
      ),
      h("div", { class: "sub" }, peer ? lastSeen(p) : `${c.channel.members.length} members`),
    ];
    if (c.channel.type === ChannelType.CHANNEL_TYPE_GROUP && c.channel.members.length) {
      const add = h("input", { "aria-label": "Username to add", placeholder: "add member", autocapitalize: "none" });
      parts.push(
        h(
          "div",
          { class: "members", "aria-label": "Members" },
          ...c.channel.members.map((m) =>
            h(
              "span",
              { class: "chip" },
              m.userId,
              h("button", { type: "button", "aria-label": `Remove ${m.userId}`, onclick: () => void this.removeMember(c, m.userId) }, "×"),
            ),
          ),
          h("form", { "aria-label": "Add a member", onsubmit: (e) => (e.preventDefault(), void this.addMember(c, add)) }, add, h("button", { type: "submit" }, "Add")),
        ),
      );
    }
    this.el.head.replaceChildren(...parts);
    this.el.convErr.textContent = c.error;
  }

  renderMessages(scrollToEnd: boolean): void {
    if (!this.selected) {
      this.el.msgs.replaceChildren(h("li", { class: "system" }, "Pick a conversation or start one."));
      return;
    }
    const c = this.conv(this.selected);
    const atEnd = this.el.msgs.scrollHeight - this.el.msgs.scrollTop - this.el.msgs.clientHeight < 40;
    const list = [...c.messages.values()].sort((a, b) => (a.messageId < b.messageId ? -1 : 1));
    const others = [...c.receipts.values()].filter((r) => r.userId !== this.me.userId);
    const items: HTMLElement[] = [];
    if (c.loaded && c.more) {
      items.push(h("li", { class: "system" }, h("button", { type: "button", class: "more", onclick: () => void this.loadOlder(c) }, "Load older messages")));
    }
    for (const m of list) {
      if (m.kind === MessageKind.MESSAGE_KIND_SYSTEM) {
        items.push(h("li", { class: "system" }, m.text));
        continue;
      }
      const mine = m.senderId === this.me.userId;
      let tick = "";
      if (mine && !m.deleted) {
        const read = others.length > 0 && others.every((r) => r.readUpTo >= m.messageId);
        const delivered = others.length > 0 && others.every((r) => r.deliveredUpTo >= m.messageId || r.readUpTo >= m.messageId);
        tick = read ? "✓✓ read" : delivered ? "✓✓ delivered" : "✓ sent";
      }
      items.push(
        h(
          "li",
          { class: mine ? "mine" : "", "data-message-id": String(m.messageId) },
          mine ? null : h("div", { class: "meta" }, m.senderId),
          m.deleted ? h("div", { class: "text deleted" }, "message deleted") : h("div", { class: "text" }, m.text),
          h(
            "div",
            { class: "meta" },
            h("time", { datetime: m.createdAt?.toISOString() ?? "" }, fmtTime(m.createdAt)),
            m.edited && !m.deleted ? h("span", {}, "edited") : null,
            tick ? h("span", { class: "tick", "aria-label": tick }, tick) : null,
            mine && !m.deleted ? h("button", { type: "button", "aria-label": "Edit message", onclick: () => this.startEdit(m) }, "Edit") : null,
            mine && !m.deleted ? h("button", { type: "button", "aria-label": "Delete message", onclick: () => void this.deleteMessage(m) }, "Delete") : null,
          ),
        ),
      );
    }
    if (c.loaded && list.length === 0 && !c.error) items.push(h("li", { class: "system" }, "No messages yet. Say hello!"));
    this.el.msgs.replaceChildren(...items);
    if (scrollToEnd || atEnd) this.el.msgs.scrollTop = this.el.msgs.scrollHeight;
  }

  renderTyping(): void {
    const c = this.selected ? this.convs.get(this.selected) : undefined;
    const now = Date.now();
    const who = c ? [...c.typing.entries()].filter(([, until]) => until > now).map(([u]) => u) : [];
    const text = who.length ? `${who.join(", ")} ${who.length === 1 ? "is" : "are"} typing…` : "";
    if (this.el.typing.textContent !== text) this.el.typing.textContent = text;
  }
}

function start(root: HTMLElement, s: Session): void {
  const app = new App(root, s);
  app.mount();
  (window as unknown as { chatd: App }).chatd = app; // for debugging and the browser test
}

const root = document.getElementById("root") as HTMLElement;
const saved = localStorage.getItem(STORE_KEY);
if (saved) {
  try {
    start(root, JSON.parse(saved) as Session);
  } catch {
    showAuth(root);
  }
} else {
  showAuth(root);
}
