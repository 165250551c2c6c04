package deliver_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/deliver"
	"github.com/chatd/chatd/server/store"
)

// These tests drive a deliver.Stream with an in-memory inbox, a settable
// horizon and a frame recorder: no gRPC, no network, no store.

const user = "bob"

// inbox is an in-memory InboxReader: the written entries of one user.
type inbox struct {
	mu    sync.Mutex
	ents  map[uint64]*store.Message
	reads int
	err   error
}

func newInbox(seqs ...uint64) *inbox {
	in := &inbox{ents: map[uint64]*store.Message{}}
	in.write(seqs...)
	return in
}

// write stores entries (a commit).
func (in *inbox) write(seqs ...uint64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, q := range seqs {
		in.ents[q] = &store.Message{ChannelID: "dm:alice:bob", MessageID: q << 16, SenderID: "alice", Text: fmt.Sprint("m", q), Kind: store.KindText}
	}
}

func (in *inbox) Inbox(_ context.Context, userID string, after uint64, limit int) ([]store.Delivery, bool, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.reads++
	if in.err != nil {
		return nil, false, in.err
	}
	if userID != user {
		return nil, false, fmt.Errorf("inbox of %q read", userID)
	}
	var seqs []uint64
	for q := range in.ents {
		if q > after {
			seqs = append(seqs, q)
		}
	}
	slices.Sort(seqs)
	more := len(seqs) > limit
	if more {
		seqs = seqs[:limit]
	}
	ds := make([]store.Delivery, len(seqs))
	for i, q := range seqs {
		ds[i] = store.Delivery{Seq: q, Message: in.ents[q]}
	}
	return ds, more, nil
}

// heads is a settable HeadReader.
type heads struct {
	mu  sync.Mutex
	h   uint64
	err error
}

func (h *heads) set(v uint64) { h.mu.Lock(); h.h = v; h.mu.Unlock() }

func (h *heads) Head(context.Context, string) (uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.h, h.err
}

// wire records the frames a Stream sends.
type wire struct {
	frames []*chatv1.ServerFrame
	err    error // returned by the next send, once
}

func (w *wire) send(f *chatv1.ServerFrame) error {
	if err := w.err; err != nil {
		w.err = nil
		return err
	}
	w.frames = append(w.frames, f)
	return nil
}

// seqs flattens what the device received, in order: live deliveries and
// the entries of sync pages.
func (w *wire) seqs() []uint64 {
	var out []uint64
	for _, f := range w.frames {
		if d := f.GetDelivery(); d != nil {
			out = append(out, d.GetInboxSeq())
		}
		for _, d := range f.GetSyncPage().GetDeliveries() {
			out = append(out, d.GetInboxSeq())
		}
	}
	return out
}

// take returns the frames sent since the last take.
func (w *wire) take() []*chatv1.ServerFrame {
	fs := w.frames
	w.frames = nil
	return fs
}

type rig struct {
	t     *testing.T
	in    *inbox
	h     *heads
	w     *wire
	s     *deliver.Stream
	done  chan struct{}
	ctx   context.Context
	all   []uint64 // every seq the device received, across takes
	pages []*chatv1.SyncPage
}

// newRig returns a stream of user over an inbox holding written, with the
// horizon at horizon.
func newRig(t *testing.T, horizon uint64, written ...uint64) *rig {
	r := &rig{t: t, in: newInbox(written...), h: &heads{h: horizon}, w: &wire{}, done: make(chan struct{}), ctx: context.Background()}
	r.s = deliver.NewStream(deliver.Config{UserID: user, Send: r.w.send, Inbox: r.in, Heads: r.h, Done: r.done, RecheckInterval: time.Millisecond})
	t.Cleanup(r.s.Stop)
	return r
}

func live(q uint64) *chatv1.ServerFrame {
	return &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Delivery{Delivery: &chatv1.Delivery{
		InboxSeq: q, Message: &chatv1.Message{Text: fmt.Sprint("live ", q)},
	}}}
}

func (r *rig) start(cursor, head uint64) {
	r.t.Helper()
	if err := r.s.Start(r.ctx, cursor, head); err != nil {
		r.t.Fatalf("Start(%d, %d): %v", cursor, head, err)
	}
}

