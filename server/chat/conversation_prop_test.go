package chat

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// The model of the property test: what the unread counts must be.
type modelMsg struct {
	id         uint64
	sender     string
	deletedAll bool
	hiddenFor  map[string]bool
	edits      int
}

type modelChan struct {
	id      string
	members []string
	admins  map[string]bool // group owner and admins
	msgs    []*modelMsg     // text messages, ascending id
	lastRow uint64          // newest row of any kind (MarkRead 0 reads up to it)
}

type model struct {
	chans []*modelChan
	read  map[string]map[string]uint64 // user -> channel -> read marker
}

func (m *model) unread(user string, c *modelChan) int {
	n := 0
	for _, x := range c.msgs {
		if x.id > m.read[user][c.id] && x.sender != user && !x.deletedAll && !x.hiddenFor[user] {
			n++
		}
	}
	return n
}

// TestUnreadCountsProperty runs a randomized mix of 1,000 operations
// (sends by several users, reads up to random points, edits, deletes for
// everyone and for me, acks) from random devices, over the Chat stream
// and the RPCs, and compares every user's unread counts per channel and
// in total, and read markers, with a simple model, through ListChannels
// on every device, every 25 operations.
func TestUnreadCountsProperty(t *testing.T) {
	seed := uint64(20240611)
	rng := rand.New(rand.NewPCG(seed, 1))
	t.Logf("seed %d", seed)
	e := newEnv(t, envConfig{frameRate: 1e6, frameBurst: 1e6})
	users := []string{"alice", "bob", "carol"}
	e.users(users...)
	const devices = 3
	devs := map[string][]*dev{}
	for _, u := range users {
		for i := range devices {
			devs[u] = append(devs[u], e.open(u, fmt.Sprint(u, "-d", i)))
		}
	}
	m := &model{read: map[string]map[string]uint64{}}
	for _, u := range users {
		m.read[u] = map[string]uint64{}
	}
	cmid := 0
	next := func() string { cmid++; return fmt.Sprint("op-", cmid) }

	// Channels: the three direct channels and a group (alice owner, bob
	// admin, carol member), each opened with a message.
	for i, a := range users {
		for _, b := range users[i+1:] {
			ack := devs[a][0].ackOf(devs[a][0].sendTo(b, next(), "hi"))
			c := &modelChan{id: ack.GetChannelId(), members: []string{a, b}, admins: map[string]bool{}}
			c.msgs = append(c.msgs, &modelMsg{id: ack.GetMessageId(), sender: a, hiddenFor: map[string]bool{}})
			c.lastRow = ack.GetMessageId()
			m.chans = append(m.chans, c)
		}
	}
	g := e.group("alice", "bob", "carol")
	if _, err := e.client.AddMember(e.ctx("alice", "setup"), &chatv1.AddMemberRequest{ChannelId: g, UserId: "bob", Role: chatv1.MemberRole_MEMBER_ROLE_ADMIN}); err != nil {
		t.Fatal(err)
	}
	m.chans = append(m.chans, &modelChan{id: g, members: users, admins: map[string]bool{"alice": true, "bob": true}})

	check := func(step int) {
		t.Helper()
		for _, u := range users {
			total := 0
			for _, c := range m.chans {
				if slices.Contains(c.members, u) {
					total += m.unread(u, c)
				}
			}
			for i := range devices {
				chs, first := e.channels(u, fmt.Sprint(u, "-d", i))
				for _, c := range m.chans {
					if !slices.Contains(c.members, u) {
						continue
					}
					got := chs[c.id]
					if want := m.unread(u, c); got.GetUnreadCount() != uint32(want) || got.GetUnreadCapped() {
						t.Fatalf("step %d: %s device %d channel %s: unread %d (capped %v), model %d",
							step, u, i, c.id, got.GetUnreadCount(), got.GetUnreadCapped(), want)
					}
					if got.GetReadUpTo() != m.read[u][c.id] {
						t.Fatalf("step %d: %s channel %s: read_up_to %d, model %d", step, u, c.id, got.GetReadUpTo(), m.read[u][c.id])
					}
				}
				if first.GetTotalUnread() != uint32(total) || first.GetTotalCapped() {
					t.Fatalf("step %d: %s device %d: total %d, model %d", step, u, i, first.GetTotalUnread(), total)
				}
			}
		}
	}

	pick := func(n int) int { return rng.IntN(n) }
	// pickMsg picks one of c's messages that keep accepts; nil if none.
	pickMsg := func(c *modelChan, keep func(x *modelMsg) bool) *modelMsg {
		var cands []*modelMsg
		for _, x := range c.msgs {
			if keep(x) {
				cands = append(cands, x)
			}
		}
		if len(cands) == 0 {
			return nil
		}
		return cands[pick(len(cands))]
	}
	const ops = 1000
	counts := map[string]int{}
	for step := 1; step <= ops; step++ {
		u := users[pick(len(users))]
		var mine []*modelChan
		for _, c := range m.chans {
			if slices.Contains(c.members, u) {
				mine = append(mine, c)
			}
		}
		c := mine[pick(len(mine))]
		d := devs[u][pick(devices)]
		rpc := pick(2) == 0
		ctx := e.ctx(u, d.device)
		switch r := pick(100); {
		case r < 40: // send
			ack := d.ackOf(d.sendIn(c.id, next(), fmt.Sprint("text ", step)))
			c.msgs = append(c.msgs, &modelMsg{id: ack.GetMessageId(), sender: u, hiddenFor: map[string]bool{}})
			c.lastRow = ack.GetMessageId()
			counts["send"]++
		case r < 62: // read up to the newest row, or a random message
			var to uint64
			if len(c.msgs) > 0 && pick(3) > 0 {
				to = c.msgs[pick(len(c.msgs))].id
			}
			var ev *chatv1.UnreadEvent
			if rpc {
				resp, err := e.client.MarkRead(ctx, &chatv1.MarkReadRequest{ChannelId: c.id, MessageId: to})
				if err != nil {
					t.Fatalf("step %d: MarkRead: %v", step, err)
				}
				ev = resp.GetUnread()
			} else {
				ev = d.unreadOf(d.markRead(c.id, to))
			}
			if to == 0 {
				to = c.lastRow
			}
			m.read[u][c.id] = max(m.read[u][c.id], to)
			if ev.GetReadUpTo() != m.read[u][c.id] || ev.GetUnreadCount() != uint32(m.unread(u, c)) {
				t.Fatalf("step %d: %s MarkRead(%s, %d): %v, model read %d unread %d", step, u, c.id, to, ev, m.read[u][c.id], m.unread(u, c))
			}
			counts["read"]++
		case r < 75: // edit one of u's messages
			x := pickMsg(c, func(x *modelMsg) bool {
				return x.sender == u && !x.deletedAll && !x.hiddenFor[u] && x.edits < MaxEditsPerMessage
			})
			if x == nil {
				continue
			}
			id := next()
			var ack *chatv1.SendAck
			if rpc {
				resp, err := e.client.EditMessage(ctx, &chatv1.EditMessageRequest{ChannelId: c.id, MessageId: x.id, ClientMessageId: id, Text: "edited"})
				if err != nil {
					t.Fatalf("step %d: EditMessage: %v", step, err)
				}
				ack = resp.GetAck()
			} else {
				ack = d.ackOf(d.edit(c.id, x.id, id, "edited"))
			}
			x.edits++
			c.lastRow = ack.GetMessageId()
			counts["edit"]++
		case r < 87: // delete for everyone (author, or a group admin)
			x := pickMsg(c, func(x *modelMsg) bool { return !x.deletedAll && (x.sender == u || c.admins[u]) })
			if x == nil {
				continue
			}
			id := next()
			var ack *chatv1.SendAck
			if rpc {
				resp, err := e.client.DeleteMessage(ctx, &chatv1.DeleteMessageRequest{ChannelId: c.id, MessageId: x.id, ClientMessageId: id})
				if err != nil {
					t.Fatalf("step %d: DeleteMessage: %v", step, err)
				}
				ack = resp.GetAck()
			} else {
				ack = d.ackOf(d.del(c.id, x.id, id, false))
			}
			x.deletedAll = true
			c.lastRow = ack.GetMessageId()
			counts["delete"]++
		case r < 97: // delete for me
			x := pickMsg(c, func(x *modelMsg) bool { return !x.deletedAll && !x.hiddenFor[u] })
			if x == nil {
				continue
			}
			ack := d.ackOf(d.del(c.id, x.id, next(), true))
			x.hiddenFor[u] = true
			c.lastRow = ack.GetMessageId() // also a row of the channel
			counts["delete_for_me"]++
		case r < 99: // ack the inbox head (moves delivery markers)
			h, err := e.seq.Head(ctx, u)
			if err != nil {
				t.Fatal(err)
			}
			if f := d.reply(d.ack(h)); f.GetAckResult() == nil {
				t.Fatalf("step %d: ack: %v", step, f)
			}
			counts["ack"]++
		default: // an invalid edit (someone else's message) changes nothing
			for _, x := range c.msgs {
				if x.sender != u {
					d.errOf(d.edit(c.id, x.id, next(), "not mine"), codes.PermissionDenied)
					break
				}
			}
			counts["refused"]++
		}
		if step%25 == 0 {
			check(step)
		}
	}
	check(ops)
	t.Logf("operations: %v", counts)
}
