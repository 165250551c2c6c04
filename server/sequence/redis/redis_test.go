package redis_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/server/internal/testenv"
	"github.com/chatd/chatd/server/sequence"
	seqredis "github.com/chatd/chatd/server/sequence/redis"
	"github.com/chatd/chatd/server/sequence/sequencetest"
	"github.com/chatd/chatd/server/store"
)

// TestSuite runs the allocator suite of package sequence against the Redis
// allocator (shared Redis, CQL bounds).
func TestSuite(t *testing.T) {
	addr := redisAddr(t)
	c := newClient(t, addr)
	prefix := testPrefix(t, addr)
	sequencetest.Run(t, sequencetest.Harness{
		New: func(t testing.TB, _ store.Messages) sequence.Allocator {
			return newAlloc(t, c, prefix, seqredis.Config{})
		},
	})
}

func TestConfig(t *testing.T) {
	addr := redisAddr(t)
	c := newClient(t, addr)
	b := bounds(t)
	ctx := context.Background()
	for _, cfg := range []seqredis.Config{
		{Bounds: b},
		{Client: c},
		{Client: c, Bounds: b, Step: seqredis.MaxStep + 1},
		{Client: c, Bounds: b, ChannelStep: time.Millisecond},
		{Client: c, Bounds: b, PendingTTL: time.Millisecond},
	} {
		if _, err := seqredis.New(ctx, cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

// reader follows one user's inbox like a device: it reads up to the
// horizon, never past it, and advances its cursor to the horizon.
type reader struct {
	user   string
	cursor uint64
	seen   map[msgKey]uint64 // message -> first seq it was seen at
	beyond int               // rows found above the horizon (written, not yet visible)
}

type msgKey struct {
	ch string
	id uint64
}

func newReader(u string) *reader { return &reader{user: u, seen: map[msgKey]uint64{}} }

func (r *reader) sync(ctx context.Context, seq *sequence.Sequencer, st store.Messages) error {
	h, err := seq.Head(ctx, r.user)
	if err != nil {
		return err
	}
	for {
		ds, more, err := st.Inbox(ctx, r.user, r.cursor, 200)
		if err != nil {
			return err
		}
		stop := false
		for _, d := range ds {
			if d.Seq > h {
				r.beyond++
				stop = true
				break
			}
			k := msgKey{d.Message.ChannelID, d.Message.MessageID}
			if _, ok := r.seen[k]; !ok {
				r.seen[k] = d.Seq
			}
			r.cursor = d.Seq
		}
		if stop || !more || len(ds) == 0 {
			break
		}
	}
	r.cursor = max(r.cursor, h)
	return nil
}

// acked is one acknowledged message and its recipients.
type acked struct {
	key        msgKey
	recipients []string
}

// publishLog records every published inbox entry of several sequencers.
type publishLog struct {
	mu      sync.Mutex
	entries map[string]map[uint64]msgKey // user -> seq -> message
	reused  []string
}

func newPublishLog() *publishLog { return &publishLog{entries: map[string]map[uint64]msgKey{}} }

func (p *publishLog) publish(b []sequence.Committed) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range b {
		k := msgKey{c.Message.ChannelID, c.Message.MessageID}
		for _, e := range c.Inbox {
			m := p.entries[e.UserID]
			if m == nil {
				m = map[uint64]msgKey{}
				p.entries[e.UserID] = m
			}
			if o, ok := m[e.Seq]; ok && o != k {
				p.reused = append(p.reused, fmt.Sprintf("%s seq %d: %v and %v", e.UserID, e.Seq, o, k))
			}
			m[e.Seq] = k
		}
	}
}

// checkDisjoint fails if any two recorded ranges of one key overlap (a
// value allocated twice).
func checkDisjoint(t *testing.T, what string, recs []*recording, get func(*recording) map[string][]sequence.Range) {
	t.Helper()
	all := map[string][]sequence.Range{}
	for _, r := range recs {
		r.mu.Lock()
		for k, rs := range get(r) {
			all[k] = append(all[k], rs...)
		}
		r.mu.Unlock()
	}
	n := 0
	for k, rs := range all {
		sort.Slice(rs, func(i, j int) bool { return rs[i].First < rs[j].First })
		for i := range rs {
			n += int(rs[i].Len())
			if i > 0 && rs[i].First <= rs[i-1].Last {
				t.Fatalf("%s %s: ranges %+v and %+v overlap: allocated twice", what, k, rs[i-1], rs[i])
			}
		}
	}
	t.Logf("%s: %d values in %d keys, all distinct", what, n, len(all))
}

// checkIncreasing fails if one allocator's successive ranges of a key do
// not increase.
func checkIncreasing(t *testing.T, what string, r *recording, get func(*recording) map[string][]sequence.Range) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, rs := range get(r) {
		for i := 1; i < len(rs); i++ {
			if rs[i].First <= rs[i-1].Last {
				t.Fatalf("%s %s: range %+v allocated after %+v", what, k, rs[i], rs[i-1])
			}
		}
	}
}

// traffic runs senders on several sequencers and cursor-following readers
// until every sender is done, then reads to the end and checks that every
// acknowledged message reached each recipient's reader.
type traffic struct {
	t       *testing.T
	st      store.Messages
	seqs    []*sequence.Sequencer
	users   []string
	chans   map[string][]string // channel -> members
	perSend int                 // messages per sender goroutine
	senders int                 // sender goroutines per sequencer
	retry   bool                // senders retry failed sends (same client_message_id)
	onAcked func(n int)         // called after each ack with the running count

	mu    sync.Mutex
	acks  []acked
	count atomic.Int64
}

func (tr *traffic) run() map[string]*reader {
	t := tr.t
	ctx := context.Background()
	chNames := make([]string, 0, len(tr.chans))
	for ch := range tr.chans {
		chNames = append(chNames, ch)
	}
	slices.Sort(chNames)
	var sendWG sync.WaitGroup
	for si, seq := range tr.seqs {
		for g := range tr.senders {
			sendWG.Add(1)
			go func() {
				defer sendWG.Done()
				for i := range tr.perSend {
					ch := chNames[(si+g+i)%len(chNames)]
					members := tr.chans[ch]
					sender := members[(g+i)%len(members)]
					req := &sequence.Request{
						ChannelID: ch, SenderID: sender, SenderDeviceID: "d",
						ClientMessageID: fmt.Sprintf("s%d-g%d-m%d", si, g, i),
						Text:            fmt.Sprintf("server %d sender %d message %d", si, g, i),
						Recipients:      members,
					}
					var r sequence.Result
					var err error
					for attempt := 0; ; attempt++ {
						c, cancel := context.WithTimeout(ctx, 30*time.Second)
						r, err = seq.Do(c, req)
						cancel()
						if err == nil || !tr.retry || attempt == 200 {
							break
						}
						time.Sleep(20 * time.Millisecond)
					}
					if err != nil {
						t.Errorf("send %s: %v", req.ClientMessageID, err)
						return
					}
					tr.mu.Lock()
					tr.acks = append(tr.acks, acked{msgKey{r.ChannelID, r.MessageID}, members})
					tr.mu.Unlock()
					if n := tr.count.Add(1); tr.onAcked != nil {
						tr.onAcked(int(n))
					}
				}
			}()
		}
	}
	done := make(chan struct{})
	readers := map[string]*reader{}
	var readWG sync.WaitGroup
	for i, u := range tr.users {
		rd := newReader(u)
		readers[u] = rd
		seq := tr.seqs[i%len(tr.seqs)]
		readWG.Add(1)
		go func() {
			defer readWG.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				_ = rd.sync(ctx, seq, tr.st) // errors while Redis is away: try again
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	sendWG.Wait()
	close(done)
	readWG.Wait()
	for _, rd := range readers {
		var err error
		for attempt := 0; attempt < 100; attempt++ {
			if err = rd.sync(ctx, tr.seqs[0], tr.st); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("final sync of %s: %v", rd.user, err)
		}
	}
	// Every acknowledged message reached every recipient's reader.
	missing := 0
	for _, a := range tr.acks {
		for _, u := range a.recipients {
			if _, ok := readers[u].seen[a.key]; !ok {
				missing++
				if missing < 5 {
					t.Errorf("acknowledged message %v never seen by %s's cursor-following reader", a.key, u)
				}
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d acknowledged inbox entries missed by readers", missing)
	}
	beyond := 0
	for _, rd := range readers {
		beyond += rd.beyond
	}
	t.Logf("%d messages acknowledged; readers found rows above the horizon %d times (out-of-order commits held back)", len(tr.acks), beyond)
	// Message ids are unique per channel.
	ids := map[msgKey]bool{}
	for _, a := range tr.acks {
		if ids[a.key] {
			t.Fatalf("message id %v acknowledged twice", a.key)
		}
		ids[a.key] = true
	}
	return readers
}

func groupChannels(users []string, n int) map[string][]string {
	chans := map[string][]string{}
	for i := range n {
		var members []string
		for j, u := range users {
			if (i+j)%3 != 0 || j == i%len(users) {
				members = append(members, u)
			}
		}
		chans[sequencetest.Unique(fmt.Sprintf("g%d", i))] = members
	}
	return chans
}

// TestConcurrentServers: three sequencers ("servers") with one Redis, one
// CQL cluster and ONE shared store (the scylla store) write the same
// channels and inboxes concurrently. No id or seq is allocated twice,
// message ids increase per channel in each server's allocation order, and
// cursor-following readers that never pass the horizon miss nothing.
func TestConcurrentServers(t *testing.T) {
	addr := redisAddr(t)
	st := cluster(t)
	prefix := testPrefix(t, addr)
	plog := newPublishLog()
	var recs []*recording
	var seqs []*sequence.Sequencer
	for range 3 {
		c := newClient(t, addr)
		rec := record(newAlloc(t, c, prefix, seqredis.Config{}))
		recs = append(recs, rec)
		seq := sequence.New(st, plog.publish, sequence.Options{Allocator: rec})
		t.Cleanup(seq.Close)
		seqs = append(seqs, seq)
	}
	var users []string
	for i := range 6 {
		users = append(users, sequencetest.Unique(fmt.Sprintf("u%d", i)))
	}
	tr := &traffic{t: t, st: st, seqs: seqs, users: users, chans: groupChannels(users, 4), perSend: 40, senders: 4}
	tr.run()

	checkDisjoint(t, "inbox seqs", recs, func(r *recording) map[string][]sequence.Range { return r.users })
	checkDisjoint(t, "message ids", recs, func(r *recording) map[string][]sequence.Range { return r.chans })
	for _, r := range recs {
		checkIncreasing(t, "message ids", r, func(r *recording) map[string][]sequence.Range { return r.chans })
		checkIncreasing(t, "inbox seqs", r, func(r *recording) map[string][]sequence.Range { return r.users })
	}
	if len(plog.reused) > 0 {
		t.Fatalf("seqs published for two messages: %v", plog.reused)
	}
}

// TestRedisLoss: a private Redis is flushed and later killed and restarted
// (no persistence) while two servers send. No seq is allocated twice,
// allocation continues above the bound that was durable before the loss,
// and nothing acknowledged is missed by cursor-following readers.
func TestRedisLoss(t *testing.T) {
	pr := testenv.StartRedis(t)
	b := bounds(t)
	st := sequencetest.OpenPebble(t, t.TempDir())
	t.Cleanup(func() { st.Close() })
	plog := newPublishLog()
	var recs []*recording
	var allocs []*seqredis.Allocator
	var seqs []*sequence.Sequencer
	for range 2 {
		c := goredis.NewClient(&goredis.Options{Addr: pr.Addr(), MaxRetries: 2, DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second})
		t.Cleanup(func() { c.Close() })
		a := newAlloc(t, c, "loss:", seqredis.Config{Bounds: b, Step: 100})
		allocs = append(allocs, a)
		rec := record(a)
		recs = append(recs, rec)
		seq := sequence.New(st, plog.publish, sequence.Options{Allocator: rec, StoreTimeout: 10 * time.Second})
		t.Cleanup(seq.Close)
		seqs = append(seqs, seq)
	}
	var users []string
	for i := range 4 {
		users = append(users, sequencetest.Unique(fmt.Sprintf("u%d", i)))
	}
	const perSend, senders = 60, 3
	total := 2 * senders * perSend
	before := map[string]uint64{}
	var flushed, restarted sync.Once
	admin := goredis.NewClient(&goredis.Options{Addr: pr.Addr()})
	t.Cleanup(func() { admin.Close() })
	tr := &traffic{t: t, st: st, seqs: seqs, users: users, chans: groupChannels(users, 3), perSend: perSend, senders: senders, retry: true}
	tr.onAcked = func(n int) {
		if n == total/3 {
			flushed.Do(func() {
				for _, u := range users {
					v, err := b.Get(context.Background(), seqredis.BoundKeyUser(u))
					if err != nil {
						t.Error(err)
					}
					before[u] = v
				}
				if err := admin.FlushAll(context.Background()).Err(); err != nil {
					t.Error(err)
				}
				// Allocations that start from now on run on the flushed Redis.
				for _, r := range recs {
					r.mark()
				}
				t.Logf("FLUSHALL after %d acks", n)
			})
		}
		if n == 2*total/3 {
			restarted.Do(func() {
				pr.Stop()
				time.Sleep(100 * time.Millisecond)
				pr.Start()
				t.Logf("redis-server killed and restarted after %d acks", n)
			})
		}
	}
	tr.run()

	checkDisjoint(t, "inbox seqs", recs, func(r *recording) map[string][]sequence.Range { return r.users })
	checkDisjoint(t, "message ids", recs, func(r *recording) map[string][]sequence.Range { return r.chans })
	if len(plog.reused) > 0 {
		t.Fatalf("seqs published for two messages: %v", plog.reused)
	}
	// Allocation after the loss continues above the durable bound.
	for _, r := range recs {
		r.mu.Lock()
		for u, rs := range r.after {
			for _, rg := range rs {
				if rg.First <= before[u] {
					t.Errorf("%s: seqs %+v allocated after FLUSHALL, durable bound before it was %d", u, rg, before[u])
				}
			}
		}
		r.mu.Unlock()
	}
	var inits uint64
	for _, a := range allocs {
		inits += a.Stats().Inits
	}
	if inits == 0 {
		t.Fatal("no Redis hash was set up again after the loss")
	}
	var stale uint64
	for _, a := range allocs {
		stale += a.Stats().Stale
	}
	t.Logf("hashes set up from durable bounds: %d; users re-placed after stale commits: %d", inits, stale)
}

// TestServerDeath: a server allocates a seq and dies before committing.
// The horizon stays below the abandoned seq until PendingTTL, then passes
// it; readers miss nothing and continue.
func TestServerDeath(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	st := sequencetest.OpenPebble(t, t.TempDir())
	defer st.Close()
	const ttl = 2 * time.Second
	dead := newAlloc(t, newClient(t, addr), prefix, seqredis.Config{PendingTTL: ttl})
	live := newAlloc(t, newClient(t, addr), prefix, seqredis.Config{PendingTTL: ttl})
	seq := sequence.New(st, nil, sequence.Options{Allocator: live})
	defer seq.Close()
	ctx := context.Background()
	u, peer := sequencetest.Unique("bob"), sequencetest.Unique("alice")
	ch := sequencetest.Unique("dm")
	send := func(text string) sequence.Result {
		t.Helper()
		r, err := seq.Do(ctx, &sequence.Request{ChannelID: ch, SenderID: peer, ClientMessageID: text, Text: text, Recipients: []string{peer, u}})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	rd := newReader(u)
	send("m1")
	t0 := time.Now()
	a, err := dead.Allocate(ctx, time.Now(), map[string]int{ch: 1}, map[string]int{u: 1})
	if err != nil {
		t.Fatal(err)
	}
	abandoned := a.Users[u].First
	m2 := send("m2")
	if err := rd.sync(ctx, seq, st); err != nil {
		t.Fatal(err)
	}
	if time.Since(t0) < ttl/2 {
		if h, _ := seq.Head(ctx, u); h != abandoned-1 {
			t.Fatalf("head %d while seq %d is pending; want %d", h, abandoned, abandoned-1)
		}
		if _, ok := rd.seen[msgKey{ch, m2.MessageID}]; ok || rd.cursor >= abandoned {
			t.Fatalf("reader passed the pending seq %d (cursor %d)", abandoned, rd.cursor)
		}
	}
	deadline := time.Now().Add(ttl + 10*time.Second)
	for {
		h, err := seq.Head(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		if h > abandoned {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("horizon stuck at %d behind the abandoned seq %d", h, abandoned)
		}
		time.Sleep(50 * time.Millisecond)
	}
	m3 := send("m3")
	if err := rd.sync(ctx, seq, st); err != nil {
		t.Fatal(err)
	}
	for _, m := range []sequence.Result{m2, m3} {
		if _, ok := rd.seen[msgKey{ch, m.MessageID}]; !ok {
			t.Fatalf("reader missed %v after the horizon passed the hole", m.MessageID)
		}
	}
	// The dead server's commit, should it come back, is refused.
	if err := dead.Commit(ctx, a); !errors.Is(err, sequence.ErrStale) {
		t.Fatalf("commit after expiry: %v, want ErrStale", err)
	}
}

// blocking is a store whose AppendBatch waits while armed.
type blocking struct {
	store.Messages
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (b *blocking) AppendBatch(ctx context.Context, bt *store.Batch) error {
	if len(bt.Messages) > 0 && b.armed.CompareAndSwap(true, false) {
		b.entered <- struct{}{}
		<-b.release
	}
	return b.Messages.AppendBatch(ctx, bt)
}

// TestLateCommitReplaces: a write that lands after its seq expired (and a
// reader passed it) is not acknowledged under that seq: the sequencer
// places the message again above the horizon, and the reader sees it.
func TestLateCommitReplaces(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	pst := sequencetest.OpenPebble(t, t.TempDir())
	defer pst.Close()
	st := &blocking{Messages: pst, entered: make(chan struct{}), release: make(chan struct{})}
	a := newAlloc(t, newClient(t, addr), prefix, seqredis.Config{PendingTTL: 300 * time.Millisecond})
	plog := newPublishLog()
	seq := sequence.New(st, plog.publish, sequence.Options{Allocator: a})
	defer seq.Close()
	ctx := context.Background()
	u, peer := sequencetest.Unique("bob"), sequencetest.Unique("alice")
	ch := sequencetest.Unique("dm")
	req := func(text string) *sequence.Request {
		return &sequence.Request{ChannelID: ch, SenderID: peer, ClientMessageID: text, Text: text, Recipients: []string{peer, u}}
	}
	if _, err := seq.Do(ctx, req("m1")); err != nil {
		t.Fatal(err)
	}
	rd := newReader(u)
	if err := rd.sync(ctx, seq, pst); err != nil {
		t.Fatal(err)
	}
	st.armed.Store(true)
	res := make(chan sequence.Result, 1)
	seq.Submit(req("m2"), func(r sequence.Result) { res <- r })
	<-st.entered
	// The write hangs; its seq expires and the reader passes it.
	start := rd.cursor
	for rd.cursor == start {
		time.Sleep(50 * time.Millisecond)
		if err := rd.sync(ctx, seq, pst); err != nil {
			t.Fatal(err)
		}
	}
	passed := rd.cursor
	close(st.release)
	r := <-res
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	if err := rd.sync(ctx, seq, pst); err != nil {
		t.Fatal(err)
	}
	at, ok := rd.seen[msgKey{ch, r.MessageID}]
	if !ok || at <= passed {
		t.Fatalf("acknowledged message seen=%v at seq %d; the reader had passed %d", ok, at, passed)
	}
	if a.Stats().Stale == 0 {
		t.Fatal("no stale commit reported")
	}
	// The late row stays at the passed seq: the message is stored under
	// two seqs (clients dedup by channel_id and message_id).
	ds, _, err := pst.Inbox(ctx, u, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range ds {
		if d.Message.MessageID == r.MessageID {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("message stored under %d seqs, want 2 (the late one and the re-placed one)", n)
	}
}

// TestHorizonOfNewUser: a user never seen has horizon 0; after Redis loses
// a user's hash the horizon is the durable bound.
func TestHorizonOfNewUser(t *testing.T) {
	pr := testenv.StartRedis(t)
	c := newClient(t, pr.Addr())
	a := newAlloc(t, c, "h:", seqredis.Config{Step: 50})
	ctx := context.Background()
	u := sequencetest.Unique("carol")
	if h, err := a.Horizon(ctx, u); err != nil || h != 0 {
		t.Fatalf("horizon of a new user %d, %v", h, err)
	}
	al, err := a.Allocate(ctx, time.Now(), nil, map[string]int{u: 3})
	if err != nil {
		t.Fatal(err)
	}
	if r := al.Users[u]; r.First != 1 || r.Last != 3 {
		t.Fatalf("first seqs %+v", r)
	}
	if h, _ := a.Horizon(ctx, u); h != 0 {
		t.Fatalf("horizon %d with seqs 1-3 pending", h)
	}
	if err := a.Commit(ctx, al); err != nil {
		t.Fatal(err)
	}
	if h, _ := a.Horizon(ctx, u); h != 3 {
		t.Fatalf("horizon %d after commit, want 3", h)
	}
	if err := c.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	want, err := bounds(t).Get(ctx, seqredis.BoundKeyUser(u))
	if err != nil || want < 3+50 {
		t.Fatalf("durable bound %d, %v", want, err)
	}
	if h, err := a.Horizon(ctx, u); err != nil || h != want {
		t.Fatalf("horizon after FLUSHALL %d, %v; want the durable bound %d", h, err, want)
	}
	// The commit of an allocation made before the loss is stale.
	al2, err := a.Allocate(ctx, time.Now(), nil, map[string]int{u: 1})
	if err != nil {
		t.Fatal(err)
	}
	if al2.Users[u].First != want+1 {
		t.Fatalf("after the loss allocation resumes at %d, want %d", al2.Users[u].First, want+1)
	}
	if err := c.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	var se *sequence.StaleError
	if err := a.Commit(ctx, al2); !errors.As(err, &se) || len(se.Users) != 1 || se.Users[0] != u {
		t.Fatalf("commit across a FLUSHALL: %v", err)
	}
}

// BenchmarkAllocateCommit measures one batch's Redis work (Allocate and
// Commit, two round trips) against the shared Redis. dm: one message of a
// 1:1 channel (3 keys). group: 64 messages in 8 channels of 4 members, 16
// users (24 keys in the Allocate call, 16 Commit calls). The +claim
// variants also claim every message's client_message_id first (Claim, a
// third round trip: one SET NX PX per message), as the sequencer does.
func BenchmarkAllocateCommit(b *testing.B) {
	b.Run("dm", func(b *testing.B) { benchAllocate(b, 1, 1, 2, 2, false) })
	b.Run("group", func(b *testing.B) { benchAllocate(b, 8, 8, 4, 16, false) })
	b.Run("dm+claim", func(b *testing.B) { benchAllocate(b, 1, 1, 2, 2, true) })
	b.Run("group+claim", func(b *testing.B) { benchAllocate(b, 8, 8, 4, 16, true) })
}

func benchAllocate(b *testing.B, nChans, perChan, members, nUsers int, claim bool) {
	addr := redisAddr(b)
	c := newClient(b, addr)
	a := newAlloc(b, c, testPrefix(b, addr), seqredis.Config{})
	ctx := context.Background()
	channels, users := map[string]int{}, map[string]int{}
	var us []string
	for i := range nUsers {
		us = append(us, sequencetest.Unique(fmt.Sprintf("u%d", i)))
	}
	for i := range nChans {
		channels[sequencetest.Unique(fmt.Sprintf("g%d", i))] = perChan
		for j := range members {
			users[us[(i*2+j)%nUsers]] += perChan
		}
	}
	msgs := nChans * perChan
	// Warm up: set the hashes up and reserve.
	if al, err := a.Allocate(ctx, time.Now(), channels, users); err != nil {
		b.Fatal(err)
	} else if err := a.Commit(ctx, al); err != nil {
		b.Fatal(err)
	}
	sender := sequencetest.Unique("sender")
	keys := make([]sequence.ClaimKey, msgs)
	n := 0
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if claim {
			for i := range keys {
				n++
				keys[i] = sequence.ClaimKey{SenderID: sender, ClientMessageID: strconv.Itoa(n)}
			}
			c, err := a.Claim(ctx, keys, 10*time.Second)
			if err != nil || c == nil || len(c.Lost) > 0 {
				b.Fatalf("claim: %+v, %v", c, err)
			}
		}
		al, err := a.Allocate(ctx, time.Now(), channels, users)
		if err != nil {
			b.Fatal(err)
		}
		if err := a.Commit(ctx, al); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(msgs)*float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkSequencer is the sequencer end to end with the Redis allocator
// on a pebble store (fsync per batch): 16 concurrent senders in 8 group
// channels of 3 members. Compare BenchmarkSubmitParallel in package
// sequence (the single-node allocator).
func BenchmarkSequencer(b *testing.B) {
	addr := redisAddr(b)
	c := newClient(b, addr)
	a := newAlloc(b, c, testPrefix(b, addr), seqredis.Config{})
	st := sequencetest.OpenPebble(b, b.TempDir())
	defer st.Close()
	seq := sequence.New(st, nil, sequence.Options{Allocator: a})
	defer seq.Close()
	bob, carol := sequencetest.Unique("bob"), sequencetest.Unique("carol")
	sequencetest.SendParallel(b, seq, 8,
		func(id int64) string { return sequencetest.Unique(fmt.Sprint("u", id)) },
		func(id int64) string { return fmt.Sprint("g:bench-", id%8) },
		bob, carol)
	s := seq.Stats()
	b.ReportMetric(float64(s.Messages)/b.Elapsed().Seconds(), "msgs/s")
}