func (r *rig) deliver(fs ...*chatv1.ServerFrame) {
	r.t.Helper()
	for _, f := range fs {
		if err := r.s.Deliver(r.ctx, f); err != nil {
			r.t.Fatalf("Deliver(%d): %v", f.GetDelivery().GetInboxSeq(), err)
		}
	}
}

// sync sends a SyncRequest and returns its page.
func (r *rig) sync(after uint64, limit int) *chatv1.SyncPage {
	r.t.Helper()
	n, err := r.s.Sync(r.ctx, 7, after, limit)
	if err != nil {
		r.t.Fatalf("Sync(%d, %d): %v", after, limit, err)
	}
	fs := r.w.frames
	if len(fs) == 0 || fs[len(fs)-1].GetSyncPage() == nil || fs[len(fs)-1].GetFrameId() != 7 {
		r.t.Fatalf("Sync(%d, %d) sent %v, want a SyncPage with frame_id 7 last", after, limit, fs)
	}
	p := fs[len(fs)-1].GetSyncPage()
	if n != len(p.GetDeliveries()) {
		r.t.Fatalf("Sync returned %d, the page holds %d", n, len(p.GetDeliveries()))
	}
	r.pages = append(r.pages, p)
	return p
}

// got checks the seqs received since the last check.
func (r *rig) got(want ...uint64) {
	r.t.Helper()
	fs := r.w.take()
	w := &wire{frames: fs}
	seqs := w.seqs()
	r.all = append(r.all, seqs...)
	if !slices.Equal(seqs, want) {
		r.t.Fatalf("received seqs %v, want %v", seqs, want)
	}
}

// once checks that, over the whole test, the device received exactly the
// seqs of want, in that order (each once).
func (r *rig) once(want ...uint64) {
	r.t.Helper()
	r.got()
	if !slices.Equal(r.all, want) {
		r.t.Fatalf("over the stream the device received %v, want each of %v once, in order", r.all, want)
	}
}

// waitRecheck waits for the armed recheck timer and advances.
func (r *rig) waitRecheck() {
	r.t.Helper()
	c := r.s.Recheck()
	if c == nil {
		r.t.Fatal("the stream is not waiting for the horizon")
	}
	select {
	case <-c:
	case <-time.After(5 * time.Second):
		r.t.Fatal("recheck timer never fired")
	}
	if err := r.s.Advance(r.ctx); err != nil {
		r.t.Fatalf("Advance: %v", err)
	}
}

func seqRange(lo, hi uint64) []uint64 {
	var out []uint64
	for q := lo; q <= hi; q++ {
		out = append(out, q)
	}
	return out
}

// Duplicate: a seq already sent is not sent again, whether it comes live
// twice or was sent from the inbox first.
func TestDuplicateNotSentAgain(t *testing.T) {
	// Seq 3 committed between the head read (2) and the registration:
	// Start sends it from the inbox, and its routed event is then dropped.
	r := newRig(t, 3, 1, 2, 3)
	r.start(2, 2)
	if !r.s.Live() || r.s.SentUpTo() != 3 {
		t.Fatalf("after Start: live %v, sent up to %d; want live, 3", r.s.Live(), r.s.SentUpTo())
	}
	r.got(3)
	r.deliver(live(3), live(2), live(1))
	r.got()
	r.in.write(4)
	r.h.set(4)
	r.deliver(live(4), live(4), live(3))
	r.got(4)
	r.once(3, 4)
	if r.s.Recheck() != nil {
		t.Fatal("waiting for the horizon with nothing pending")
	}
}

// Start probes the inbox above the horizon: an entry written there
// (committed while an earlier seq was pending, and routed before the
// stream existed) is waited for and sent once the horizon passes, with no
// further routed event.
func TestStartFindsEntriesAboveHorizon(t *testing.T) {
	r := newRig(t, 1, 1, 3) // 2 pending
	r.start(1, 1)
	r.got()
	if r.s.Recheck() == nil {
		t.Fatal("Start did not notice seq 3 written above the horizon")
	}
	r.in.write(2)
	r.h.set(3)
	r.waitRecheck()
	r.got(2, 3)
	r.once(2, 3)
}

// The in-order live path sends the routed frame itself, reading nothing.
func TestInOrderReadsNothing(t *testing.T) {
	r := newRig(t, 5, 1, 2, 3, 4, 5)
	r.start(5, 5)
	reads := r.in.reads // Start probes the inbox once
	f6, f7 := live(6), live(7)
	r.deliver(f6, f7)
	if fs := r.w.take(); len(fs) != 2 || fs[0] != f6 || fs[1] != f7 {
		t.Fatalf("sent %v, want the routed frames 6 and 7 as they are", fs)
	}
	if r.in.reads != reads {
		t.Fatalf("in-order delivery read the inbox %d times", r.in.reads-reads)
	}
}

