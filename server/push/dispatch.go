package push

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
)

// Dispatcher defaults (Config fields left zero).
const (
	// DefaultEnqueueBuffer bounds the committed batches waiting for the
	// queue writer; a batch that finds it full is dropped and counted
	// (reason "overflow"), the sequencer never waits.
	DefaultEnqueueBuffer = 4096
	// DefaultScanLimit is the most queued jobs one pass of the worker
	// reads.
	DefaultScanLimit = 10000
	// DefaultPoll is how often the worker looks for due jobs.
	DefaultPoll = 100 * time.Millisecond
	// CloseGrace is how long Close lets sends in flight finish before it
	// cancels them; the jobs of a canceled send stay queued and are sent
	// after the next start.
	CloseGrace = 5 * time.Second
	// Retry back-off: BaseBackoff * 2^attempt, at most MaxBackoff, with
	// full jitter (a uniformly random delay in [d/2, d]).
	BaseBackoff = time.Second
	MaxBackoff  = 5 * time.Minute
)

// Config configures a Dispatcher.
type Config struct {
	// Store reads targets, mutes, the previews setting, messages and
	// display names, and deletes targets reported gone. Required.
	Store store.Store
	// Queue holds the jobs durably. Required.
	Queue store.PushQueue
	// Providers send; a target whose kind has none is skipped (dropped
	// "no_provider").
	Providers []Provider
	// HasStream reports whether the user has an open Chat stream (on any
	// server, as far as this server knows without a round trip: the hub).
	// Required. Called on the commit path for every recipient: it must
	// be cheap and must not block.
	HasStream func(userID string) bool
	// Online, if set, reports whether the user has a device up on any
	// server (cluster mode: the presence engine, one Redis round trip per
	// due group, never on the commit path). A user online elsewhere gets
	// no push (dropped "online"). A failure counts as offline.
	Online func(ctx context.Context, userID string) (bool, error)
	// Unread returns the user's unread count in the channel and in total
	// (the APNs badge). Required.
	Unread func(ctx context.Context, channelID, userID string) (channel, total uint32, err error)
	// Window is the collapse window; zero means DefaultCollapseWindow.
	Window time.Duration
	// TTL is how long a push is worth sending; zero means DefaultTTL.
	TTL time.Duration
	// Concurrency bounds the sends in flight per provider; zero means
	// DefaultConcurrency.
	Concurrency int
	// Poll is how often the worker looks for due jobs; zero means
	// DefaultPoll.
	Poll time.Duration
	// Registerer, if set, gets the metrics.
	Registerer prometheus.Registerer
	// Logger; zero means slog.Default().
	Logger *slog.Logger
}

// Dispatcher decides who gets a push for each committed message and sends
// it. The commit path (Committed) only filters in memory and hands the
// batch to a bounded buffer; a writer goroutine appends the jobs to the
// durable queue; a worker sends each (user, channel) group once its
// collapse window has passed, with retries, and removes targets the
// provider reports gone.
//
// Rules (docs/push.md): a message gets a push to a recipient's devices
// when it is a text message by someone else, the recipient has no open
// Chat stream when it commits (active elsewhere: no push to any device)
// nor when the window ends, and the recipient has not muted the channel.
// Delivery is at least once: a crash between a provider's acceptance and
// the job's deletion sends that push again after the restart (the
// collapse key makes the device show it once).
type Dispatcher struct {
	cfg       Config
	log       *slog.Logger
	providers map[store.PushKind]*providerSlot
	in        chan []store.PushJob
	wake      chan struct{}
	stop      chan struct{}
	done      sync.WaitGroup
	ctx       context.Context // canceled by Close after CloseGrace: ends sends in flight
	cancel    context.CancelFunc
	inflight  sync.Map // job id -> struct{}: jobs a send is working on
	m         metrics
	closeOnce sync.Once
}

type providerSlot struct {
	p   Provider
	sem chan struct{}
}

