"""chatd through a client nobody here wrote: Python stubs generated from
proto/ by grpcio-tools, on grpc's C-core, against a real chatd (conftest.py).

Covers the Chat stream (Welcome, send with client_message_id, live delivery
to every device of both users, ack, sync with paging, a retried send
answered as a duplicate, raw malformed frames), history paging, and the
status codes of the usual mistakes.
"""

import itertools
import queue
import threading

import grpc
import pytest

from chat.v1 import account_pb2, account_pb2_grpc, chat_pb2, chat_pb2_grpc

WAIT = 10  # seconds for any expected frame or call
MAX_TEXT_BYTES = 65536

_names = itertools.count(1)


class Account:
    """A signed-up user and its logged-in devices (device name -> token)."""

    def __init__(self, user_id, tokens):
        self.user_id = user_id
        self.tokens = tokens

    def md(self, device):
        return [("authorization", "Bearer " + self.tokens[device])]


@pytest.fixture
def accounts(channel, run_id):
    """accounts(("alice", ["laptop", "phone"]), ...) signs each user up and
    logs in each device; usernames are made unique per run."""
    acc = account_pb2_grpc.AccountServiceStub(channel)

    def make(*specs):
        out = []
        for name, devices in specs:
            username = f"{name}{next(_names)}-{run_id}"
            password = "password-" + username
            acc.SignUp(account_pb2.SignUpRequest(username=username, password=password, display_name=name.title()), timeout=WAIT)
            tokens = {}
            for d in devices:
                r = acc.LogIn(account_pb2.LogInRequest(username=username, password=password, device_name=d), timeout=WAIT)
                assert r.user_id == username and r.access_token and r.device_id
                tokens[d] = r.access_token
            out.append(Account(username, tokens))
        return out

    return make


_END = object()


class Stream:
    """One device's Chat stream: frames are written from a queue, and a
    thread reads the server's frames into another. raw=True sends bytes
    as they are (frames built by hand)."""

    def __init__(self, channel, metadata, raw=False, welcome=True):
        if raw:
            call = channel.stream_stream(
                "/chat.v1.ChatService/Chat",
                request_serializer=lambda b: b,
                response_deserializer=chat_pb2.ServerFrame.FromString,
            )
        else:
            call = chat_pb2_grpc.ChatServiceStub(channel).Chat
        self.out = queue.Queue()
        self.frames = queue.Queue()
        self.pending = []
        self.ids = itertools.count(1)
        self.end = None
        self.call = call(self._requests(), metadata=metadata)
        threading.Thread(target=self._read, daemon=True).start()
        if welcome:
            f = self.next()
            assert f.WhichOneof("payload") == "welcome", f
            assert f.frame_id == 0
            self.welcome = f.welcome

    def _requests(self):
        while True:
            f = self.out.get()
            if f is None:
                return  # half-close
            yield f

    def _read(self):
        try:
            for f in self.call:
                self.frames.put(f)
            self.frames.put((_END, None))
        except grpc.RpcError as e:
            self.frames.put((_END, e))

    def _get(self):
        item = self.frames.get(timeout=WAIT)
        if isinstance(item, tuple) and item[0] is _END:
            self.end = item[1]
            self.frames.put(item)  # stays ended
            raise AssertionError(f"stream ended: {item[1]!r}")
        return item

    def next(self):
        if self.pending:
            return self.pending.pop(0)
        return self._get()

    def send(self, **payload):
        """Sends a ClientFrame with a fresh frame_id and returns the id."""
        fid = next(self.ids)
        self.out.put(chat_pb2.ClientFrame(frame_id=fid, **payload))
        return fid

    def send_raw(self, data: bytes):
        self.out.put(data)

    def reply(self, fid):
        """The frame echoing fid; frames read on the way are kept."""
        for i, f in enumerate(self.pending):
            if f.frame_id == fid:
                return self.pending.pop(i)
        while True:
            f = self._get()
            if f.frame_id == fid:
                return f
            self.pending.append(f)

    def send_text(self, cmid, text, to_user=None, channel_id=None):
        if to_user is not None:
            m = chat_pb2.SendMessage(to_user=to_user, client_message_id=cmid, text=text)
        else:
            m = chat_pb2.SendMessage(channel_id=channel_id, client_message_id=cmid, text=text)
        return self.send(send=m)

    def send_ack(self, fid):
        f = self.reply(fid)
        assert f.WhichOneof("payload") == "send_ack", f
        return f.send_ack

    def error(self, fid, code):
        f = self.reply(fid)
        assert f.WhichOneof("payload") == "error", f
        assert f.error.code == code.value[0], f"want {code}: {f.error}"
        return f.error

    def deliveries(self, n):
        out, rest = [], []
        for f in self.pending:
            (out if f.WhichOneof("payload") == "delivery" and len(out) < n else rest).append(f)
        self.pending = rest
        while len(out) < n:
            f = self._get()
            if f.WhichOneof("payload") == "delivery":
                out.append(f)
            else:
                self.pending.append(f)
        return [f.delivery for f in out]

    def heartbeat(self):
        f = self.reply(self.send(heartbeat=chat_pb2.Heartbeat()))
        assert f.WhichOneof("payload") == "heartbeat_ack", f
        assert f.heartbeat_ack.server_time.seconds > 0

    def quiet(self):
        """No delivery is waiting: anything routed before a heartbeat's
        reply is queued ahead of it."""
        self.heartbeat()
        assert not [f for f in self.pending if f.WhichOneof("payload") == "delivery"], self.pending

    def ack(self, seq):
        f = self.reply(self.send(ack=chat_pb2.Ack(inbox_seq=seq)))
        assert f.WhichOneof("payload") == "ack_result", f
        return f.ack_result.cursor

    def close(self):
        """Half-closes; the server ends the stream OK."""
        self.out.put(None)
        while True:
            item = self.frames.get(timeout=WAIT)
            if isinstance(item, tuple) and item[0] is _END:
                assert item[1] is None, f"stream ended with {item[1]!r}"
                return


