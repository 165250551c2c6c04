package pebble

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// PIDFile is the file, next to Pebble's LOCK, that holds the process id of
// the process that has the store open. It is written once the lock is
// held and removed by Close, so at Open it tells two things: whose lock a
// second process ran into (ErrLocked), and that the previous process
// ended without closing the store (killed or crashed: its WAL is then
// replayed, and Open logs the recovery).
const PIDFile = "chatd.pid"

// ErrLocked is returned (wrapped, with the directory and the holder's pid
// when known) by Open when another process has the store open.
var ErrLocked = errors.New("pebble store: data directory is locked by another process")

// lockedError explains a failed lock of dir.
func lockedError(dir string, cause error) error {
	pid, ok := readPID(dir)
	who := "another chatd (pid unknown)"
	if ok {
		who = fmt.Sprintf("another chatd (pid %d)", pid)
	}
	return fmt.Errorf("%w: %s is in use by %s; stop it, or give this one another --data-dir (%v)", ErrLocked, dir, who, cause)
}

// isLockBusy reports whether err is Pebble's failure to take the
// directory lock because another process holds it (flock: EWOULDBLOCK).
func isLockBusy(err error) bool {
	return errors.Is(err, syscall.EWOULDBLOCK) || errors.Is(err, syscall.EAGAIN) ||
		strings.Contains(err.Error(), syscall.EWOULDBLOCK.Error())
}

func readPID(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, PIDFile))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, err == nil && pid > 0
}

// walFiles counts the WAL files in dir and their bytes: what Open replays
// (an upper bound: a recycled log may hold stale bytes at its end).
func walFiles(dir string) (n int, bytes int64) {
	es, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0
	}
	for _, e := range es {
		if !strings.HasSuffix(e.Name(), ".log") {
			continue
		}
		if fi, err := e.Info(); err == nil && fi.Size() > 0 {
			n++
			bytes += fi.Size()
		}
	}
	return n, bytes
}

// flushes records Pebble's completed flushes (an EventListener), so that
// Open and Close can say what they flushed.
type flushes struct {
	mu    sync.Mutex
	n     int
	bytes uint64
}

func (f *flushes) listener() *pebble.EventListener {
	return &pebble.EventListener{FlushEnd: func(i pebble.FlushInfo) {
		if i.Err != nil {
			return
		}
		f.mu.Lock()
		f.n++
		f.bytes += i.InputBytes
		f.mu.Unlock()
	}}
}

func (f *flushes) snapshot() (int, uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n, f.bytes
}

// opened writes the pid file and logs how the store was opened: a
// recovery (the pid file of a previous process was there: it did not
// close the store) with what was replayed, or a clean start.
func (s *Store) opened(walN int, walBytes int64, took time.Duration) {
	prev, unclean := readPID(s.dir)
	if err := os.WriteFile(filepath.Join(s.dir, PIDFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		s.log.Warn("pebble store: cannot write the pid file", "dir", s.dir, "err", err)
	}
	flushes, flushed := s.flushed.snapshot()
	attrs := []any{"dir", s.dir, "wal_files", walN, "wal_bytes", walBytes, "flushes", flushes, "flushed_bytes", flushed,
		"sstables", s.db.Metrics().Total().TablesCount, "took", took.Round(time.Microsecond).String()}
	if unclean {
		s.log.Warn("pebble store: recovered after an unclean shutdown (the previous process did not close the store: killed or crashed); its write-ahead log was replayed",
			append([]any{"previous_pid", prev}, attrs...)...)
		return
	}
	s.log.Info("pebble store: opened", attrs...)
}

// closeDB flushes the memtables (so the next Open has no log to replay),
// closes the database, removes the pid file and logs what was flushed.
func (s *Store) closeDB() error {
	t0 := time.Now()
	n0, b0 := s.flushed.snapshot()
	ferr := s.db.Flush()
	n1, b1 := s.flushed.snapshot()
	err := errors.Join(ferr, s.db.Close())
	if err != nil {
		s.log.Error("pebble store: close failed; the next start replays the write-ahead log", "dir", s.dir, "err", err)
		return err
	}
	_ = os.Remove(filepath.Join(s.dir, PIDFile))
	s.log.Info("pebble store: closed cleanly", "dir", s.dir, "flushes", n1-n0, "flushed_bytes", b1-b0, "took", time.Since(t0).Round(time.Microsecond).String())
	return nil
}