type metrics struct {
	enqueued, overflow prometheus.Counter
	sent, retried      *prometheus.CounterVec
	dropped            *prometheus.CounterVec
	removed            *prometheus.CounterVec
	depth, age         prometheus.Gauge
}

// New returns a Dispatcher; Start starts its goroutines.
func New(cfg Config) (*Dispatcher, error) {
	if cfg.Store == nil || cfg.Queue == nil || cfg.HasStream == nil || cfg.Unread == nil {
		return nil, errors.New("push: Config.Store, Queue, HasStream and Unread are required")
	}
	if cfg.Window == 0 {
		cfg.Window = DefaultCollapseWindow
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.Poll == 0 {
		cfg.Poll = DefaultPoll
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	d := &Dispatcher{
		cfg:       cfg,
		log:       cfg.Logger,
		providers: make(map[store.PushKind]*providerSlot),
		in:        make(chan []store.PushJob, DefaultEnqueueBuffer),
		wake:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	for _, p := range cfg.Providers {
		d.providers[p.Kind()] = &providerSlot{p: p, sem: make(chan struct{}, cfg.Concurrency)}
	}
	d.m = metrics{
		enqueued: prometheus.NewCounter(prometheus.CounterOpts{Name: "chatd_push_enqueued_total", Help: "Push jobs (one message for one away recipient) written to the queue."}),
		overflow: prometheus.NewCounter(prometheus.CounterOpts{Name: "chatd_push_enqueue_overflow_total", Help: "Committed batches whose push jobs were dropped because the enqueue buffer was full."}),
		sent:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "chatd_push_sent_total", Help: "Pushes a provider accepted."}, []string{"provider"}),
		retried:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "chatd_push_retried_total", Help: "Pushes scheduled again after a temporary failure (429, 5xx, timeout)."}, []string{"provider"}),
		dropped:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "chatd_push_dropped_total", Help: "Push jobs dropped, by reason (online, muted, no_target, no_provider, ttl, rejected, overflow, error)."}, []string{"reason"}),
		removed:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "chatd_push_targets_removed_total", Help: "Push targets deleted because the provider reported them gone."}, []string{"provider"}),
		depth:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "chatd_push_queue_depth", Help: "Push jobs in the queue at the worker's last pass."}),
		age:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "chatd_push_queue_oldest_seconds", Help: "Age of the oldest queued push job at the worker's last pass, in seconds."}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{d.m.enqueued, d.m.overflow, d.m.sent, d.m.retried, d.m.dropped, d.m.removed, d.m.depth, d.m.age} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return d, nil
}

// Start starts the queue writer and the worker.
func (d *Dispatcher) Start() {
	d.done.Add(2)
	go d.writer()
	go d.worker()
}

// Close stops the goroutines after the writer has queued what it holds
// and the sends in flight have finished (those still running after
// CloseGrace are canceled, their jobs left queued). Jobs still queued are
// sent after the next start.
func (d *Dispatcher) Close() {
	d.closeOnce.Do(func() {
		close(d.stop)
		t := time.AfterFunc(CloseGrace, d.cancel)
		d.done.Wait()
		t.Stop()
		d.cancel()
	})
}

// Committed is the commit-path hook (called by the sequencer's publish
// callback after every durable batch, see app): it picks the recipients
// that may get a push (text messages, not the sender, no open stream
// here) and hands their jobs to the writer. It never blocks and reads no
// store: a full buffer drops the batch's jobs and counts them.
func (d *Dispatcher) Committed(batch []sequence.Committed) {
	var jobs []store.PushJob
	for i := range batch {
		m := batch[i].Message
		if m.Kind != store.KindText {
			continue
		}
		for _, e := range batch[i].Inbox {
			if e.UserID == m.SenderID || d.cfg.HasStream(e.UserID) {
				continue
			}
			if jobs == nil {
				jobs = make([]store.PushJob, 0, len(batch[i].Inbox))
			}
			jobs = append(jobs, store.PushJob{UserID: e.UserID, ChannelID: m.ChannelID, MessageID: m.MessageID,
				Committed: m.CreatedAt, Due: m.CreatedAt.Add(d.cfg.Window)})
		}
	}
	if len(jobs) == 0 {
		return
	}
	select {
	case d.in <- jobs:
	default:
		d.m.overflow.Inc()
		d.m.dropped.WithLabelValues("overflow").Add(float64(len(jobs)))
	}
}