def test_chat_stream(channel, accounts):
    alice, bob = accounts(("alice", ["laptop", "phone"]), ("bob", ["laptop", "phone"]))
    a1 = Stream(channel, alice.md("laptop"))
    a2 = Stream(channel, alice.md("phone"))
    b1 = Stream(channel, bob.md("laptop"))
    b2 = Stream(channel, bob.md("phone"))
    assert a1.welcome.user_id == alice.user_id and b2.welcome.user_id == bob.user_id
    assert a1.welcome.device_id != a2.welcome.device_id
    assert b1.welcome.cursor == 0 and b1.welcome.head_seq == 0
    assert a1.welcome.heartbeat_interval_ms > 0 and a1.welcome.server_id

    # Send with a client_message_id: SendAck echoes the frame id.
    ack = a1.send_ack(a1.send_text("m-1", "hello bob", to_user=bob.user_id))
    dm = f"dm:{min(alice.user_id, bob.user_id)}:{max(alice.user_id, bob.user_id)}"
    assert ack.channel_id == dm and ack.message_id > 0 and not ack.duplicate
    assert ack.client_message_id == "m-1" and ack.created_at.seconds > 0

    # Live delivery to both of bob's devices and to alice's other device
    # (a sender's devices see the account's whole log), same (channel_id,
    # message_id) everywhere.
    for s in (b1, b2, a2):
        (d,) = s.deliveries(1)
        assert d.inbox_seq == 1
        assert (d.message.channel_id, d.message.message_id) == (dm, ack.message_id)
        assert d.message.text == "hello bob" and d.message.sender_id == alice.user_id
        assert d.message.client_message_id == "m-1"
    assert b1.ack(1) == 1

    # A retried send is answered as a duplicate with the original ack, and
    # nothing new is delivered.
    dup = a1.send_ack(a1.send_text("m-1", "hello bob", to_user=bob.user_id))
    assert dup.duplicate and dup.message_id == ack.message_id and dup.channel_id == dm
    b1.quiet()
    a2.quiet()

    # bob's phone goes away without acking; five more messages arrive
    # live on his laptop.
    b2.close()
    ids = [a1.send_ack(a1.send_text(f"m-{i}", f"message {i}", to_user=bob.user_id)).message_id for i in range(2, 7)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    got = b1.deliveries(5)
    assert [d.inbox_seq for d in got] == [2, 3, 4, 5, 6]
    assert b1.ack(6) == 6

    # The phone comes back behind (cursor 0, head 6) and syncs in pages of 2.
    b2 = Stream(channel, bob.md("phone"))
    assert (b2.welcome.cursor, b2.welcome.head_seq) == (0, 6)
    after, pages, synced = b2.welcome.cursor, [], []
    while True:
        f = b2.reply(b2.send(sync=chat_pb2.SyncRequest(after_seq=after, limit=2)))
        assert f.WhichOneof("payload") == "sync_page", f
        pages.append(f.sync_page)
        synced += f.sync_page.deliveries
        after = f.sync_page.next_after_seq
        if not f.sync_page.more:
            break
    assert [len(p.deliveries) for p in pages] == [2, 2, 2]
    assert [p.next_after_seq for p in pages] == [2, 4, 6]
    assert [d.inbox_seq for d in synced] == [1, 2, 3, 4, 5, 6]
    assert [d.message.message_id for d in synced] == [ack.message_id] + ids
    assert [d.message.text for d in synced] == ["hello bob"] + [f"message {i}" for i in range(2, 7)]
    assert b2.ack(6) == 6
    # Acks never move a cursor back.
    assert b2.ack(3) == 6

    # Now live: the next message comes once, as seq 7.
    seventh = a1.send_ack(a1.send_text("m-7", "seventh", to_user=bob.user_id))
    (d,) = b2.deliveries(1)
    assert d.inbox_seq == 7 and d.message.message_id == seventh.message_id
    b2.quiet()

    # An ack beyond the inbox head is refused; the stream goes on.
    b2.error(b2.send(ack=chat_pb2.Ack(inbox_seq=1 << 40)), grpc.StatusCode.FAILED_PRECONDITION)
    # A frame with no payload, and a sync page size out of range.
    b2.error(b2.send(), grpc.StatusCode.INVALID_ARGUMENT)
    b2.error(b2.send(sync=chat_pb2.SyncRequest(limit=-1)), grpc.StatusCode.INVALID_ARGUMENT)
    b2.error(b2.send(sync=chat_pb2.SyncRequest(limit=100000)), grpc.StatusCode.INVALID_ARGUMENT)
    b2.heartbeat()

    for s in (a1, a2, b1, b2):
        s.close()


def test_history_paging(channel, accounts):
    alice, bob = accounts(("alice", ["laptop"]), ("bob", ["laptop"]))
    a = Stream(channel, alice.md("laptop"))
    sent = [a.send_ack(a.send_text(f"h-{i}", f"history {i}", to_user=bob.user_id)) for i in range(5)]
    a.close()

    chat = chat_pb2_grpc.ChatServiceStub(channel)
    pages, before = [], 0
    while True:
        r = chat.GetHistory(chat_pb2.GetHistoryRequest(to_user=alice.user_id, before_message_id=before, page_size=2),
                            metadata=bob.md("laptop"), timeout=WAIT)
        pages.append(r)
        ids = [m.message_id for m in r.messages]
        assert ids == sorted(ids), "a page is in ascending message_id order"
        if not r.more:
            break
        before = r.next_message_id
    assert [len(p.messages) for p in pages] == [2, 2, 1]
    history = [m for p in reversed(pages) for m in p.messages]
    assert [m.message_id for m in history] == [s.message_id for s in sent]
    assert [m.text for m in history] == [f"history {i}" for i in range(5)]
    assert {m.sender_id for m in history} == {alice.user_id}

    # Forward from the oldest: the rest, in order.
    r = chat.GetHistory(chat_pb2.GetHistoryRequest(channel_id=sent[0].channel_id, after_message_id=sent[0].message_id, page_size=10),
                        metadata=alice.md("laptop"), timeout=WAIT)
    assert [m.message_id for m in r.messages] == [s.message_id for s in sent[1:]] and not r.more

    # Page sizes out of range.
    with pytest.raises(grpc.RpcError) as e:
        chat.GetHistory(chat_pb2.GetHistoryRequest(to_user=alice.user_id, page_size=501), metadata=bob.md("laptop"), timeout=WAIT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unauthenticated(channel, server):
    chat = chat_pb2_grpc.ChatServiceStub(channel)
    for md in (None, [("authorization", "Bearer not-a-token")], [("authorization", "Basic YTpi")]):
        with pytest.raises(grpc.RpcError) as e:
            chat.ListChannels(chat_pb2.ListChannelsRequest(), metadata=md, timeout=WAIT)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, md
    # The stream fails before any frame.
    s = Stream(channel, None, welcome=False)
    item = s.frames.get(timeout=WAIT)
    assert isinstance(item, tuple) and item[0] is _END and item[1] is not None
    assert item[1].code() == grpc.StatusCode.UNAUTHENTICATED
    s.out.put(None)


def test_text_limits(channel, accounts):
    alice, bob = accounts(("alice", ["laptop"]), ("bob", ["laptop"]))
    a = Stream(channel, alice.md("laptop"))
    b = Stream(channel, bob.md("laptop"))

    # C101: exactly the limit, in 4-byte emoji, is stored and delivered
    # byte for byte; 65 KiB is InvalidArgument naming the limit, and the
    # stream stays open with nothing stored.
    exact = "\U0001F600" * (MAX_TEXT_BYTES // 4)
    assert len(exact.encode()) == MAX_TEXT_BYTES
    ok = a.send_ack(a.send_text("exact", exact, to_user=bob.user_id))
    (d,) = b.deliveries(1)
    assert d.message.message_id == ok.message_id and d.message.text.encode() == exact.encode()

    err = a.error(a.send_text("too-long", "x" * (65 * 1024), to_user=bob.user_id), grpc.StatusCode.INVALID_ARGUMENT)
    assert str(MAX_TEXT_BYTES) in err.message
    one_over = a.error(a.send_text("one-over", exact + "x", to_user=bob.user_id), grpc.StatusCode.INVALID_ARGUMENT)
    assert str(MAX_TEXT_BYTES) in one_over.message
    a.error(a.send_text("blank", " \u200b\u200d\ufeff\t", to_user=bob.user_id), grpc.StatusCode.INVALID_ARGUMENT)
    a.heartbeat()
    b.quiet()

    # C102: invalid UTF-8 in the text, in a frame built by hand (no
    # protobuf library will encode it): FrameError with its frame_id, and
    # the stream stays usable.
    r = Stream(channel, alice.md("laptop"), raw=True)
    target = bob.user_id.encode()
    send = (b"\x0a" + bytes([len(target)]) + target  # to_user
            + b"\x1a\x03raw"                        # client_message_id
            + b"\x22\x03\xff\xfe\x41")              # text: not UTF-8
    r.send_raw(b"\x08\x2a" + b"\x12" + bytes([len(send)]) + send)  # frame_id 42, send
    r.error(42, grpc.StatusCode.INVALID_ARGUMENT)
    r.send_raw(chat_pb2.ClientFrame(frame_id=43, heartbeat=chat_pb2.Heartbeat()).SerializeToString())
    assert r.reply(43).WhichOneof("payload") == "heartbeat_ack"
    b.quiet()

    chat = chat_pb2_grpc.ChatServiceStub(channel)
    h = chat.GetHistory(chat_pb2.GetHistoryRequest(to_user=alice.user_id), metadata=bob.md("laptop"), timeout=WAIT)
    assert [m.message_id for m in h.messages] == [ok.message_id], "only the valid message is stored"
    for s in (a, b, r):
        s.close()


def test_strangers(channel, accounts):
    owner, member, stranger = accounts(("owner", ["laptop"]), ("member", ["laptop"]), ("stranger", ["laptop"]))
    chat = chat_pb2_grpc.ChatServiceStub(channel)
    g = chat.CreateGroup(chat_pb2.CreateGroupRequest(name="friends", member_ids=[member.user_id]),
                         metadata=owner.md("laptop"), timeout=WAIT).channel
    assert g.channel_id.startswith("g:") and g.type == chat_pb2.CHANNEL_TYPE_GROUP

    s = Stream(channel, owner.md("laptop"))
    s.send_ack(s.send_text("g-1", "members only", channel_id=g.channel_id))
    s.close()

    # C106: a stranger cannot read the group's history or its details.
    for call, req in ((chat.GetHistory, chat_pb2.GetHistoryRequest(channel_id=g.channel_id)),
                      (chat.GetChannel, chat_pb2.GetChannelRequest(channel_id=g.channel_id))):
        with pytest.raises(grpc.RpcError) as e:
            call(req, metadata=stranger.md("laptop"), timeout=WAIT)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # ... nor add themselves.
    with pytest.raises(grpc.RpcError) as e:
        chat.AddMember(chat_pb2.AddMemberRequest(channel_id=g.channel_id, user_id=stranger.user_id),
                       metadata=stranger.md("laptop"), timeout=WAIT)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # ... nor send to it; a channel that does not exist is NotFound.
    st = Stream(channel, stranger.md("laptop"))
    st.error(st.send_text("x-1", "let me in", channel_id=g.channel_id), grpc.StatusCode.PERMISSION_DENIED)
    st.error(st.send_text("x-2", "anyone?", channel_id="g:00000000000000000000000000000000"), grpc.StatusCode.NOT_FOUND)
    st.close()

    # The member can.
    h = chat.GetHistory(chat_pb2.GetHistoryRequest(channel_id=g.channel_id), metadata=member.md("laptop"), timeout=WAIT)
    assert "members only" in [m.text for m in h.messages]


def test_error_details(channel, run_id):
    """google.rpc error details (grpc-status-details-bin) read by a stack
    nobody here wrote, with grpcio-status: a bad sign-up names its field in
    a BadRequest; a token of a logged-out device says DEVICE_REVOKED in an
    ErrorInfo of domain chatd."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    def details(err):
        st = rpc_status.from_call(err)
        assert st is not None, f"no details on {err.code()} {err.details()}"
        out = {}
        for d in st.details:
            for cls in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
                if d.Is(cls.DESCRIPTOR):
                    m = cls()
                    d.Unpack(m)
                    out[cls.__name__] = m
        return out

    acc = account_pb2_grpc.AccountServiceStub(channel)
    with pytest.raises(grpc.RpcError) as e:
        acc.SignUp(account_pb2.SignUpRequest(username="-x" + run_id, password="longpassword", display_name="D"), timeout=WAIT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = details(e.value)["BadRequest"]
    assert [v.field for v in bad.field_violations] == ["username"], bad

    with pytest.raises(grpc.RpcError) as e:
        acc.SignUp(account_pb2.SignUpRequest(username="d" + run_id, password="short", display_name="D"), timeout=WAIT)
    assert details(e.value)["BadRequest"].field_violations[0].field == "password"

    user = "det" + run_id
    acc.SignUp(account_pb2.SignUpRequest(username=user, password="longpassword", display_name="D"), timeout=WAIT)
    tok = acc.LogIn(account_pb2.LogInRequest(username=user, password="longpassword", device_name="d"), timeout=WAIT).access_token
    md = [("authorization", "Bearer " + tok)]
    acc.LogOut(account_pb2.LogOutRequest(), metadata=md, timeout=WAIT)
    with pytest.raises(grpc.RpcError) as e:
        acc.ListDevices(account_pb2.ListDevicesRequest(), metadata=md, timeout=WAIT)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info = details(e.value)["ErrorInfo"]
    assert (info.reason, info.domain) == ("DEVICE_REVOKED", "chatd"), info
