package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"time"
)

// Commit log defaults of --mode relay with --fsync-file.
const (
	// commitQueueSize bounds the sends waiting for a commit; a reader
	// whose send finds it full waits (backpressure), as chatd's sequencer
	// queue does.
	commitQueueSize = 4096
	// commitMaxBatch is the most sends one commit writes (chatd's
	// sequence.DefaultMaxBatch).
	commitMaxBatch = 512
	// defaultCommitLinger is chatd's sequence.DefaultCommitLinger.
	defaultCommitLinger = time.Millisecond
	// defaultLogSize is the commit log's size in bytes: the file is
	// written with zeros once at start and then used as a ring, so that a
	// commit's fdatasync flushes data blocks only, never the file's size
	// or extents (as a write-ahead log on recycled files does).
	defaultLogSize = 64 << 20
)

// commitLog makes sends durable in group commits on one goroutine: each
// commit numbers the sends queued (message_id, inbox seqs), appends them
// to the file in one write, fdatasyncs it, and only then routes their
// deliveries and SendAcks. Under load from several senders a commit
// lingers for more sends exactly as chatd's sequencer does (see
// sequence.Options.CommitLinger): only when the previous commit held more
// than one send or more were queued by its end, and it finished less than
// the linger ago.
type commitLog struct {
	f      *os.File
	size   int64
	off    int64
	linger time.Duration
	queue  chan *send
	buf    []byte
	m      *relayMetrics
}

// openCommitLog creates (or truncates) the file at path, fills it with
// size bytes of zeros, syncs it, and starts the committing goroutine.
// linger ≤ 0: no linger.
func openCommitLog(path string, size int64, linger time.Duration, m *relayMetrics) (*commitLog, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	zero := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(zero)) {
		if _, err := f.WriteAt(zero[:min(int64(len(zero)), size-off)], off); err != nil {
			f.Close()
			return nil, fmt.Errorf("commit log %s: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("commit log %s: %w", path, err)
	}
	l := &commitLog{f: f, size: size, linger: linger, queue: make(chan *send, commitQueueSize), m: m}
	go l.run()
	return l, nil
}

// submit queues s for the next commit, waiting while the queue is full.
func (l *commitLog) submit(s *send) { l.queue <- s }

func (l *commitLog) run() {
	batch := make([]*send, 0, commitMaxBatch)
	var timer *time.Timer
	if l.linger > 0 {
		timer = time.NewTimer(l.linger)
		timer.Stop()
	}
	var finished time.Time
	loaded := false
	for s := range l.queue {
		batch = append(batch[:0], s)
	drain:
		for len(batch) < commitMaxBatch {
			select {
			case s := <-l.queue:
				batch = append(batch, s)
			default:
				break drain
			}
		}
		if l.linger > 0 && loaded && len(batch) < commitMaxBatch && time.Since(finished) < l.linger {
			timer.Reset(l.linger)
		linger:
			for len(batch) < commitMaxBatch {
				select {
				case s := <-l.queue:
					batch = append(batch, s)
				case <-timer.C:
					break linger
				}
			}
			timer.Stop()
		}
		l.commit(batch)
		if l.linger > 0 {
			finished = time.Now()
			loaded = len(batch) > 1 || len(l.queue) > 0
		}
		clear(batch)
	}
}

// commit numbers, writes and fdatasyncs batch, then routes it. A failed
// write or sync answers the batch's sends with a FrameError Unavailable
// and delivers nothing.
func (l *commitLog) commit(batch []*send) {
	now := time.Now()
	b := l.buf[:0]
	for _, s := range batch {
		s.at = now
		s.number()
		b = s.appendRecord(b)
	}
	l.buf = b
	if l.off+int64(len(b)) > l.size {
		l.off = 0
	}
	_, err := l.f.WriteAt(b, l.off)
	if err == nil {
		err = fdatasync(l.f)
	}
	l.off += int64(len(b))
	if err != nil {
		for _, s := range batch {
			s.from.enqueue(frameError(s.frameID, errCommit))
		}
		return
	}
	l.m.batches.Inc()
	l.m.messages.Add(float64(len(batch)))
	for _, s := range batch {
		s.route(false)
	}
}

// appendRecord appends s as one log record: its length, the ids, the
// time, and the strings, each length-prefixed.
func (s *send) appendRecord(b []byte) []byte {
	start := len(b)
	b = append(b, 0, 0, 0, 0)
	b = binary.LittleEndian.AppendUint64(b, s.msgID)
	b = binary.LittleEndian.AppendUint64(b, s.seqs[0])
	b = binary.LittleEndian.AppendUint64(b, s.seqs[1])
	b = binary.LittleEndian.AppendUint64(b, uint64(s.at.UnixNano()))
	for _, v := range [...]string{s.ch.id, s.from.u.id, s.from.device, s.cmid, s.text} {
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	binary.LittleEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b
}
