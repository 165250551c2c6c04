package scylla

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gocql/gocql"

	"github.com/chatd/chatd/server/internal/parallel"
)

// BenchmarkCQLFloor measures what the CQL server itself costs for the rows
// one 1:1 message of the pairs shape writes (docs/performance.md, "Cost per
// message", the floor): the statements AppendBatch, LookupDedup and the
// coalesced ack writes send, with the same request structure and the same
// gocql session settings, but no chatd around them — so the CQL server's
// CPU per message here is the least the cluster's writes can cost on it.
//
// One iteration is one message. Messages go in group commits of
// CQL_FLOOR_BATCH (default 20, the pairs shape's group commit at 500 msg/s),
// paced to CQL_FLOOR_RATE messages a second (default 500); run with
// -benchtime=10000x for 20 s. With CQL_SERVER_PID set (the Cassandra JVM's
// or Scylla's pid) it reports the server's CPU per message ("srv-ms/msg",
// from /proc/<pid>/stat utime+stime), and always this process's
// ("client-ms/msg": gocql's encoding and I/O, the chatd-side floor).
//
// Variants, per message:
//   - chatd: the dedup point read, the three write steps (dedup; message,
//     activity insert and trim; two inbox rows) as multi-partition unlogged
//     batches, and the ack writes (cursor update per ack, a receipt insert
//     and trim every second ack) coalesced two acks per request.
//   - writes: chatd without the dedup read.
//   - chatd-in: chatd with the batch's dedup reads as one request (`IN` of
//     the batch's keys on a table keyed by one column, created here: what a
//     dedup table keyed for one read per group commit would cost).
//   - reads: the dedup point read only.
//   - one-row: one messages row per message (one partition mutation), in
//     one batch per group commit.
//   - one-row-req: the same rows, each in a request of its own (the cost of
//     a request against the cost of a partition mutation).
//   - idle: nothing (the server's background CPU, to subtract).
func BenchmarkCQLFloor(b *testing.B) {
	for _, v := range []string{"idle", "one-row", "one-row-req", "reads", "writes", "chatd", "chatd-in"} {
		b.Run(v, func(b *testing.B) { benchFloor(b, v) })
	}
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// procCPU returns the CPU time (user+system) of process pid from
// /proc/<pid>/stat (fields 14 and 15, in clock ticks of 10 ms: USER_HZ is
// 100 on Linux).
func procCPU(pid string) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // field 3 onwards
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parsing /proc/%s/stat", pid)
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchFloor(b *testing.B, variant string) {
	ctx := context.Background()
	s, err := Open(ctx, testConfig(b, keyspace(b)))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	time.Sleep(2 * time.Second) // let the JVM settle after the keyspace's creation
	rate := envInt("CQL_FLOOR_RATE", 500)
	batch := envInt("CQL_FLOOR_BATCH", 20)
	pid := os.Getenv("CQL_SERVER_PID")
	const users = 500 // 250 pairs, as chatbench pairs --pairs 250
	sess := s.sess.Session
	text := strings.Repeat("x", 100)
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	var requests, statements int
	var mu sync.Mutex
	count := func(req, st int) { mu.Lock(); requests += req; statements += st; mu.Unlock() }
	exec := func(entries []gocql.BatchEntry) error {
		count(1, len(entries))
		if len(entries) == 1 {
			return s.exec(ctx, entries[0].Stmt, entries[0].Args...)
		}
		bt := s.batch(ctx)
		bt.Entries = entries
		return sess.ExecuteBatch(bt)
	}
	// chunked sends entries in batches of at most maxBatchStmts, concurrently,
	// as writeAll does.
	chunked := func(entries []gocql.BatchEntry) error {
		n := (len(entries) + maxBatchStmts - 1) / maxBatchStmts
		return parallel.Do(ctx, n, n, func(ctx context.Context, i int) error {
			return exec(entries[i*maxBatchStmts : min((i+1)*maxBatchStmts, len(entries))])
		})
	}
	seqs := make([]int64, users)
	if variant == "chatd-in" {
		if err := s.exec(ctx, `CREATE TABLE IF NOT EXISTS floor_dedup (k text PRIMARY KEY, channel_id text, message_id bigint, created_at timestamp, inbox_users frozen<list<text>>, inbox_seqs frozen<list<bigint>>, fingerprint bigint)`); err != nil {
			b.Fatal(err)
		}
	}
	interval := time.Duration(batch) * time.Second / time.Duration(rate)

	var srv0 time.Duration
	if pid != "" {
		var err error
		if srv0, err = procCPU(pid); err != nil {
			b.Fatal(err)
		}
	}
	cli0 := selfCPU()
	b.ResetTimer()
	next := time.Now()
	for done := 0; done < b.N; done += batch {
		n := min(batch, b.N-done)
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		next = next.Add(interval)
		switch variant {
		case "idle":
		case "one-row", "one-row-req":
			var e []gocql.BatchEntry
			for i := range n {
				m := done + i
				e = append(e, gocql.BatchEntry{Stmt: stmtInsertMessage, Args: []any{
					fmt.Sprintf("dm-%s-%d", run, m%(users/2)), int64(0), int64(m), "u", "d", "", text, time.Now(), int8(0), int64(0), ""}})
			}
			if variant == "one-row" {
				err = chunked(e)
				break
			}
			err = parallel.Do(ctx, n, n, func(ctx context.Context, i int) error { return exec(e[i : i+1]) })
		case "reads", "writes", "chatd", "chatd-in":
			if variant == "chatd-in" {
				keys := make([]string, n)
				for i := range keys {
					keys[i] = fmt.Sprintf("u-%d/%s-%d", (done+i)%users, run, done+i)
				}
				count(1, 1)
				iter := s.q(ctx, `SELECT channel_id, message_id, created_at, inbox_users, inbox_seqs, fingerprint FROM floor_dedup WHERE k IN ?`, keys).Iter()
				for iter.Scan(new(string), new(int64), new(time.Time), new([]string), new([]int64), new(*int64)) {
				}
				err = iter.Close()
			} else if variant != "writes" {
				err = parallel.Do(ctx, n, n, func(ctx context.Context, i int) error {
					count(1, 1)
					var ch string
					var id int64
					var created time.Time
					var us []string
					var sq []int64
					var fp *int64
					_, err := s.scan1(ctx, stmtGetDedup, []any{fmt.Sprintf("u-%d", (done+i)%users), fmt.Sprintf("%s-%d", run, done+i)},
						&ch, &id, &created, &us, &sq, &fp)
					return err
				})
			}
			if err != nil || variant == "reads" {
				break
			}
			var dd, msgs, inbox, acks []gocql.BatchEntry
			now := time.Now()
			for i := range n {
				m := done + i
				sender, recv := m%users, (m+users/2)%users
				ch := fmt.Sprintf("dm-%s-%d", run, m%(users/2))
				id := now.UnixMilli()<<16 | int64(i)
				seqs[sender]++
				seqs[recv]++
				dd = append(dd, gocql.BatchEntry{Stmt: stmtInsertDedup, Args: []any{fmt.Sprintf("u-%d", sender), fmt.Sprintf("%s-%d", run, m),
					ch, id, now, []string{fmt.Sprintf("u-%d", sender), fmt.Sprintf("u-%d", recv)}, []int64{seqs[sender], seqs[recv]}, int64(m), 604800}})
				msgs = append(msgs,
					gocql.BatchEntry{Stmt: stmtInsertMessage, Args: []any{ch, int64(0), id, fmt.Sprintf("u-%d", sender), "d", fmt.Sprintf("%s-%d", run, m), text, now, int8(0), int64(0), ""}},
					gocql.BatchEntry{Stmt: stmtInsertAct, Args: []any{ch, id, now}},
					gocql.BatchEntry{Stmt: stmtTrimAct, Args: []any{ch, id}})
				inbox = append(inbox,
					gocql.BatchEntry{Stmt: stmtInsertInbox, Args: []any{fmt.Sprintf("u-%d", sender), int64(0), seqs[sender], ch, id}},
					gocql.BatchEntry{Stmt: stmtInsertInbox, Args: []any{fmt.Sprintf("u-%d", recv), int64(0), seqs[recv], ch, id}})
				// The receiver acks: the cursor; every second ack also moves
				// the delivery-receipt marker (a row and the trim below it).
				acks = append(acks, gocql.BatchEntry{Stmt: stmtSetCursor, Args: []any{now.UnixMicro(), seqs[recv], fmt.Sprintf("u-%d", recv), "d"}})
				if m%2 == 1 {
					acks = append(acks,
						gocql.BatchEntry{Stmt: stmtInsertMarker, Args: []any{ch, fmt.Sprintf("u-%d", recv), int8(1), id}},
						gocql.BatchEntry{Stmt: stmtTrimMarker, Args: []any{ch, fmt.Sprintf("u-%d", recv), int8(1), id}})
					if err = exec(acks); err != nil {
						break
					}
					acks = acks[:0]
				}
			}
			for _, step := range [][]gocql.BatchEntry{dd, msgs, inbox} {
				if err == nil {
					err = chunked(step)
				}
			}
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(selfCPU()-cli0)/float64(time.Millisecond)/float64(b.N), "client-ms/msg")
	b.ReportMetric(float64(requests)/float64(b.N), "req/msg")
	b.ReportMetric(float64(statements)/float64(b.N), "stmt/msg")
	if pid != "" {
		srv1, err := procCPU(pid)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(srv1-srv0)/float64(time.Millisecond)/float64(b.N), "srv-ms/msg")
	}
}