// Gap: a seq ahead of the next one, with everything before it final, makes
// the stream send the missing entries from the inbox first (a lost routed
// event), skipping holes; then the routed frame itself.
func TestGapFilledFromInbox(t *testing.T) {
	r := newRig(t, 1, 1)
	r.start(1, 1)
	r.in.write(2, 3, 5, 6) // 4 is a hole: abandoned for good
	r.h.set(6)
	f6 := live(6)
	r.deliver(f6)
	fs := r.w.frames
	r.got(2, 3, 5, 6)
	if fs[3] != f6 {
		t.Fatal("seq 6 was not sent as the routed frame")
	}
	if fs[0].GetDelivery().GetMessage().GetText() != "m2" {
		t.Fatalf("seq 2 came as %v, want the inbox's message", fs[0])
	}
	r.deliver(live(5), live(7))
	r.got(7)
	r.once(2, 3, 5, 6, 7)
}

// Park: a seq whose predecessor is above the horizon (pending on another
// server) waits; the stream reads the horizon again until it passes, then
// sends the pending entry from the inbox and the parked frames, in order.
func TestParkedUntilHorizonPasses(t *testing.T) {
	r := newRig(t, 1, 1)
	r.start(1, 1)
	r.in.write(3, 4) // 2 is pending: the horizon stays at 1
	f3, f4 := live(3), live(4)
	r.deliver(f3)
	r.got()
	if r.s.Recheck() == nil {
		t.Fatal("parked without waiting for the horizon")
	}
	r.deliver(f4, live(3)) // another, and a duplicate of a parked one
	r.got()
	r.waitRecheck() // still pending: nothing moves
	r.got()

	r.in.write(2) // the other server commits 2 (its routed event is lost)
	r.h.set(4)
	r.waitRecheck()
	fs := r.w.frames
	r.got(2, 3, 4)
	if fs[1] != f3 || fs[2] != f4 {
		t.Fatal("the parked frames were not the ones sent")
	}
	if r.s.Recheck() != nil {
		t.Fatal("still waiting after the horizon passed")
	}
	r.once(2, 3, 4)
}

// A pending seq that is abandoned (its server died) becomes a hole once
// the horizon passes it: the parked delivery goes out.
func TestParkedPendingAbandoned(t *testing.T) {
	r := newRig(t, 1, 1)
	r.start(1, 1)
	r.in.write(3)
	r.deliver(live(3))
	r.got()
	r.h.set(3) // 2 abandoned
	r.waitRecheck()
	r.got(3)
	r.deliver(live(4))
	r.got(4)
	r.once(3, 4)
}

// The routed event of the pending seq arriving while others are parked
// sends them all at once, without waiting for the timer.
func TestParkedDrainedByPredecessor(t *testing.T) {
	r := newRig(t, 1, 1)
	r.start(1, 1)
	r.in.write(2, 3, 4)
	r.deliver(live(4), live(3))
	r.got()
	r.deliver(live(2))
	r.got(2, 3, 4)
	if r.s.Recheck() != nil {
		t.Fatal("still waiting with nothing parked")
	}
	r.once(2, 3, 4)
}

// Park overflow: at most MaxParked deliveries are held (the lowest seqs);
// the others are dropped and read from the inbox once the horizon passes:
// still every seq once, in order.
func TestParkOverflow(t *testing.T) {
	const extra = 10
	hi := uint64(2 + deliver.MaxParked + extra)
	r := newRig(t, 1, 1)
	r.start(1, 1)
	r.in.write(seqRange(3, hi)...) // 2 pending
	routed := map[uint64]*chatv1.ServerFrame{}
	for q := hi; q >= 3; q-- { // highest first: the buffer fills, then drops its highest
		routed[q] = live(q)
		r.deliver(routed[q])
	}
	for q := uint64(3); q <= hi; q += 7 {
		r.deliver(live(q)) // duplicates of parked and of dropped ones
	}
	r.got()
	r.in.write(2)
	r.h.set(hi)
	r.waitRecheck()
	fs := r.w.frames
	r.got(seqRange(2, hi)...)
	parked := 0
	for _, f := range fs {
		q := f.GetDelivery().GetInboxSeq()
		if f == routed[q] {
			parked++
			if q >= 3+deliver.MaxParked {
				t.Errorf("seq %d was held although %d lower ones were parked", q, deliver.MaxParked)
			}
		}
	}
	if parked != deliver.MaxParked {
		t.Fatalf("%d routed frames were held and sent, want MaxParked = %d (the rest from the inbox)", parked, deliver.MaxParked)
	}
	r.once(seqRange(2, hi)...)
}

