package deliver_test

import (
	"slices"
	"testing"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/deliver"
)

// logRig is a rig whose Stream records into a SentLog.
func logRig(t *testing.T, horizon uint64, written ...uint64) (*rig, *deliver.SentLog) {
	r := newRig(t, horizon, written...)
	l := &deliver.SentLog{}
	r.s = deliver.NewStream(deliver.Config{UserID: user, Send: r.w.send, Inbox: r.in, Heads: r.h, Done: r.done, Log: l})
	t.Cleanup(r.s.Stop)
	return r, l
}

func ackedSeqs(t *testing.T, l *deliver.SentLog, after, upTo uint64, wantOK bool, want ...uint64) {
	t.Helper()
	es, ok := l.Acked(after, upTo)
	if ok != wantOK {
		t.Fatalf("Acked(%d, %d): ok %v, want %v", after, upTo, ok, wantOK)
	}
	var got []uint64
	for _, e := range es {
		got = append(got, e.Seq)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Acked(%d, %d) = %v, want %v", after, upTo, got, want)
	}
}

// TestSentLogLive: live deliveries and gap fills (holes skipped) are
// remembered with their message until acked, each once.
func TestSentLogLive(t *testing.T) {
	r, l := logRig(t, 0)
	r.start(0, 0)
	r.in.write(1, 2, 4) // 3 is a hole
	r.h.set(4)
	r.deliver(live(5))
	r.got(1, 2, 4, 5)
	es, ok := l.Acked(0, 4)
	if !ok || len(es) != 3 || es[0].ChannelID != "dm:alice:bob" || es[0].SenderID != "alice" || es[0].MessageID != 1<<16 {
		t.Fatalf("Acked(0, 4) = %+v, %v", es, ok)
	}
	ackedSeqs(t, l, 4, 5, true, 5)
	ackedSeqs(t, l, 5, 5, true) // nothing new
	r.deliver(live(6), live(7))
	ackedSeqs(t, l, 5, 7, true, 6, 7)
}

// TestSentLogNotCovered: an ack reaching below what the stream sent (the
// device's cursor was behind when it opened), beyond it, or over a sync
// page's entries is not answered from the log.
func TestSentLogNotCovered(t *testing.T) {
	r, l := logRig(t, 3, 1, 2, 3)
	r.start(3, 3)
	r.deliver(live(4))
	ackedSeqs(t, l, 2, 4, false) // 3 was sent before this stream
	r.deliver(live(5))
	ackedSeqs(t, l, 4, 6, false) // 6 was never sent
	ackedSeqs(t, l, 5, 5, true)  // nothing left
	r.in.write(6, 7, 8)
	r.h.set(8)
	r.sync(5, 10) // 6..8 in a page
	ackedSeqs(t, l, 6, 8, false)
	r.deliver(live(9))
	ackedSeqs(t, l, 8, 9, true, 9)
}

// TestSentLogBounded: the log keeps the newest MaxSentLog entries.
func TestSentLogBounded(t *testing.T) {
	r, l := logRig(t, 0)
	r.start(0, 0)
	n := uint64(deliver.MaxSentLog + 10)
	for q := uint64(1); q <= n; q++ {
		r.deliver(live(q))
	}
	ackedSeqs(t, l, 5, 20, false)
	ackedSeqs(t, l, 20, 22, true, 21, 22)
}

// BenchmarkSentLog is the ack path's marker lookup: a second of
// deliveries recorded by the writer, then acked.
func BenchmarkSentLog(b *testing.B) {
	var l deliver.SentLog
	in, h := newInbox(), &heads{}
	s := deliver.NewStream(deliver.Config{UserID: user, Inbox: in, Heads: h, Log: &l,
		Send: func(*chatv1.ServerFrame) error { return nil }})
	defer s.Stop()
	if err := s.Start(b.Context(), 0, 0); err != nil {
		b.Fatal(err)
	}
	f := live(0)
	f.GetDelivery().Message.ChannelId, f.GetDelivery().Message.SenderId = "dm:alice:bob", "alice"
	q := uint64(0)
	b.ReportAllocs()
	for b.Loop() {
		prev := q
		for range 2 {
			q++
			f.GetDelivery().InboxSeq = q
			if err := s.Deliver(b.Context(), f); err != nil {
				b.Fatal(err)
			}
		}
		if es, ok := l.Acked(prev, q); !ok || len(es) != 2 {
			b.Fatalf("Acked(%d, %d) = %d entries, %v", prev, q, len(es), ok)
		}
	}
}
