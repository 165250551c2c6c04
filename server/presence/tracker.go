package presence

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/chatd/chatd/server/store"
)

// MaxIDBytes bounds user and device ids given to the Tracker and Service.
const MaxIDBytes = 256

// HiddenFunc returns a user's hide_presence flag as the store has it.
type HiddenFunc func(ctx context.Context, userID string) (bool, error)

// StoreHidden returns a HiddenFunc that reads store.User.PresenceHidden. An
// unknown user counts as not hidden.
func StoreHidden(st store.Accounts) HiddenFunc {
	return func(ctx context.Context, userID string) (bool, error) {
		u, err := st.GetUser(ctx, userID)
		if errors.Is(err, store.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		return u.PresenceHidden, nil
	}
}

// TrackerConfig configures a Tracker. Zero values take the defaults.
type TrackerConfig struct {
	// Engine is the backing system. Required. The Tracker closes it.
	Engine Engine
	// Hidden is read before a device's user is brought up, to seed the
	// engine's hide_presence flag. nil: nobody is hidden unless SetHidden
	// says so.
	Hidden HiddenFunc
	// HeartbeatInterval is what clients are told to send Heartbeat frames
	// at (Welcome.heartbeat_interval_ms); at least 10 ms. Zero means
	// DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	// Grace is how long a device stays online after the last heartbeat or
	// frame of its streams; it must exceed HeartbeatInterval. Zero means
	// DefaultGrace.
	Grace time.Duration
	// CallTimeout bounds each Engine call. Default 5 s.
	CallTimeout time.Duration
	// RetryInterval is the first delay before retrying a failed Engine call
	// (doubling up to Grace/2). Default 1 s.
	RetryInterval time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Tracker follows the devices connected to this server and tells the
// Engine when one comes up or goes down. It is safe for concurrent use and
// has no global lock (users are kept in 256 shards, each user's devices
// under the user's own mutex).
//
// A device is up while at least one of its Conns is alive. A Conn is alive
// while open and heard from (Beat) within Grace, and, after an unclean
// Close, until Grace has passed since it was last heard from (a device that
// reconnects within that time never goes down: no offline/online pair). A
// clean Close or Logout takes it down at once.
//
// Cost: a Beat is one clock read and one atomic store (no lock, no
// allocation, no backend traffic). Each device on this server has one
// time.AfterFunc timer that fires about once per Grace (heartbeats do not
// reset it; when it fires it re-arms itself at the last heartbeat +
// Grace). A connected device costs about 1.1 KB of heap here and in the
// local engine (BenchmarkConnectedDevice), so a million devices cost about
// 1.1 GB and, with the default Grace, about 17k timer firings a second.
type Tracker struct {
	eng      Engine
	hidden   HiddenFunc
	interval time.Duration
	grace    time.Duration
	timeout  time.Duration
	retry    time.Duration
	log      *slog.Logger

	epoch  time.Time // monotonic base of Conn.lastBeat
	seed   maphash.Seed
	shards [trackerShards]trackerShard
	closed atomic.Bool
	ctx    context.Context // canceled by Close
	cancel context.CancelFunc

	devices atomic.Int64
	conns   atomic.Int64
}

const trackerShards = 256

type trackerShard struct {
	mu    sync.Mutex
	users map[string]*userEntry
}

// userEntry holds one user's devices on this server. Its mutex serializes
// every local change and every Engine call for the user.
type userEntry struct {
	mu      sync.Mutex
	id      string
	devices map[string]*device
	gone    bool // removed from its shard; look it up again
}

type device struct {
	u          *userEntry
	id         string
	conns      []*Conn // open or lingering
	up         bool    // the Engine has it up
	gone       bool    // removed from u.devices
	lastActive time.Time
	timer      *time.Timer
	timerAt    time.Time // when timer fires; zero if stopped
	retryAt    time.Time // zero unless a failed Engine call waits
	failures   int
}

// Conn states.
const (
	connOpen      = iota
	connLingering // closed uncleanly; alive until last beat + grace
	connClosed
	connExpired // silent for Grace while open
)

// Conn is one open stream of a device, as the Tracker sees it. Beat is
// safe to call from any goroutine; Close from any goroutine, once or more.
type Conn struct {
	t        *Tracker
	d        *device
	lastBeat atomic.Int64 // since t.epoch, ns
	state    int          // guarded by d.u.mu
	// expired (made by the first Expired call) is closed and onExpire
	// (set by OnExpire) called when the Conn expires; both nil until
	// asked for, so that a stream that uses neither holds neither.
	// Guarded by d.u.mu.
	expired  chan struct{}
	onExpire func()
}

var (
	errNoUser   = store.Errorf(store.CodeInvalid, "presence: user id must be 1 to 256 bytes of UTF-8")
	errNoDevice = store.Errorf(store.CodeInvalid, "presence: device id must be 1 to 256 bytes of UTF-8")
)

func validID(s string) bool { return s != "" && len(s) <= MaxIDBytes && utf8.ValidString(s) }

// NewTracker returns a Tracker over cfg.Engine. Errors (InvalidArgument):
// no Engine, Grace not above HeartbeatInterval, HeartbeatInterval under
// 10 ms.
func NewTracker(cfg TrackerConfig) (*Tracker, error) {
	if cfg.Engine == nil {
		return nil, store.Errorf(store.CodeInvalid, "presence: TrackerConfig.Engine is required")
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 5 * time.Second
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HeartbeatInterval < 10*time.Millisecond {
		return nil, store.Errorf(store.CodeInvalid, "presence: heartbeat interval %s is under 10ms", cfg.HeartbeatInterval)
	}
	if cfg.Grace <= cfg.HeartbeatInterval {
		return nil, store.Errorf(store.CodeInvalid, "presence: grace %s must exceed the heartbeat interval %s", cfg.Grace, cfg.HeartbeatInterval)
	}
	t := &Tracker{
		eng:      cfg.Engine,
		hidden:   cfg.Hidden,
		interval: cfg.HeartbeatInterval,
		grace:    cfg.Grace,
		timeout:  cfg.CallTimeout,
		retry:    cfg.RetryInterval,
		log:      cfg.Logger,
		epoch:    time.Now(),
		seed:     maphash.MakeSeed(),
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	for i := range t.shards {
		t.shards[i].users = make(map[string]*userEntry)
	}
	return t, nil
}

// HeartbeatInterval is the interval to announce in Welcome.
func (t *Tracker) HeartbeatInterval() time.Duration { return t.interval }

// Grace is the grace period after the last heartbeat.
func (t *Tracker) Grace() time.Duration { return t.grace }

// Engine returns the Tracker's engine (for the Service).
func (t *Tracker) Engine() Engine { return t.eng }

// Stats reports the devices and the Conns (open or lingering) held here.
func (t *Tracker) Stats() (devices, conns int64) { return t.devices.Load(), t.conns.Load() }

func (t *Tracker) now() time.Duration { return time.Since(t.epoch) }

func (t *Tracker) wall(d time.Duration) time.Time { return t.epoch.Add(d) }

func (t *Tracker) shard(userID string) *trackerShard {
	return &t.shards[maphash.String(t.seed, userID)%trackerShards]
}

// lockUser returns userID's entry locked, creating it if create is set; nil
// if absent and !create.
func (t *Tracker) lockUser(userID string, create bool) *userEntry {
	s := t.shard(userID)
	for {
		s.mu.Lock()
		u := s.users[userID]
		if u == nil {
			if !create {
				s.mu.Unlock()
				return nil
			}
			u = &userEntry{id: userID, devices: make(map[string]*device, 1)}
			s.users[userID] = u
		}
		s.mu.Unlock()
		u.mu.Lock()
		if !u.gone {
			return u
		}
		u.mu.Unlock()
	}
}

// dropUserIfEmpty removes u from its shard when it has no devices. u.mu is
// held.
func (t *Tracker) dropUserIfEmpty(u *userEntry) {
	if len(u.devices) != 0 || u.gone {
		return
	}
	s := t.shard(u.id)
	s.mu.Lock()
	if s.users[u.id] == u {
		delete(s.users, u.id)
	}
	s.mu.Unlock()
	u.gone = true
}

// Connect registers a new stream of deviceID of userID on this server and
// returns its Conn; the stream counts as heard from now. If the device was
// not up, the Engine is told (within CallTimeout; a failure is logged and
// retried in the background, so Connect does not fail for it). A lingering
// Conn of the same device (closed uncleanly within Grace) is superseded: the
// device stays up without an offline/online pair.
//
// Errors: InvalidArgument (empty or over-long ids), ErrClosed (Unavailable)
// after Close.
func (t *Tracker) Connect(ctx context.Context, userID, deviceID string) (*Conn, error) {
	if !validID(userID) {
		return nil, errNoUser
	}
	if !validID(deviceID) {
		return nil, errNoDevice
	}
	if t.closed.Load() {
		return nil, ErrClosed
	}
	u := t.lockUser(userID, true)
	defer u.mu.Unlock()
	d := u.devices[deviceID]
	if d == nil {
		d = &device{u: u, id: deviceID}
		u.devices[deviceID] = d
		t.devices.Add(1)
	}
	// Lingering Conns will never be heard from again; the new one carries
	// the device from here.
	kept := d.conns[:0]
	for _, c := range d.conns {
		if c.state == connLingering {
			c.state = connClosed
			d.noteActive(t.wall(time.Duration(c.lastBeat.Load())))
			t.conns.Add(-1)
			continue
		}
		kept = append(kept, c)
	}
	clear(d.conns[len(kept):])
	d.conns = kept
	c := &Conn{t: t, d: d, state: connOpen}
	c.lastBeat.Store(int64(t.now()))
	d.conns = append(d.conns, c)
	t.conns.Add(1)
	t.reconcile(ctx, d)
	return c, nil
}

// Beat records that the stream was heard from now: call it for every
// Heartbeat frame and, optionally, for any other client frame. It costs one
// atomic store and never blocks.
func (c *Conn) Beat() {
	c.lastBeat.Store(int64(c.t.now()))
}

// Expired is closed when the stream has been silent (no Beat) for Grace
// while open: the device is down; the stream should end (e.g. with
// Unavailable "heartbeat timeout") so that its memory is freed. A later
// Beat does not bring it back: the client reconnects.
func (c *Conn) Expired() <-chan struct{} {
	c.d.u.mu.Lock()
	defer c.d.u.mu.Unlock()
	if c.expired == nil {
		c.expired = make(chan struct{})
		if c.state == connExpired {
			close(c.expired)
		}
	}
	return c.expired
}

// OnExpire arranges for f to be called once when the stream expires (see
// Expired), in place of waiting on Expired: a callback costs a stream no
// channel and no waiting goroutine's select case. f is called on the
// Tracker's goroutine with the device's lock held, so it must not block
// nor call into the Tracker (closing a channel or a session is fine); if
// the Conn has already expired, f is called at once. Call it at most once
// per Conn.
func (c *Conn) OnExpire(f func()) {
	c.d.u.mu.Lock()
	defer c.d.u.mu.Unlock()
	if c.state == connExpired {
		f()
		return
	}
	c.onExpire = f
}

// LastActive returns when the stream was last heard from.
func (c *Conn) LastActive() time.Time { return c.t.wall(time.Duration(c.lastBeat.Load())) }

// Close ends the stream. clean must be true only when the client ended the
// stream itself (it half-closed: Recv returned io.EOF) or logged out: the
// device goes down at once if this was its last Conn. Otherwise (a network
// error, a cancel, a server-side end) the device stays up until Grace has
// passed since the stream was last heard from, unless it reconnects.
// Closing twice, or after Expired, does nothing.
func (c *Conn) Close(clean bool) {
	t := c.t
	u := c.d.u
	u.mu.Lock()
	defer u.mu.Unlock()
	if c.state != connOpen || c.d.gone {
		return
	}
	d := c.d
	if clean {
		c.state = connClosed
		d.removeConn(c)
		t.conns.Add(-1)
		d.noteActive(time.Now())
	} else {
		c.state = connLingering
	}
	t.reconcile(t.ctx, d)
}

// Logout takes deviceID of userID down on every server at once (Engine
// Remove), with last activity now, and forgets its Conns here: their Close
// does nothing afterwards (the caller still ends the streams). Errors:
// InvalidArgument, ErrClosed, or the Engine's error (the device then stays
// up on other servers until their streams end or expire).
func (t *Tracker) Logout(ctx context.Context, userID, deviceID string) error {
	if !validID(userID) {
		return errNoUser
	}
	if !validID(deviceID) {
		return errNoDevice
	}
	if t.closed.Load() {
		return ErrClosed
	}
	u := t.lockUser(userID, true)
	defer u.mu.Unlock()
	now := time.Now()
	if d := u.devices[deviceID]; d != nil {
		for _, c := range d.conns {
			c.state = connClosed
			t.conns.Add(-1)
		}
		clear(d.conns)
		d.conns = d.conns[:0]
		d.noteActive(now)
	}
	cctx, cancel := context.WithTimeout(ctx, t.timeout)
	_, err := t.eng.Remove(cctx, userID, deviceID, now)
	cancel()
	if d := u.devices[deviceID]; d != nil {
		if err == nil {
			d.up = false
		}
		t.reconcile(ctx, d) // removes it, or retries Down for this server
	}
	t.dropUserIfEmpty(u)
	return err
}

// SetHidden sets userID's hide_presence flag in the Engine (after the store
// has it). Errors: InvalidArgument, ErrClosed, the Engine's error.
func (t *Tracker) SetHidden(ctx context.Context, userID string, hidden bool) error {
	if !validID(userID) {
		return errNoUser
	}
	if t.closed.Load() {
		return ErrClosed
	}
	cctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	return t.eng.SetHidden(cctx, userID, hidden)
}

// Close stops every timer, then closes the Engine. Devices still up here
// are not taken down (see Engine.Close). Conn methods do nothing
// afterwards. Safe to call more than once.
func (t *Tracker) Close() error {
	if t.closed.Swap(true) {
		return nil
	}
	t.cancel()
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		users := make([]*userEntry, 0, len(s.users))
		for _, u := range s.users {
			users = append(users, u)
		}
		s.mu.Unlock()
		for _, u := range users {
			u.mu.Lock()
			for _, d := range u.devices {
				if d.timer != nil {
					d.timer.Stop()
				}
			}
			u.mu.Unlock()
		}
	}
	return t.eng.Close()
}

func (d *device) noteActive(at time.Time) {
	if at.After(d.lastActive) {
		d.lastActive = at
	}
}

func (d *device) removeConn(c *Conn) {
	for i, x := range d.conns {
		if x == c {
			last := len(d.conns) - 1
			d.conns[i] = d.conns[last]
			d.conns[last] = nil
			d.conns = d.conns[:last]
			return
		}
	}
}

// fire is the device timer's callback.
func (t *Tracker) fire(d *device) {
	u := d.u
	u.mu.Lock()
	defer u.mu.Unlock()
	d.timerAt = time.Time{}
	if d.gone || t.closed.Load() {
		return
	}
	t.reconcile(t.ctx, d)
}

// reconcile expires silent Conns, makes the Engine agree with the device's
// state (up iff it has a live Conn), forgets the device when it is down
// and empty, and arms its timer for the next deadline. d.u.mu is held.
func (t *Tracker) reconcile(ctx context.Context, d *device) {
	if t.closed.Load() {
		return
	}
	nowD := t.now()
	now := t.wall(nowD)
	var next time.Duration = -1
	kept := d.conns[:0]
	for _, c := range d.conns {
		lb := time.Duration(c.lastBeat.Load())
		if lb+t.grace <= nowD {
			if c.state == connOpen {
				c.state = connExpired
				if c.expired != nil {
					close(c.expired)
				}
				if c.onExpire != nil {
					c.onExpire()
					c.onExpire = nil
				}
			} else {
				c.state = connClosed
			}
			d.noteActive(t.wall(lb))
			t.conns.Add(-1)
			continue
		}
		kept = append(kept, c)
		if dl := lb + t.grace; next < 0 || dl < next {
			next = dl
		}
	}
	clear(d.conns[len(kept):])
	d.conns = kept

	want := len(d.conns) > 0
	if want != d.up && (d.retryAt.IsZero() || !now.Before(d.retryAt)) {
		var err error
		if want {
			err = t.up(ctx, d, now)
		} else {
			err = t.down(ctx, d)
		}
		if err != nil {
			d.failures++
			backoff := t.retry << min(d.failures-1, 16)
			if backoff > t.grace/2 {
				backoff = t.grace / 2
			}
			d.retryAt = now.Add(backoff)
			t.log.Warn("presence: engine call failed; will retry",
				"user_id", d.u.id, "device_id", d.id, "up", want, "retry_in", backoff, "err", err)
		} else {
			d.up, d.failures, d.retryAt = want, 0, time.Time{}
		}
	}
	if !want && !d.up {
		if d.timer != nil {
			d.timer.Stop()
		}
		d.gone = true
		delete(d.u.devices, d.id)
		t.devices.Add(-1)
		t.dropUserIfEmpty(d.u)
		return
	}
	if !d.retryAt.IsZero() {
		if r := d.retryAt.Sub(t.epoch); next < 0 || r < next {
			next = r
		}
	}
	if next < 0 {
		return
	}
	at := t.wall(next)
	if d.timer != nil && !d.timerAt.IsZero() && !d.timerAt.After(at) {
		return // armed early enough; it re-arms when it fires
	}
	wait := next - nowD
	if wait < time.Millisecond {
		wait = time.Millisecond
	}
	if d.timer == nil {
		d.timer = time.AfterFunc(wait, func() { t.fire(d) })
	} else {
		d.timer.Reset(wait)
	}
	d.timerAt = at
}

func (t *Tracker) up(ctx context.Context, d *device, now time.Time) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.timeout)
	defer cancel()
	hidden := false
	if t.hidden != nil {
		h, err := t.hidden(ctx, d.u.id)
		if err != nil {
			return err
		}
		hidden = h
	}
	_, err := t.eng.Up(ctx, d.u.id, d.id, now, hidden)
	return err
}

func (t *Tracker) down(ctx context.Context, d *device) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.timeout)
	defer cancel()
	last := d.lastActive
	if last.IsZero() {
		last = time.Now()
	}
	_, err := t.eng.Down(ctx, d.u.id, d.id, last)
	return err
}