// Sync then live: a device behind the head gets nothing live until its
// last sync page; pages and live deliveries together carry every seq once,
// in order, whatever raced with the sync.
func TestSyncThenLive(t *testing.T) {
	r := newRig(t, 3, 1, 2, 3)
	r.start(0, 3)
	if r.s.Live() {
		t.Fatal("live before syncing")
	}
	r.in.write(4)
	r.h.set(4)
	r.deliver(live(4)) // before the sync is done: dropped, the sync carries it
	r.got()

	p := r.sync(0, 2)
	if !p.GetMore() || p.GetNextAfterSeq() != 2 {
		t.Fatalf("first page: more %v, next %d; want true, 2", p.GetMore(), p.GetNextAfterSeq())
	}
	r.got(1, 2)
	r.in.write(5) // committed while syncing: its routed event is queued
	r.h.set(5)
	p = r.sync(2, 2)
	if !p.GetMore() || p.GetNextAfterSeq() != 4 {
		t.Fatalf("second page: more %v, next %d; want true, 4", p.GetMore(), p.GetNextAfterSeq())
	}
	r.got(3, 4)
	if r.s.Live() {
		t.Fatal("live before the last page")
	}
	p = r.sync(4, 2)
	if p.GetMore() || p.GetNextAfterSeq() != 5 {
		t.Fatalf("last page: more %v, next %d; want false, 5", p.GetMore(), p.GetNextAfterSeq())
	}
	r.got(5)
	if !r.s.Live() {
		t.Fatal("not live after the last page")
	}
	r.deliver(live(5)) // the queued routed event of 5: already in the page
	r.got()
	r.in.write(6, 7)
	r.h.set(7)
	r.deliver(live(7)) // 6's routed event was lost: filled from the inbox
	r.got(6, 7)
	r.once(1, 2, 3, 4, 5, 6, 7)
}

// A sync while live that finds an entry whose routed event is still queued
// carries it; the routed event is then dropped.
func TestSyncWhileLiveRace(t *testing.T) {
	r := newRig(t, 2, 1, 2)
	r.start(2, 2)
	r.in.write(3)
	r.h.set(3)
	p := r.sync(2, 10)
	if p.GetMore() || p.GetNextAfterSeq() != 3 {
		t.Fatalf("page: more %v, next %d; want false, 3", p.GetMore(), p.GetNextAfterSeq())
	}
	r.got(3)
	r.deliver(live(3), live(4))
	r.got(4)
	r.once(3, 4)
}

// A sync page stops at the horizon: an entry written above a pending seq
// is not in it, and comes live, after the pending one, once the horizon
// passes.
func TestSyncStopsAtHorizon(t *testing.T) {
	r := newRig(t, 1, 1, 3) // 2 pending, 3 written (its event was routed before the stream existed)
	r.start(0, 1)
	p := r.sync(0, 10)
	if p.GetMore() || p.GetNextAfterSeq() != 1 {
		t.Fatalf("page: more %v, next %d; want false, 1", p.GetMore(), p.GetNextAfterSeq())
	}
	r.got(1)
	if r.s.Recheck() == nil {
		t.Fatal("not waiting for the horizon to pass the written seq 3")
	}
	r.in.write(2)
	r.h.set(3)
	r.waitRecheck()
	r.got(2, 3)
	r.once(1, 2, 3)
}

// Before the stream is live a sync is a read the device asks for: asking
// again for the same range gets the same page (the Go SDK's SyncAll
// re-offers an entry its callback refused this way).
func TestSyncBeforeLiveCanBeRepeated(t *testing.T) {
	r := newRig(t, 4, 1, 2, 3, 4)
	r.start(0, 4)
	r.sync(0, 2)
	r.got(1, 2)
	r.sync(0, 2)
	r.got(1, 2)
	r.sync(2, 2)
	r.got(3, 4)
}

