package chat

import (
	"context"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/deliver"
	"github.com/chatd/chatd/server/store"
)

// Limits of the conversation state (receipts, unread counts, edits and
// deletes). See docs/conversation.md.
const (
	// DefaultEditWindow is how long after sending a message its author may
	// edit it (Config.EditWindow).
	DefaultEditWindow = 48 * time.Hour
	// MaxEditsPerMessage bounds the EDIT rows of one message; a further
	// edit fails with FailedPrecondition. It bounds the rows a history
	// page folds.
	MaxEditsPerMessage = 20
	// MaxUnreadScan is the most rows read after a read marker to count a
	// channel's unread messages; beyond it the count is reported capped
	// (UnreadEvent.unread_capped).
	MaxUnreadScan = 1000
	// MaxUnreadChannels is the most channels (most recently active first)
	// summed into total_unread; beyond it total_capped is set.
	MaxUnreadChannels = 1000
	// MaxDeliveredScan is the most inbox entries read on one Ack to move
	// delivery markers: an Ack that jumps further moves them from its
	// newest MaxDeliveredScan entries.
	MaxDeliveredScan = 1000
	// lastMessageScan bounds the rows read backward to find the newest
	// message a viewer can see (Channel.last_message).
	lastMessageScan = 200
	// conversationWorkers bounds the store reads one call runs at once
	// when it computes the state of many channels.
	conversationWorkers = 8
)

// unread is a channel's unread count for one user.
type unread struct {
	n      int
	capped bool
}

// channelUnread counts the messages of channelID after readUpTo that are
// unread for user: text messages by other users that are not deleted for
// everyone nor for user. EDIT, DELETE and SYSTEM rows do not count. It
// reads the rows after the marker (at most MaxUnreadScan; beyond that the
// count covers those rows and capped is set). lastID, if not 0, is the
// channel's newest message_id: a marker at or above it means nothing to
// read. The count is computed from the immutable rows every time, so it
// cannot drift from them. Message_id 1 is never assigned (ids are at least
// unix_ms << 16), so a marker of 0 reads forward from 1.
func (s *Service) channelUnread(ctx context.Context, channelID, user string, readUpTo, lastID uint64) (unread, error) {
	if lastID != 0 && readUpTo >= lastID {
		return unread{}, nil
	}
	rows, more, err := s.st.History(ctx, channelID, 0, max(readUpTo, 1), MaxUnreadScan)
	if err != nil || len(rows) == 0 {
		return unread{}, err
	}
	// Rows come in message_id order and a DELETE row always follows the
	// message it deletes (it is sequenced after that message was stored).
	counted := make(map[uint64]struct{})
	for _, m := range rows {
		switch m.Kind {
		case store.KindText:
			if m.SenderID != user && m.ForUser == "" {
				counted[m.MessageID] = struct{}{}
			}
		case store.KindDelete:
			if m.ForUser == "" || m.ForUser == user {
				delete(counted, m.RefMessageID)
			}
		}
	}
	if more && len(counted) > 0 {
		// Deletes beyond the scanned rows of messages within them.
		revs, err := s.st.Revisions(ctx, channelID, rows[0].MessageID, rows[len(rows)-1].MessageID)
		if err != nil {
			return unread{}, err
		}
		for _, r := range revs {
			if r.Kind == store.KindDelete && (r.ForUser == "" || r.ForUser == user) {
				delete(counted, r.RefMessageID)
			}
		}
	}
	return unread{n: len(counted), capped: more}, nil
}

// totalUnread sums the user's unread counts over their channels (the
// MaxUnreadChannels most recently active ones). Channels whose read marker
// is at or above their newest message cost one marker read; the others
// also a scan after the marker.
func (s *Service) totalUnread(ctx context.Context, user string) (unread, error) {
	acts, err := s.st.ListUserChannels(ctx, user, 0, MaxUnreadChannels+1)
	if err != nil {
		return unread{}, err
	}
	total := unread{capped: len(acts) > MaxUnreadChannels}
	if total.capped {
		acts = acts[:MaxUnreadChannels]
	}
	var n atomic.Int64
	var capped atomic.Bool
	err = forEach(ctx, len(acts), func(ctx context.Context, i int) error {
		rc, err := s.st.GetReceipt(ctx, acts[i].ChannelID, user)
		if err != nil {
			return err
		}
		u, err := s.channelUnread(ctx, acts[i].ChannelID, user, rc.ReadUpTo, acts[i].LastMessageID)
		if err != nil {
			return err
		}
		n.Add(int64(u.n))
		if u.capped {
			capped.Store(true)
		}
		return nil
	})
	if err != nil {
		return unread{}, err
	}
	total.n = int(n.Load())
	total.capped = total.capped || capped.Load()
	return total, nil
}

