package deliver

import (
	"cmp"
	"context"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// Config configures a Stream.
type Config struct {
	// UserID is the device's user: whose inbox is read. Required.
	UserID string
	// Send writes a frame on the stream. Required.
	Send SendFunc
	// Inbox reads the user's inbox. Required.
	Inbox InboxReader
	// Heads reads the user's horizon. Required.
	Heads HeadReader
	// Done, if not nil, is closed when the stream ends: a gap fill stops
	// between inbox pages with ErrClosed.
	Done <-chan struct{}
	// RecheckInterval is how often a stream waiting for a pending seq
	// reads the horizon again; default DefaultRecheckInterval.
	RecheckInterval time.Duration
	// Log, if not nil, records the entries sent in order (see SentLog).
	Log *SentLog
}

// Stream is the delivery state of one device stream: which inbox entries
// it has sent, and the live deliveries it holds back. It is not safe for
// concurrent use: one goroutine (the stream's writer) calls all its
// methods, and Send is called only from within them.
//
// The rules it keeps:
//
//   - Nothing live before catching up: a device whose cursor is behind the
//     head when the stream opens gets no live delivery until a sync page
//     says more == false; it then has every entry up to the horizon.
//   - In order, once: a live delivery with inbox seq q goes out only when
//     every entry below q has been sent (or is a hole); one at or below the
//     highest seq sent is dropped.
//   - Gaps are filled: before a delivery further ahead, the entries in
//     between are read from the inbox up to the horizon (a lost routed
//     event), holes skipped. A delivery whose predecessor is above the
//     horizon (pending on another server) is parked, at most MaxParked of
//     them, and the horizon read again every RecheckInterval until it
//     passes; parked deliveries beyond the bound are read from the inbox
//     then.
type Stream struct {
	user     string
	send     SendFunc
	inbox    InboxReader
	heads    HeadReader
	done     <-chan struct{}
	interval time.Duration
	log      *SentLog

	live bool
	// sentUpTo: every inbox entry <= sentUpTo has been sent (or does not
	// exist: a hole below the horizon).
	sentUpTo uint64
	// liveFrom is sentUpTo when the stream went live: every entry in
	// (liveFrom, sentUpTo] has been sent since, and a sync page does not
	// carry it again.
	liveFrom uint64
	// Cluster mode: inbox seqs above the horizon may commit out of order.
	// parked holds live deliveries (ascending seq) that cannot be sent yet
	// because an earlier seq is still pending; want is the highest seq
	// known to be written and not yet sent. While want > sentUpTo the
	// stream asks for the horizon again every interval (recheckC is then
	// armed).
	parked   []parkedDelivery
	want     uint64
	recheck  *time.Timer
	recheckC <-chan time.Time
}

// parkedDelivery is a live Delivery frame waiting for the horizon.
type parkedDelivery struct {
	seq   uint64
	frame *chatv1.ServerFrame
}

// NewStream returns the delivery state of a stream that has sent nothing.
// It panics if Send, Inbox or Heads is nil (a wiring bug).
func NewStream(cfg Config) *Stream {
	if cfg.Send == nil || cfg.Inbox == nil || cfg.Heads == nil {
		panic("deliver: Config.Send, Inbox and Heads are required")
	}
	s := &Stream{user: cfg.UserID, send: cfg.Send, inbox: cfg.Inbox, heads: cfg.Heads, done: cfg.Done, interval: cfg.RecheckInterval, log: cfg.Log}
	if s.interval <= 0 {
		s.interval = DefaultRecheckInterval
	}
	return s
}

// Live reports whether the stream sends live deliveries (it caught up).
func (s *Stream) Live() bool { return s.live }

// SentUpTo returns the highest inbox seq up to which every entry has been
// sent on the stream (or is a hole).
func (s *Stream) SentUpTo() uint64 { return s.sentUpTo }

// Recheck is armed (not nil) while the stream waits for the horizon to
// pass a pending seq; when it fires, call Advance.
func (s *Stream) Recheck() <-chan time.Time { return s.recheckC }

// Stop releases the recheck timer. Call it when the stream ends.
func (s *Stream) Stop() {
	if s.recheck != nil {
		s.recheck.Stop()
	}
	s.recheckC = nil
}

// Start begins delivery on a stream whose Welcome said cursor and head
// (head read before the stream could receive routed events). A device
// that is up to date (cursor >= head) is live from the head at once: the
// horizon is read again and what was committed in between is sent from
// the inbox (it was published before the stream could receive it), and
// the inbox is probed once for entries written above the horizon. A
// device behind the head must sync first.
//
// Errors: ErrHorizon, ErrInbox, ErrClosed (as *Error where a reader
// failed), or Send's error.
func (s *Stream) Start(ctx context.Context, cursor, head uint64) error {
	if cursor < head {
		return nil
	}
	s.live, s.sentUpTo, s.liveFrom = true, head, head
	s.log.restart(head)
	h, err := s.heads.Head(ctx, s.user)
	if err != nil {
		return &Error{ErrHorizon, err}
	}
	if err := s.fillThrough(ctx, h, true); err != nil {
		return err
	}
	s.settle()
	return nil
}

// Deliver sends a live Delivery frame (f must carry a Delivery) exactly
// once and in order. A delivery right after the last one sent goes out at
// once. Before one further ahead, everything up to its seq-1 must be final
// (at most the horizon): the missing entries (a lost routed event) are
// then read from the inbox and holes skipped. Otherwise an earlier seq is
// still pending (another server has not committed it yet) and the
// delivery is parked until the horizon passes it. A delivery already sent,
// or one that arrives before the stream is live, is dropped.
//
// Errors: ErrHorizon, ErrInbox, ErrClosed (as *Error where a reader
// failed), or Send's error.
func (s *Stream) Deliver(ctx context.Context, f *chatv1.ServerFrame) error {
	q := f.GetDelivery().GetInboxSeq()
	if !s.live || q <= s.sentUpTo {
		return nil // behind (the device syncs) or already sent
	}
	if q == s.sentUpTo+1 {
		if err := s.send(f); err != nil {
			return err
		}
		s.sentUpTo = q
		s.log.add(q, f)
		return s.drainParked()
	}
	s.park(f, q)
	if s.recheckC != nil {
		return nil // already waiting for the horizon: the timer rechecks
	}
	return s.Advance(ctx)
}

// park remembers a live delivery that cannot be sent yet.
func (s *Stream) park(f *chatv1.ServerFrame, q uint64) {
	s.want = max(s.want, q)
	i, found := slices.BinarySearchFunc(s.parked, q, func(p parkedDelivery, q uint64) int { return cmp.Compare(p.seq, q) })
	if found || i >= MaxParked {
		return // a duplicate, or beyond the buffer: read from the inbox later
	}
	if len(s.parked) == MaxParked {
		s.parked = s.parked[:MaxParked-1] // drop the highest: the inbox has it
	}
	s.parked = slices.Insert(s.parked, i, parkedDelivery{q, f})
}

// drainParked sends the parked deliveries that follow sentUpTo without a
// gap and drops those already sent; then waits for the rest.
func (s *Stream) drainParked() error {
	for len(s.parked) > 0 && s.parked[0].seq <= s.sentUpTo+1 {
		p := s.parked[0]
		s.parked[0] = parkedDelivery{}
		s.parked = s.parked[1:]
		if p.seq <= s.sentUpTo {
			continue
		}
		if err := s.send(p.frame); err != nil {
			return err
		}
		s.sentUpTo = p.seq
		s.log.add(p.seq, p.frame)
	}
	s.settle()
	return nil
}

// Advance reads the horizon and sends, in order, everything up to it
// (parked deliveries, and the inbox's entries in between) and the parked
// delivery right after it. Call it when Recheck fires.
//
// Errors: ErrHorizon, ErrInbox, ErrClosed (as *Error where a reader
// failed), or Send's error.
func (s *Stream) Advance(ctx context.Context) error {
	s.recheckC = nil
	if !s.live || s.want <= s.sentUpTo {
		s.settle()
		return nil
	}
	h, err := s.heads.Head(ctx, s.user)
	if err != nil {
		return &Error{ErrHorizon, err}
	}
	for len(s.parked) > 0 {
		p := s.parked[0]
		if p.seq <= s.sentUpTo {
			s.parked = s.parked[1:]
			continue
		}
		if p.seq-1 > h {
			break
		}
		if err := s.fillThrough(ctx, p.seq-1, false); err != nil {
			return err
		}
		if err := s.send(p.frame); err != nil {
			return err
		}
		s.sentUpTo = p.seq
		s.log.add(p.seq, p.frame)
		s.parked[0] = parkedDelivery{}
		s.parked = s.parked[1:]
	}
	if err := s.fillThrough(ctx, h, false); err != nil {
		return err
	}
	s.settle()
	return nil
}

// settle drops parked deliveries already sent, and arms or stops the
// recheck timer: armed while something written is not sent yet.
func (s *Stream) settle() {
	for len(s.parked) > 0 && s.parked[0].seq <= s.sentUpTo {
		s.parked[0] = parkedDelivery{}
		s.parked = s.parked[1:]
	}
	if len(s.parked) == 0 {
		s.parked = nil
	}
	if !s.live || s.want <= s.sentUpTo {
		s.want = 0
		if s.recheckC != nil {
			s.recheck.Stop()
			s.recheckC = nil
		}
		return
	}
	if s.recheckC == nil {
		if s.recheck == nil {
			s.recheck = time.NewTimer(s.interval)
		} else {
			s.recheck.Reset(s.interval)
		}
		s.recheckC = s.recheck.C
	}
}

// fillThrough sends, from the inbox and in order, the deliveries after
// sentUpTo up to target, which must be at most the horizon: every seq up
// to it is written or a hole, so afterwards sentUpTo = target. Entries
// found above target (written, maybe not final yet) raise want. With
// probe it reads the inbox once even when nothing is missing below
// target, to find such entries.
func (s *Stream) fillThrough(ctx context.Context, target uint64, probe bool) error {
	for s.sentUpTo < target || probe {
		probe = false
		select {
		case <-s.done:
			return ErrClosed
		default:
		}
		ds, more, err := s.inbox.Inbox(ctx, s.user, s.sentUpTo, GapPage)
		if err != nil {
			return &Error{ErrInbox, err}
		}
		for _, d := range ds {
			if d.Seq <= s.sentUpTo {
				continue
			}
			if d.Seq > target {
				s.want = max(s.want, d.Seq)
				more = false
				break
			}
			f := DeliveryFrame(d)
			if err := s.send(f); err != nil {
				return err
			}
			s.sentUpTo = d.Seq
			s.log.add(d.Seq, f)
		}
		if !more || len(ds) == 0 {
			break
		}
	}
	s.sentUpTo = max(s.sentUpTo, target)
	s.log.skip(s.sentUpTo)
	return nil
}

// Sync answers a SyncRequest (frame frameID) with one SyncPage of the
// inbox after after, at most limit entries (the caller checks the limit),
// and returns how many deliveries the page carried. The device has (by its
// own claim) everything up to after, and now everything up to the page's
// next_after_seq; a last page (more == false) makes the stream live.
//
// The page never goes past the horizon H (read before the inbox): entries
// above it may still be joined by earlier, pending seqs (cluster mode).
// more == true: the page was cut (limit or MaxSyncPageBytes) and the inbox
// may hold further entries up to H; ask again from next_after_seq.
// more == false: the device now has every entry up to H (next_after_seq
// is H when after < H, so trailing holes are skipped); later entries come
// live on this stream.
//
// Each inbox entry once per stream: once the stream is live, a page does
// not carry an entry the stream has sent since it went live (live, from a
// gap fill, or in an earlier page), whatever after is; next_after_seq
// moves past such entries. Before it is live, a sync is a read the device
// asks for, and the same range asked again is answered again (the device
// has not been sent anything unasked yet).
//
// Errors: ErrHorizon or ErrInbox (as *Error; nothing was sent: the edge
// answers the request with an error and the stream goes on), or Send's
// error.
func (s *Stream) Sync(ctx context.Context, frameID, after uint64, limit int) (int, error) {
	h, err := s.heads.Head(ctx, s.user)
	if err != nil {
		return 0, &Error{ErrHorizon, err}
	}
	// Entries in (skipLo, skipHi] were sent since the stream went live.
	var skipLo, skipHi uint64
	if s.live {
		skipLo, skipHi = s.liveFrom, s.sentUpTo
	}
	from := after
	if from >= skipLo && from < skipHi {
		from = skipHi
	}
	ds, more, err := s.inbox.Inbox(ctx, s.user, from, limit)
	if err != nil {
		return 0, &Error{ErrInbox, err}
	}
	for i, d := range ds {
		if d.Seq > h {
			// Written but not final yet: it comes live (want makes the
			// stream wait for the horizon to pass it).
			s.want = max(s.want, d.Seq)
			ds, more = ds[:i], false
			break
		}
	}
	page := &chatv1.SyncPage{Deliveries: make([]*chatv1.Delivery, 0, len(ds)), More: more}
	size := 0
	// last: the device has every entry up to it once the page is sent.
	last := from
	for _, d := range ds {
		if d.Seq > skipLo && d.Seq <= skipHi {
			last = d.Seq // sent already
			continue
		}
		pd := &chatv1.Delivery{InboxSeq: d.Seq, Message: MessageProto(d.Message)}
		size += proto.Size(pd) + 8
		if len(page.Deliveries) > 0 && size > MaxSyncPageBytes {
			page.More = true // the rest comes with the next page
			break
		}
		page.Deliveries = append(page.Deliveries, pd)
		last = d.Seq
	}
	more = page.More
	if more && last > skipLo && last < skipHi {
		last = skipHi // the rest of the range was sent already
	}
	page.NextAfterSeq = last
	if !more {
		// The device has everything up to the horizon: the entries are in
		// this page or holes. (A cursor beyond the head is clamped so that
		// future seqs are not taken as already sent.)
		last = h
		if after < h {
			page.NextAfterSeq = h
		}
	}
	if err := s.send(&chatv1.ServerFrame{FrameId: frameID, Payload: &chatv1.ServerFrame_SyncPage{SyncPage: page}}); err != nil {
		return 0, err
	}
	if last > s.sentUpTo {
		s.sentUpTo = last
		s.log.restart(last) // the page's entries are not in the log
	}
	if !more && !s.live {
		s.live, s.liveFrom = true, s.sentUpTo
	}
	s.settle()
	return len(page.Deliveries), nil
}