// writer appends buffered jobs to the queue, several batches per write.
func (d *Dispatcher) writer() {
	defer d.done.Done()
	for {
		var jobs []store.PushJob
		select {
		case jobs = <-d.in:
		case <-d.stop:
			// Queue what is buffered, then stop.
			for {
				select {
				case more := <-d.in:
					d.write(more)
				default:
					return
				}
			}
		}
	drain:
		for len(jobs) < 1024 {
			select {
			case more := <-d.in:
				jobs = append(jobs, more...)
			default:
				break drain
			}
		}
		d.write(jobs)
	}
}

func (d *Dispatcher) write(jobs []store.PushJob) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.cfg.Queue.AddPushJobs(ctx, jobs); err != nil {
		d.log.Warn("push: queueing jobs failed; those pushes are lost", "jobs", len(jobs), "err", err)
		d.m.dropped.WithLabelValues("error").Add(float64(len(jobs)))
		return
	}
	d.m.enqueued.Add(float64(len(jobs)))
}

// worker sends due groups every Poll.
func (d *Dispatcher) worker() {
	defer d.done.Done()
	var sends sync.WaitGroup
	defer sends.Wait()
	t := time.NewTicker(d.cfg.Poll)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		case <-d.wake:
		}
		d.pass(&sends)
	}
}

// group is the queued jobs of one (user, channel, device) key.
type group struct {
	user, channel, device string
	ids                   []uint64
	newest                store.PushJob // highest message id
	due                   time.Time     // earliest due of the group
	committed             time.Time     // earliest commit of the group
	attempt               uint32
}