// unreadEvent builds the UnreadEvent of one channel for user, reading the
// user's current marker (which may be above the one just written by this
// call) and computing the counts.
func (s *Service) unreadEvent(ctx context.Context, channelID, user string) (*chatv1.UnreadEvent, store.Receipt, error) {
	rc, err := s.st.GetReceipt(ctx, channelID, user)
	if err != nil {
		return nil, rc, err
	}
	last, err := s.st.LastMessageID(ctx, channelID)
	if err != nil {
		return nil, rc, err
	}
	u, err := s.channelUnread(ctx, channelID, user, rc.ReadUpTo, last)
	if err != nil {
		return nil, rc, err
	}
	t, err := s.totalUnread(ctx, user)
	if err != nil {
		return nil, rc, err
	}
	return &chatv1.UnreadEvent{
		ChannelId:    channelID,
		UnreadCount:  clampU32(u.n),
		ReadUpTo:     rc.ReadUpTo,
		TotalUnread:  clampU32(t.n),
		UnreadCapped: u.capped,
		TotalCapped:  t.capped,
	}, rc, nil
}

func clampU32(n int) uint32 {
	if n < 0 {
		return 0
	}
	if uint64(n) > 1<<32-1 {
		return 1<<32 - 1
	}
	return uint32(n)
}

// ------------------------------------------------------------------ folding

// msgState is what the revisions of one message say about it, for one
// viewer.
type msgState struct {
	deleted bool // for everyone
	hidden  bool // deleted by the viewer for themselves
	edit    *store.Revision
}

// fold turns stored rows (ascending message_id) into what viewer sees:
// EDIT and DELETE rows are applied to the messages they refer to (read
// from the revision index, so a revision outside the page counts too) and
// dropped; a message deleted for everyone becomes a tombstone (deleted,
// no text); a message the viewer deleted for themselves is left out;
// other users' "for me" rows never show. Edits by anyone but the
// message's author are ignored.
func (s *Service) fold(ctx context.Context, channelID, viewer string, rows []*store.Message) ([]*chatv1.Message, error) {
	var lo, hi uint64
	for _, m := range rows {
		if m.Kind == store.KindText {
			if lo == 0 {
				lo = m.MessageID
			}
			hi = m.MessageID
		}
	}
	var states map[uint64]*msgState
	if lo != 0 {
		revs, err := s.st.Revisions(ctx, channelID, lo, hi)
		if err != nil {
			return nil, err
		}
		states = make(map[uint64]*msgState, len(revs))
		for i := range revs {
			r := &revs[i]
			st := states[r.RefMessageID]
			if st == nil {
				st = &msgState{}
				states[r.RefMessageID] = st
			}
			switch r.Kind {
			case store.KindDelete:
				if r.ForUser == "" {
					st.deleted = true
				} else if r.ForUser == viewer {
					st.hidden = true
				}
			case store.KindEdit:
				if st.edit == nil || r.MessageID > st.edit.MessageID {
					st.edit = r
				}
			}
		}
	}
	out := make([]*chatv1.Message, 0, len(rows))
	for _, m := range rows {
		if m.ForUser != "" || m.Kind == store.KindEdit || m.Kind == store.KindDelete {
			continue
		}
		pm := deliver.MessageProto(m)
		if st := states[m.MessageID]; st != nil && m.Kind == store.KindText {
			switch {
			case st.hidden:
				continue
			case st.deleted:
				pm.Text, pm.Deleted = "", true
			case st.edit != nil && st.edit.SenderID == m.SenderID:
				pm.Text, pm.Edited, pm.EditedAt = st.edit.Text, true, timestamppb.New(st.edit.CreatedAt)
			}
		}
		out = append(out, pm)
	}
	return out, nil
}

// visibleRaw drops other users' "for me" rows from a raw page.
func visibleRaw(rows []*store.Message, viewer string) []*chatv1.Message {
	out := make([]*chatv1.Message, 0, len(rows))
	for _, m := range rows {
		if m.ForUser != "" && m.ForUser != viewer {
			continue
		}
		out = append(out, deliver.MessageProto(m))
	}
	return out
}

// lastVisible returns the newest message of the channel as viewer sees it
// (folded), nil if none within the newest lastMessageScan rows.
func (s *Service) lastVisible(ctx context.Context, channelID, viewer string) (*chatv1.Message, error) {
	before := uint64(0)
	for read := 0; read < lastMessageScan; {
		rows, more, err := s.st.History(ctx, channelID, before, 0, 50)
		if err != nil || len(rows) == 0 {
			return nil, err
		}
		read += len(rows)
		ms, err := s.fold(ctx, channelID, viewer, rows)
		if err != nil {
			return nil, err
		}
		if len(ms) > 0 {
			return ms[len(ms)-1], nil
		}
		if !more {
			return nil, nil
		}
		before = rows[0].MessageID
	}
	return nil, nil
}

