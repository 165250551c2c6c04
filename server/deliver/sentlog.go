package deliver

import (
	"sync"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// SentEntry is an inbox entry a Stream sent: enough of it to move the
// delivery markers when the device acks it (see SentLog.Acked).
type SentEntry struct {
	Seq       uint64
	ChannelID string
	MessageID uint64
	SenderID  string
}

// MaxSentLog bounds the entries a SentLog holds (the oldest go first): a
// device acks about once a second, so this is more than a second of
// deliveries to one device at any rate a person reads.
const MaxSentLog = 256

// SentLog remembers the inbox entries a Stream sent, in seq order, until
// the device acks them, so that the ack's delivery markers need no inbox
// read. The Stream's writer goroutine records (Config.Log); the reader of
// the device's acks calls Acked. It is safe for concurrent use; the zero
// value is an empty log.
//
// It keeps: every inbox entry with seq in (base, top] is in ents (seqs in
// that range not in ents are holes or were never written). Entries the
// Stream sends outside its in-order path (sync pages) are not recorded:
// the log restarts above them.
type SentLog struct {
	mu        sync.Mutex
	base, top uint64
	ents      []SentEntry
}

// Acked returns, when the log covers (after, upTo] (every entry in it
// was sent on this stream and is remembered), the entries in that range
// in seq order and true; otherwise nil and false, and the caller reads
// the inbox. Either way the entries up to upTo are forgotten: the device
// has them. The returned slice is the caller's.
func (l *SentLog) Acked(after, upTo uint64) ([]SentEntry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ok := after >= l.base && upTo <= l.top
	var out []SentEntry
	n := 0
	for n < len(l.ents) && l.ents[n].Seq <= upTo {
		n++
	}
	if ok {
		for _, e := range l.ents[:n] {
			if e.Seq > after {
				out = append(out, e)
			}
		}
	}
	clear(l.ents[:n])
	l.ents = l.ents[n:]
	if len(l.ents) == 0 {
		l.ents = nil // an idle stream keeps no buffer
	}
	if upTo > l.base {
		l.base = min(upTo, l.top)
	}
	return out, ok
}

// add records the live Delivery frame f (inbox seq q) as sent: every
// entry between the last one recorded and q was a hole.
func (l *SentLog) add(q uint64, f *chatv1.ServerFrame) {
	if l == nil {
		return
	}
	m := f.GetDelivery().GetMessage()
	l.mu.Lock()
	defer l.mu.Unlock()
	if q <= l.top {
		return
	}
	if len(l.ents) == MaxSentLog {
		l.base = l.ents[0].Seq
		clear(l.ents[:1])
		l.ents = l.ents[1:]
	}
	if l.ents == nil {
		l.ents = make([]SentEntry, 0, 8)
	}
	l.ents = append(l.ents, SentEntry{Seq: q, ChannelID: m.GetChannelId(), MessageID: m.GetMessageId(), SenderID: m.GetSenderId()})
	l.top = q
}

// skip records that every seq up to q is sent or a hole.
func (l *SentLog) skip(q uint64) {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.top = max(l.top, q)
	l.mu.Unlock()
}

// restart forgets everything: entries up to q were sent in a way the log
// did not see (a sync page), or before the stream began.
func (l *SentLog) restart(q uint64) {
	if l == nil {
		return
	}
	l.mu.Lock()
	clear(l.ents)
	l.ents = nil
	l.top = max(l.top, q)
	l.base = l.top
	l.mu.Unlock()
}