// pass reads the queue and starts a send for every group whose earliest
// job is due: the whole group (jobs not due yet included) becomes one
// push with the newest message and the current unread count.
//
// The jobs of sends in flight are skipped by the marks taken before the
// read: a send that finishes while the read is under way deletes its jobs
// and clears its marks, and the read may still return those jobs; checked
// against the marks of after the read they would be sent twice. Only pass
// starts sends, so no mark appears during the read.
func (d *Dispatcher) pass(sends *sync.WaitGroup) {
	var busy map[uint64]struct{}
	d.inflight.Range(func(k, _ any) bool {
		if busy == nil {
			busy = make(map[uint64]struct{})
		}
		busy[k.(uint64)] = struct{}{}
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	jobs, err := d.cfg.Queue.PushJobs(ctx, DefaultScanLimit)
	cancel()
	if err != nil {
		d.log.Warn("push: reading the queue failed", "err", err)
		return
	}
	now := time.Now()
	d.m.depth.Set(float64(len(jobs)))
	if len(jobs) > 0 {
		d.m.age.Set(now.Sub(jobs[0].Committed).Seconds())
	} else {
		d.m.age.Set(0)
	}
	type key struct{ user, channel, device string }
	groups := make(map[key]*group)
	var order []*group
	for _, j := range jobs {
		if _, ok := busy[j.ID]; ok {
			continue
		}
		k := key{j.UserID, j.ChannelID, j.DeviceID}
		g := groups[k]
		if g == nil {
			g = &group{user: j.UserID, channel: j.ChannelID, device: j.DeviceID, due: j.Due, committed: j.Committed, newest: j}
			groups[k] = g
			order = append(order, g)
		}
		g.ids = append(g.ids, j.ID)
		if j.Due.Before(g.due) {
			g.due = j.Due
		}
		if j.Committed.Before(g.committed) {
			g.committed = j.Committed
		}
		if j.MessageID >= g.newest.MessageID {
			g.newest = j
		}
		g.attempt = max(g.attempt, j.Attempt)
	}
	for _, g := range order {
		if g.due.After(now) {
			continue
		}
		for _, id := range g.ids {
			d.inflight.Store(id, struct{}{})
		}
		sends.Add(1)
		go func() {
			defer sends.Done()
			d.send(g)
			for _, id := range g.ids {
				d.inflight.Delete(id)
			}
		}()
	}
}

// send handles one due group: drop it if it is stale, the user is back
// or the channel muted; otherwise push to every target (or to the retry's
// one device), then queue retries and delete the group's jobs.
func (d *Dispatcher) send(g *group) {
	ctx, cancel := context.WithTimeout(d.ctx, d.cfg.TTL)
	defer cancel()
	finish := func(reason string, retries []store.PushJob) {
		if reason != "" {
			d.m.dropped.WithLabelValues(reason).Inc()
		}
		if len(retries) > 0 {
			if err := d.cfg.Queue.AddPushJobs(ctx, retries); err != nil {
				d.log.Warn("push: queueing retries failed", "user_id", g.user, "err", err)
			}
		}
		if err := d.cfg.Queue.DeletePushJobs(ctx, g.ids); err != nil {
			d.log.Warn("push: deleting sent jobs failed; they will be sent again", "user_id", g.user, "err", err)
		}
	}
	now := time.Now()
	if now.Sub(g.committed) > d.cfg.TTL {
		finish("ttl", nil)
		return
	}
	if d.cfg.HasStream(g.user) {
		finish("online", nil)
		return
	}
	if d.cfg.Online != nil {
		if on, err := d.cfg.Online(ctx, g.user); err == nil && on {
			finish("online", nil)
			return
		}
	}
	mutes, err := d.cfg.Store.ListMutes(ctx, g.user)
	if err != nil {
		d.retryLater(g, err)
		return
	}
	for _, m := range mutes {
		if m.ChannelID == g.channel && m.Active(now) {
			finish("muted", nil)
			return
		}
	}
	targets, err := d.cfg.Store.ListPushTargets(ctx, g.user)
	if err != nil {
		d.retryLater(g, err)
		return
	}
	if g.device != "" {
		targets = filterDevice(targets, g.device)
	}
	if len(targets) == 0 {
		finish("no_target", nil)
		return
	}
	n, err := d.notification(ctx, g)
	if err != nil {
		d.retryLater(g, err)
		return
	}
	var mu sync.Mutex
	var retries []store.PushJob
	var wg sync.WaitGroup
	for _, t := range targets {
		slot := d.providers[t.Kind]
		if slot == nil {
			d.m.dropped.WithLabelValues("no_provider").Inc()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			nt := *n
			nt.Target = *t
			nt.TTL = max(time.Second, d.cfg.TTL-time.Since(g.committed))
			if r, ok := d.sendOne(ctx, slot, &nt, g); ok {
				mu.Lock()
				retries = append(retries, r)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if d.ctx.Err() != nil {
		return // shutting down: the jobs stay queued and go out after the restart
	}
	finish("", retries)
}

// retryLater leaves the group queued after a store failure; the next
// pass tries again.
func (d *Dispatcher) retryLater(g *group, err error) {
	d.log.Warn("push: reading push state failed; retrying", "user_id", g.user, "err", err)
}

func filterDevice(ts []*store.PushTarget, device string) []*store.PushTarget {
	for _, t := range ts {
		if t.DeviceID == device {
			return []*store.PushTarget{t}
		}
	}
	return nil
}

// notification builds what every target of the group is sent.
func (d *Dispatcher) notification(ctx context.Context, g *group) (*Notification, error) {
	ch, total, err := d.cfg.Unread(ctx, g.channel, g.user)
	if err != nil {
		return nil, err
	}
	n := &Notification{ChannelID: g.channel, Title: DefaultTitle, Unread: ch, Badge: total, CollapseKey: CollapseKey(g.channel)}
	previews, err := d.cfg.Store.PushPreviews(ctx, g.user)
	if err != nil {
		return nil, err
	}
	if previews {
		m, err := d.cfg.Store.GetMessage(ctx, g.channel, g.newest.MessageID)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		if m != nil {
			n.Body = Preview(m.Text)
			n.Sender = m.SenderID
			if u, err := d.cfg.Store.GetUser(ctx, m.SenderID); err == nil && u.DisplayName != "" {
				n.Sender = u.DisplayName
			}
		}
	}
	return n, nil
}

// sendOne sends to one target under its provider's concurrency bound and
// acts on the answer: gone deletes the target (only that address), a
// temporary failure returns a retry job (unless the TTL would pass first).
func (d *Dispatcher) sendOne(ctx context.Context, slot *providerSlot, n *Notification, g *group) (store.PushJob, bool) {
	select {
	case slot.sem <- struct{}{}:
	case <-ctx.Done():
		d.m.dropped.WithLabelValues("ttl").Inc()
		return store.PushJob{}, false
	}
	err := slot.p.Send(ctx, n)
	<-slot.sem
	if d.ctx.Err() != nil {
		return store.PushJob{}, false // shutting down: the caller leaves the jobs queued
	}
	kind := n.Target.Kind.String()
	if err == nil {
		d.m.sent.WithLabelValues(kind).Inc()
		return store.PushJob{}, false
	}
	pe := Classify(err)
	switch {
	case pe.Gone:
		if _, err := d.cfg.Store.DeletePushTarget(ctx, n.Target.UserID, n.Target.DeviceID, n.Target.Address); err != nil {
			d.log.Warn("push: deleting a gone target failed", "user_id", n.Target.UserID, "device_id", n.Target.DeviceID, "err", err)
		}
		d.m.removed.WithLabelValues(kind).Inc()
		d.log.Info("push: target gone, deleted", "provider", kind, "user_id", n.Target.UserID, "device_id", n.Target.DeviceID,
			"target", Redact(n.Target.Address), "status", pe.Status, "reason", pe.Reason)
		return store.PushJob{}, false
	case pe.Retry:
		attempt := g.attempt + 1
		delay := max(pe.RetryAfter, Backoff(attempt))
		due := time.Now().Add(delay)
		if due.Sub(g.committed) > d.cfg.TTL {
			d.m.dropped.WithLabelValues("ttl").Inc()
			d.log.Warn("push: dropped, its TTL would pass before the next try", "provider", kind, "user_id", n.Target.UserID, "device_id", n.Target.DeviceID,
				"target", Redact(n.Target.Address), "attempt", attempt, "status", pe.Status, "err", RedactErr(pe.Err))
			return store.PushJob{}, false
		}
		d.m.retried.WithLabelValues(kind).Inc()
		// One line per try (bounded by the backoff): why pushes are not going out.
		d.log.Info("push: temporary failure, will retry", "provider", kind, "user_id", n.Target.UserID, "device_id", n.Target.DeviceID,
			"target", Redact(n.Target.Address), "attempt", attempt, "retry_in", delay.Round(time.Millisecond).String(), "status", pe.Status, "reason", pe.Reason, "err", RedactErr(pe.Err))
		return store.PushJob{UserID: g.user, ChannelID: g.channel, MessageID: g.newest.MessageID, Committed: g.committed,
			Due: due, DeviceID: n.Target.DeviceID, Attempt: attempt}, true
	default:
		d.m.dropped.WithLabelValues("rejected").Inc()
		d.log.Warn("push: provider refused a push", "provider", kind, "user_id", n.Target.UserID, "device_id", n.Target.DeviceID,
			"target", Redact(n.Target.Address), "status", pe.Status, "reason", pe.Reason, "err", RedactErr(pe.Err))
		return store.PushJob{}, false
	}
}

// Backoff is the delay before retry attempt (1, 2, ...): BaseBackoff *
// 2^(attempt-1), at most MaxBackoff, jittered uniformly into [d/2, d].
func Backoff(attempt uint32) time.Duration {
	d := BaseBackoff << min(attempt-1, 20)
	if d > MaxBackoff || d <= 0 {
		d = MaxBackoff
	}
	return d/2 + rand.N(d/2+1)
}