// forEach runs fn(ctx, i) for i in [0, n) on at most conversationWorkers
// goroutines and returns the first error (the other calls then see a
// canceled ctx and no new ones start).
func forEach(ctx context.Context, n int, fn func(ctx context.Context, i int) error) error {
	if n == 1 {
		return fn(ctx, 0)
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(conversationWorkers)
	for i := range n {
		if ctx.Err() != nil {
			break // an earlier call failed: start no more
		}
		g.Go(func() error { return fn(ctx, i) })
	}
	return g.Wait()
}

// maxFoldRounds bounds the store reads of one folded history page.
const maxFoldRounds = 4

// historyPage reads one page of the channel for viewer: backward from
// before (exclusive; 0 = newest) or forward from after (exclusive, when
// set), at most size messages in ascending message_id order. Raw pages
// are the stored rows minus other users' "for me" rows. Folded pages
// (fold) hide the EDIT and DELETE rows, so the store is read again (up to
// maxFoldRounds reads) until the page is full or the channel ends; a page
// may still come back short, even empty, with more set: next_message_id
// says where to continue.
func (s *Service) historyPage(ctx context.Context, channelID, viewer string, before, after uint64, size int, raw bool) (*chatv1.GetHistoryResponse, error) {
	forward := after > 0
	resp := &chatv1.GetHistoryResponse{}
	for round := 0; round < maxFoldRounds; round++ {
		rows, more, err := s.st.History(ctx, channelID, before, after, size-len(resp.Messages))
		if err != nil {
			return nil, err
		}
		var ms []*chatv1.Message
		if raw {
			ms = visibleRaw(rows, viewer)
		} else if ms, err = s.fold(ctx, channelID, viewer, rows); err != nil {
			return nil, err
		}
		if forward {
			resp.Messages = append(resp.Messages, ms...)
		} else {
			resp.Messages = append(ms, resp.Messages...)
		}
		resp.More = more
		if len(rows) > 0 {
			if forward {
				after = rows[len(rows)-1].MessageID
			} else {
				before = rows[0].MessageID
			}
		}
		if !more || len(rows) == 0 || len(resp.Messages) >= size {
			break
		}
	}
	if resp.More {
		resp.NextMessageId = before
		if forward {
			resp.NextMessageId = after
		}
	}
	capHistoryBytes(resp, forward)
	if resp.Messages == nil {
		resp.Messages = []*chatv1.Message{}
	}
	return resp, nil
}

// MaxHistoryPageBytes bounds the encoded messages of one GetHistory page,
// as MaxSyncPageBytes bounds a sync page: 100 texts of 64 KiB (5.25 MB)
// would exceed the 4 MiB a gRPC client receives by default.
const MaxHistoryPageBytes = MaxSyncPageBytes

// capHistoryBytes cuts a page whose messages encode to more than
// MaxHistoryPageBytes, keeping at least one: a backward page keeps its
// newest messages, a forward page its oldest, and the page then has more,
// continuing after (before) the last message kept.
func capHistoryBytes(resp *chatv1.GetHistoryResponse, forward bool) {
	ms := resp.Messages
	total := 0
	for i := range ms {
		// Walk from the end the reader came from.
		j := len(ms) - 1 - i
		if forward {
			j = i
		}
		total += proto.Size(ms[j]) + 4 // + tag and length of the field
		if total <= MaxHistoryPageBytes || i == 0 {
			continue
		}
		if forward {
			resp.Messages = ms[:j]
			resp.NextMessageId = ms[j-1].GetMessageId()
		} else {
			resp.Messages = ms[j+1:]
			resp.NextMessageId = ms[j+1].GetMessageId()
		}
		resp.More = true
		return
	}
}

// addState fills in the viewer's conversation state of every channel of
// a ListChannels page (concurrently, conversationWorkers at a time):
// last_message (folded), the viewer's read_up_to and unread count, the
// other members' receipts; and the response's total_unread. Cost per
// channel: one receipts read, one scan after the viewer's read marker
// (none when it is at the newest message), one or more backward reads for
// the last message; plus totalUnread.
func (s *Service) addState(ctx context.Context, viewer string, resp *chatv1.ListChannelsResponse) error {
	err := forEach(ctx, len(resp.Channels), func(ctx context.Context, i int) error {
		c := resp.Channels[i]
		rs, err := s.st.ListReceipts(ctx, c.GetChannelId())
		if err != nil {
			return err
		}
		for _, r := range rs {
			if r.UserID == viewer {
				c.ReadUpTo = r.ReadUpTo
				continue
			}
			c.Receipts = append(c.Receipts, &chatv1.ReceiptEvent{
				ChannelId: c.GetChannelId(), UserId: r.UserID, DeliveredUpTo: r.DeliveredUpTo, ReadUpTo: r.ReadShownUpTo,
			})
		}
		u, err := s.channelUnread(ctx, c.GetChannelId(), viewer, c.ReadUpTo, c.GetLastMessageId())
		if err != nil {
			return err
		}
		c.UnreadCount, c.UnreadCapped = clampU32(u.n), u.capped
		if c.GetLastMessageId() > 0 {
			if c.LastMessage, err = s.lastVisible(ctx, c.GetChannelId(), viewer); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	t, err := s.totalUnread(ctx, viewer)
	if err != nil {
		return err
	}
	resp.TotalUnread, resp.TotalCapped = clampU32(t.n), t.capped
	return nil
}