// Reader failures are errors of their kind, sent nothing, and change
// nothing: the edge answers and the stream can go on.
func TestErrors(t *testing.T) {
	boom := errors.New("boom")

	r := newRig(t, 2, 1, 2)
	r.start(0, 2)
	r.h.err = boom
	_, err := r.s.Sync(r.ctx, 1, 0, 10)
	var de *deliver.Error
	if !errors.Is(err, deliver.ErrHorizon) || !errors.Is(err, boom) || !errors.As(err, &de) || de.Err != boom {
		t.Fatalf("Sync with the horizon failing: %v", err)
	}
	r.h.err = nil
	r.in.err = boom
	if _, err := r.s.Sync(r.ctx, 1, 0, 10); !errors.Is(err, deliver.ErrInbox) || !errors.Is(err, boom) {
		t.Fatalf("Sync with the inbox failing: %v", err)
	}
	r.got()
	if r.s.Live() || r.s.SentUpTo() != 0 {
		t.Fatal("a failed sync changed the state")
	}

	// A gap fill with the inbox failing.
	r = newRig(t, 1, 1)
	r.start(1, 1)
	r.in.write(2, 3)
	r.h.set(3)
	r.in.err = boom
	if err := r.s.Deliver(r.ctx, live(3)); !errors.Is(err, deliver.ErrInbox) {
		t.Fatalf("gap fill with the inbox failing: %v", err)
	}
	// And with the stream closed.
	r.in.err = nil
	close(r.done)
	if err := r.s.Advance(r.ctx); !errors.Is(err, deliver.ErrClosed) {
		t.Fatalf("gap fill on a closed stream: %v", err)
	}
	r.got()

	// A failed send is not counted as sent.
	r = newRig(t, 1, 1)
	r.start(1, 1)
	r.w.err = boom
	if err := r.s.Deliver(r.ctx, live(2)); err != boom {
		t.Fatalf("Deliver with the send failing: %v, want the send's error as is", err)
	}
	if r.s.SentUpTo() != 1 {
		t.Fatalf("sent up to %d after a failed send", r.s.SentUpTo())
	}
}

// Sync after live (issue 11 item 1): once the stream is live, a sync page
// never carries an entry the stream has already sent, whatever after_seq
// the device asks from; entries it has not sent (below where live began,
// or not yet routed) still come, and next_after_seq moves past the rest.
func TestSyncAfterLiveRepeatsNothing(t *testing.T) {
	r := newRig(t, 3, 1, 2, 3)
	r.start(3, 3) // up to date: live from 3
	r.in.write(4, 5)
	r.h.set(5)
	r.deliver(live(4), live(5))
	r.got(4, 5)

	// Live 4 and 5, then a sync from 4: 5 is not sent again.
	p := r.sync(4, 10)
	if len(p.GetDeliveries()) != 0 || p.GetMore() || p.GetNextAfterSeq() != 5 {
		t.Fatalf("sync after 4: %v more %v next %d; want no entry, more false, next 5", p.GetDeliveries(), p.GetMore(), p.GetNextAfterSeq())
	}
	r.got()

	// From before where live began: what was never sent on this stream
	// comes, what was sent live does not, and next_after_seq skips it.
	p = r.sync(0, 2)
	if !p.GetMore() || p.GetNextAfterSeq() != 2 {
		t.Fatalf("sync after 0: more %v next %d; want true, 2", p.GetMore(), p.GetNextAfterSeq())
	}
	r.got(1, 2)
	p = r.sync(2, 2)
	if p.GetNextAfterSeq() != 5 {
		t.Fatalf("sync after 2: %v next %d; want next 5", p.GetDeliveries(), p.GetNextAfterSeq())
	}
	r.got(3)
	for p.GetMore() {
		p = r.sync(p.GetNextAfterSeq(), 2)
	}
	r.got()

	// Two overlapping syncs while an entry's routed event is queued: the
	// entry comes once, in the first page; the routed event is dropped.
	r.in.write(6)
	r.h.set(6)
	r.sync(4, 10)
	r.got(6)
	r.sync(4, 10)
	r.got()
	r.deliver(live(6))
	r.got()
	r.in.write(7)
	r.h.set(7)
	r.deliver(live(7))
	r.got(7)
	r.once(4, 5, 1, 2, 3, 6, 7)
}
