// Package presencetest is the conformance suite of presence.Engine
// implementations, run through presence.Tracker (the way servers use
// them).
//
// A Factory builds n engines ("servers") sharing one fresh backend.
// RunSingle needs n = 1 only (every implementation, presence/local
// included, must pass it); RunMulti needs n = 2 (engines shared between
// servers, e.g. presence/redis; a killed server's devices must be taken
// down by the other within a few seconds). Run runs both.
//
// The suite uses real time with a short grace period (Grace, 300 ms).
// Expected reports are awaited (up to 10 s); the absence of a report (no
// offline/online pair) is checked on the complete sequence of status
// transitions a watcher saw once a later, expected report has arrived.
package presencetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/chatd/chatd/server/presence"
)

// Factory returns n engines sharing one fresh backend; engine i is server
// i. The suite closes each engine (through its Tracker) exactly once; the
// factory cleans the backend up with t.Cleanup.
type Factory func(t *testing.T, n int) []presence.Engine

// Timing of the trackers the suite builds.
const (
	Interval = 50 * time.Millisecond
	Grace    = 300 * time.Millisecond
)

// waitTimeout bounds every wait for an expected report.
const waitTimeout = 10 * time.Second

// Run runs RunSingle and RunMulti.
func Run(t *testing.T, f Factory) {
	t.Run("Single", func(t *testing.T) { RunSingle(t, f) })
	t.Run("Multi", func(t *testing.T) { RunMulti(t, f) })
}

// RunSingle runs the cases that need one server.
func RunSingle(t *testing.T, f Factory) {
	t.Run("OnlineOnConnect", func(t *testing.T) { testOnline(t, f) })
	t.Run("SecondDeviceKeepsOnline", func(t *testing.T) { testSecondDevice(t, f) })
	t.Run("TwoStreamsOneDevice", func(t *testing.T) { testTwoStreams(t, f) })
	t.Run("CleanCloseOfflineAtOnce", func(t *testing.T) { testCleanClose(t, f) })
	t.Run("SilentDeviceOfflineAfterGrace", func(t *testing.T) { TestSilentDevice(t, f) })
	t.Run("UncleanCloseOfflineAfterGrace", func(t *testing.T) { testUncleanClose(t, f) })
	t.Run("ReconnectWithinGraceNoFlap", func(t *testing.T) { testReconnect(t, f) })
	t.Run("HeartbeatExtends", func(t *testing.T) { testHeartbeatExtends(t, f) })
	t.Run("Logout", func(t *testing.T) { testLogout(t, f) })
	t.Run("Hidden", func(t *testing.T) { testHidden(t, f) })
	t.Run("Unsubscribe", func(t *testing.T) { testUnsubscribe(t, f) })
	t.Run("ManyUsersConcurrently", func(t *testing.T) { testMany(t, f) })
	t.Run("UnknownUser", func(t *testing.T) { testUnknown(t, f) })
	t.Run("Closed", func(t *testing.T) { testClosed(t, f) })
}

// RunMulti runs the cases that need two servers sharing a backend.
func RunMulti(t *testing.T, f Factory) {
	t.Run("CrossServer", func(t *testing.T) { testCrossServer(t, f) })
	t.Run("DevicesOnTwoServers", func(t *testing.T) { testTwoServers(t, f) })
	t.Run("MoveServerWithinGrace", func(t *testing.T) { testMoveServer(t, f) })
	t.Run("LogoutFromOtherServer", func(t *testing.T) { testLogoutElsewhere(t, f) })
	t.Run("HiddenAcrossServers", func(t *testing.T) { testHiddenAcross(t, f) })
	t.Run("KilledServer", func(t *testing.T) { TestKilledServer(t, f) })
}

// ------------------------------------------------------------------ harness

// Hidden is a HiddenFunc backed by a set the test controls.
type Hidden struct {
	mu  sync.Mutex
	set map[string]bool
}

// Set marks user as hidden or not.
func (h *Hidden) Set(user string, hidden bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.set == nil {
		h.set = make(map[string]bool)
	}
	h.set[user] = hidden
}

// Func returns the HiddenFunc.
func (h *Hidden) Func() presence.HiddenFunc { return h.get }

func (h *Hidden) get(_ context.Context, user string) (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.set[user], nil
}

// Server is one engine with its tracker.
type Server struct {
	T      *presence.Tracker
	E      presence.Engine
	Hidden *Hidden
	once   sync.Once
}

// Close closes the tracker (and the engine) once.
func (s *Server) Close() {
	s.once.Do(func() { _ = s.T.Close() })
}

// Servers builds n servers from f, with trackers using Interval and
// Grace, closed at the end of the test.
func Servers(t *testing.T, f Factory, n int) []*Server {
	t.Helper()
	engines := f(t, n)
	if len(engines) != n {
		t.Fatalf("factory returned %d engines, want %d", len(engines), n)
	}
	out := make([]*Server, n)
	for i, e := range engines {
		h := &Hidden{}
		tr, err := presence.NewTracker(presence.TrackerConfig{
			Engine: e, Hidden: h.Func(), HeartbeatInterval: Interval, Grace: Grace,
			RetryInterval: 20 * time.Millisecond,
		})
		if err != nil {
			t.Fatalf("NewTracker: %v", err)
		}
		s := &Server{T: tr, E: e, Hidden: h}
		out[i] = s
		t.Cleanup(s.Close)
	}
	return out
}

// Watcher records the reports of subscribed users, dropping stale ones
// (Version not above the last accepted), and the transitions of their
// visible status.
type Watcher struct {
	mu     sync.Mutex
	last   map[string]presence.Presence
	trans  map[string][]bool // visible online after each visible change
	notify chan struct{}
}

// NewWatcher returns an empty Watcher.
func NewWatcher() *Watcher {
	return &Watcher{last: map[string]presence.Presence{}, trans: map[string][]bool{}, notify: make(chan struct{}, 1)}
}

// Fn is the function to give Engine.Subscribe.
func (w *Watcher) Fn(p presence.Presence) {
	w.mu.Lock()
	prev, seen := w.last[p.UserID]
	if seen && p.Version <= prev.Version {
		w.mu.Unlock()
		return
	}
	w.last[p.UserID] = p
	was, _ := prev.Visible()
	now, _ := p.Visible()
	if was != now {
		w.trans[p.UserID] = append(w.trans[p.UserID], now)
	}
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// Seed records p as known (a Get result), like a service does before
// applying reports.
func (w *Watcher) Seed(p presence.Presence) { w.Fn(p) }

// Last returns the last accepted report of user.
func (w *Watcher) Last(user string) (presence.Presence, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p, ok := w.last[user]
	return p, ok
}

// Transitions returns the visible status after each visible change of
// user (true = online).
func (w *Watcher) Transitions(user string) []bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.trans[user])
}

// Wait waits until cond holds for user's last report; it fails the test
// after waitTimeout.
func (w *Watcher) Wait(t *testing.T, user, what string, cond func(presence.Presence) bool) presence.Presence {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		if p, ok := w.Last(user); ok && cond(p) {
			return p
		}
		select {
		case <-w.notify:
		case <-time.After(20 * time.Millisecond):
		case <-deadline.C:
			p, _ := w.Last(user)
			t.Fatalf("%s: no report of %s within %s; last %+v, transitions %v", what, user, waitTimeout, p, w.Transitions(user))
		}
	}
}

func online(p presence.Presence) bool  { v, _ := p.Visible(); return v }
func offline(p presence.Presence) bool { v, _ := p.Visible(); return !v }

// Watch subscribes a new Watcher on s to users (unsubscribed at the end of
// the test) and seeds it with a Get.
func Watch(t *testing.T, s *Server, users ...string) *Watcher {
	t.Helper()
	w := NewWatcher()
	cancel, err := s.E.Subscribe(context.Background(), users, w.Fn)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	t.Cleanup(cancel)
	ps, err := s.E.Get(context.Background(), users)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	for _, p := range ps {
		w.Seed(p)
	}
	return w
}

// Get returns one user's presence from s.
func Get(t *testing.T, s *Server, user string) presence.Presence {
	t.Helper()
	ps, err := s.E.Get(context.Background(), []string{user})
	if err != nil {
		t.Fatalf("Get(%s): %v", user, err)
	}
	if len(ps) != 1 || ps[0].UserID != user {
		t.Fatalf("Get(%s) = %+v", user, ps)
	}
	return ps[0]
}

// Connect opens a stream of user/device on s.
func Connect(t *testing.T, s *Server, user, device string) *presence.Conn {
	t.Helper()
	c, err := s.T.Connect(context.Background(), user, device)
	if err != nil {
		t.Fatalf("Connect(%s, %s): %v", user, device, err)
	}
	return c
}

// Beating sends heartbeats on c every Interval until the returned stop is
// called.
func Beating(c *presence.Conn) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(Interval)
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case <-tk.C:
				c.Beat()
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

func wantTransitions(t *testing.T, w *Watcher, user string, want ...bool) {
	t.Helper()
	if got := w.Transitions(user); !slices.Equal(got, want) {
		t.Fatalf("transitions of %s = %v, want %v (false = offline)", user, got, want)
	}
}

func ms(t time.Time) int64 { return t.UnixMilli() }

// ------------------------------------------------------------------ single

func testOnline(t *testing.T, f Factory) {
	s := Servers(t, f, 1)[0]
	w := Watch(t, s, "alice")
	if p := Get(t, s, "alice"); p.Online || !p.LastActiveAt.IsZero() {
		t.Fatalf("before connect: %+v", p)
	}
	before := time.Now()
	c := Connect(t, s, "alice", "phone")
	after := time.Now()
	p := w.Wait(t, "alice", "online on connect", online)
	if ms(p.LastActiveAt) < ms(before) || ms(p.LastActiveAt) > ms(after) {
		t.Fatalf("last_active_at %v not within connect [%v, %v]", p.LastActiveAt, before, after)
	}
	if g := Get(t, s, "alice"); !g.Online || g.Hidden || g.Version == 0 || g.Version != p.Version {
		t.Fatalf("Get after connect = %+v, report %+v", g, p)
	}
	c.Close(true)
	w.Wait(t, "alice", "offline", offline)
	wantTransitions(t, w, "alice", true, false)
}

func testSecondDevice(t *testing.T, f Factory) {
	s := Servers(t, f, 1)[0]
	w := Watch(t, s, "alice")
	phone := Connect(t, s, "alice", "phone")
	laptop := Connect(t, s, "alice", "laptop")
	w.Wait(t, "alice", "online", online)
	phone.Close(true)
	if p := Get(t, s, "alice"); !p.Online {
		t.Fatalf("offline after closing one of two devices: %+v", p)
	}
	before := time.Now()
	laptop.Close(true)
	if p := Get(t, s, "alice"); p.Online || ms(p.LastActiveAt) < ms(before) {
		t.Fatalf("after closing both devices: %+v (closed at %v)", p, before)
	}
	w.Wait(t, "alice", "offline", offline)
	wantTransitions(t, w, "alice", true, false)
}

func testTwoStreams(t *testing.T, f Factory) {
	s := Servers(t, f, 1)[0]
	w := Watch(t, s, "alice")
	a := Connect(t, s, "alice", "phone")
	b := Connect(t, s, "alice", "phone") // the same device, a second stream
	w.Wait(t, "alice", "online", online)
	a.Close(true)
	if p := Get(t, s, "alice"); !p.Online {
		t.Fatalf("offline while a second stream of the device is open: %+v", p)
	}
	b.Close(true)
	w.Wait(t, "alice", "offline", offline)
	wantTransitions(t, w, "alice", true, false)
	if d, c := s.T.Stats(); d != 0 || c != 0 {
		t.Fatalf("tracker holds %d devices, %d conns after all closed", d, c)
	}
}

func testCleanClose(t *testing.T, f Factory) {
	s := Servers(t, f, 1)[0]
	c := Connect(t, s, "alice", "phone")
	time.Sleep(5 * time.Millisecond)
	c.Beat()
	c.Close(true)
	// Offline as soon as Close returns, not after the grace period.
	p := Get(t, s, "alice")
	if p.Online {
		t.Fatalf("online right after a clean close: %+v", p)
	}
	if ms(p.LastActiveAt) < ms(c.LastActive()) {
		t.Fatalf("last_active_at %v before the last beat %v", p.LastActiveAt, c.LastActive())
	}
	select {
	case <-c.Expired():
		t.Fatal("a cleanly closed stream reports Expired")
	default:
	}
	c.Close(true) // twice: no effect
	c.Beat()      // after close: no effect
	if p2 := Get(t, s, "alice"); p2.Online || p2.Version != p.Version {
		t.Fatalf("closing twice changed the record: %+v -> %+v", p, p2)
	}
}

// TestSilentDevice is C201 at the engine level: a device that stops sending
// heartbeats without closing its stream goes offline within the grace
// period, with last_active_at = its last heartbeat, and its stream is told
// to end (Expired) so that the server frees it.
func TestSilentDevice(t *testing.T, f Factory) {
	s := Servers(t, f, 1)[0]
	w := Watch(t, s, "alice")
	c := Connect(t, s, "alice", "phone")
	w.Wait(t, "alice", "online", online)
	for range 3 {
		time.Sleep(Interval)
		c.Beat()
	}
	lastBeat := c.LastActive()
	// Nothing more: no beat, no close (a frozen client, a cut network).
	select {
	case <-c.Expired():
	case <-time.After(waitTimeout):
		t.Fatalf("silent stream not expired within %s (grace %s)", waitTimeout, Grace)
	}
	if since := time.Since(lastBeat); since < Grace {
		t.Fatalf("expired %s after the last beat, before the grace period %s", since, Grace)
	}
	p := w.Wait(t, "alice", "offline after grace", offline)
	if ms(p.LastActiveAt) != ms(lastBeat) {
		t.Fatalf("last_active_at = %v, want the last heartbeat %v", p.LastActiveAt, lastBeat)
	}
	wantTransitions(t, w, "alice", true, false)
	// The stream's late Close changes nothing; the tracker holds nothing.
	c.Close(false)
	if d, n := s.T.Stats(); d != 0 || n != 0 {
		t.Fatalf("tracker holds %d devices, %d conns after expiry", d, n)
	}
}

func testUncleanClose(t *testing.T, f Factory) {
	s := Servers(t, f, 1)[0]
	w := Watch(t, s, "alice")
	c := Connect(t, s, "alice", "phone")
	w.Wait(t, "alice", "online", online)
	c.Beat()
	lastBeat := c.LastActive()
	c.Close(false) // network error: the device may come back
	if p := Get(t, s, "alice"); !p.Online {
		t.Fatalf("offline right after an unclean close (grace %s): %+v", Grace, p)
	}
	p := w.Wait(t, "alice", "offline after grace", offline)
	if ms(p.LastActiveAt) != ms(lastBeat) {
		t.Fatalf("last_active_at = %v, want the last heartbeat %v", p.LastActiveAt, lastBeat)
	}
	wantTransitions(t, w, "alice", true, false)
}

func testReconnect(t *testing.T, f Factory) {
	s := Servers(t, f, 1)[0]
	w := Watch(t, s, "alice")
	c1 := Connect(t, s, "alice", "phone")
	w.Wait(t, "alice", "online", online)
	// Flapping: the network drops twice; each time the device reconnects
	// within the grace period.
	c1.Close(false)
	time.Sleep(Grace / 3)
	c2 := Connect(t, s, "alice", "phone")
	c2.Close(false)
	time.Sleep(Grace / 3)
	c3 := Connect(t, s, "alice", "phone")
	stop := Beating(c3)
	time.Sleep(2 * Grace) // well past the grace of c1 and c2
	stop()
	if p := Get(t, s, "alice"); !p.Online {
		t.Fatalf("offline while reconnected and beating: %+v", p)
	}
	c3.Close(true)
	w.Wait(t, "alice", "offline", offline)
	wantTransitions(t, w, "alice", true, false)
}

func testHeartbeatExtends(t *testing.T, f Factory) {
	s := Servers(t, f, 1)[0]
	w := Watch(t, s, "alice")
	c := Connect(t, s, "alice", "phone")
	stop := Beating(c)
	time.Sleep(4 * Grace)
	stop()
	select {
	case <-c.Expired():
		t.Fatalf("a beating stream expired")
	default:
	}
	if p := Get(t, s, "alice"); !p.Online {
		t.Fatalf("offline while beating: %+v", p)
	}
	c.Close(true)
	w.Wait(t, "alice", "offline", offline)
	wantTransitions(t, w, "alice", true, false)
}

func testLogout(t *testing.T, f Factory) {
	s := Servers(t, f, 1)[0]
	w := Watch(t, s, "alice")
	a := Connect(t, s, "alice", "phone")
	b := Connect(t, s, "alice", "phone")
	w.Wait(t, "alice", "online", online)
	before := time.Now()
	if err := s.T.Logout(context.Background(), "alice", "phone"); err != nil {
		t.Fatalf("Logout: %v", err)
	}
	p := Get(t, s, "alice")
	if p.Online || ms(p.LastActiveAt) < ms(before) {
		t.Fatalf("after logout: %+v", p)
	}
	a.Close(false)
	b.Close(true)
	w.Wait(t, "alice", "offline", offline)
	// A new log-in comes online again: Logout left nothing behind.
	c := Connect(t, s, "alice", "phone2")
	w.Wait(t, "alice", "online again", online)
	c.Close(true)
	w.Wait(t, "alice", "offline again", offline)
	wantTransitions(t, w, "alice", true, false, true, false)
	if d, n := s.T.Stats(); d != 0 || n != 0 {
		t.Fatalf("tracker holds %d devices, %d conns", d, n)
	}
}

func testHidden(t *testing.T, f Factory) {
	s := Servers(t, f, 1)[0]
	s.Hidden.Set("zoe", true)
	w := Watch(t, s, "zoe", "bob")
	c := Connect(t, s, "zoe", "phone")
	p := Get(t, s, "zoe")
	if !p.Online || !p.Hidden {
		t.Fatalf("hidden user's record: %+v", p)
	}
	if on, last := p.Visible(); on || !last.IsZero() {
		t.Fatalf("hidden user visible as online=%v last=%v", on, last)
	}
	// Unhide: watchers see her online; hide again: offline.
	if err := s.T.SetHidden(context.Background(), "zoe", false); err != nil {
		t.Fatalf("SetHidden(false): %v", err)
	}
	w.Wait(t, "zoe", "unhidden", func(p presence.Presence) bool { return !p.Hidden && p.Online })
	if err := s.T.SetHidden(context.Background(), "zoe", true); err != nil {
		t.Fatalf("SetHidden(true): %v", err)
	}
	w.Wait(t, "zoe", "hidden", func(p presence.Presence) bool { return p.Hidden })
	c.Close(true)
	// A marker: bob's change arrives after zoe's close was published (or
	// suppressed).
	b := Connect(t, s, "bob", "phone")
	w.Wait(t, "bob", "marker", online)
	b.Close(true)
	wantTransitions(t, w, "zoe", true, false)
	if p := Get(t, s, "zoe"); p.Online || !p.Hidden {
		t.Fatalf("hidden user after close: %+v", p)
	}
	// The flag is sticky: a later Up seeded "not hidden" does not unhide.
	s.Hidden.Set("zoe", false)
	c = Connect(t, s, "zoe", "phone")
	if p := Get(t, s, "zoe"); !p.Hidden {
		t.Fatalf("Up unhid a user hidden by SetHidden: %+v", p)
	}
	c.Close(true)
}

func testUnsubscribe(t *testing.T, f Factory) {
	s := Servers(t, f, 1)[0]
	w1, w2 := NewWatcher(), NewWatcher()
	cancel1, err := s.E.Subscribe(context.Background(), []string{"alice"}, w1.Fn)
	if err != nil {
		t.Fatal(err)
	}
	cancel2, err := s.E.Subscribe(context.Background(), []string{"alice"}, w2.Fn)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel2()
	c := Connect(t, s, "alice", "phone")
	w1.Wait(t, "alice", "online (w1)", online)
	w2.Wait(t, "alice", "online (w2)", online)
	cancel1()
	cancel1() // twice: no effect
	c.Close(true)
	w2.Wait(t, "alice", "offline (w2)", offline)
	if p, _ := w1.Last("alice"); !p.Online {
		t.Fatalf("a canceled subscription got %+v", p)
	}
}

func testMany(t *testing.T, f Factory) {
	s := Servers(t, f, 1)[0]
	const users = 40
	names := make([]string, users)
	for i := range names {
		names[i] = fmt.Sprintf("user%02d", i)
	}
	w := Watch(t, s, names...)
	var wg sync.WaitGroup
	for _, u := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 3 {
				a, err := s.T.Connect(context.Background(), u, "phone")
				if err != nil {
					t.Error(err)
					return
				}
				b, err := s.T.Connect(context.Background(), u, "laptop")
				if err != nil {
					t.Error(err)
					return
				}
				a.Beat()
				a.Close(round%2 == 0)
				b.Close(true)
				if round%2 == 1 {
					_ = s.T.Logout(context.Background(), u, "phone")
				}
			}
			a, err := s.T.Connect(context.Background(), u, "phone")
			if err != nil {
				t.Error(err)
				return
			}
			a.Close(true)
		}()
	}
	wg.Wait()
	for _, u := range names {
		w.Wait(t, u, "offline at the end", offline)
		if p := Get(t, s, u); p.Online {
			t.Fatalf("%s online at the end: %+v", u, p)
		}
	}
	deadline := time.Now().Add(waitTimeout)
	for {
		d, n := s.T.Stats()
		if d == 0 && n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tracker still holds %d devices, %d conns", d, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testUnknown(t *testing.T, f Factory) {
	s := Servers(t, f, 1)[0]
	ps, err := s.E.Get(context.Background(), []string{"nobody", "alice", "nobody"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 3 || ps[0].UserID != "nobody" || ps[1].UserID != "alice" || ps[2].UserID != "nobody" {
		t.Fatalf("Get order/ids: %+v", ps)
	}
	for _, p := range ps {
		if p.Online || !p.LastActiveAt.IsZero() || p.Hidden {
			t.Fatalf("unknown user: %+v", p)
		}
	}
	if ps, err := s.E.Get(context.Background(), nil); err != nil || len(ps) != 0 {
		t.Fatalf("Get(nil) = %v, %v", ps, err)
	}
	// Down of a device that is not up changes nothing.
	if changed, err := s.E.Down(context.Background(), "nobody", "x", time.Now()); err != nil || changed {
		t.Fatalf("Down(unknown) = %v, %v", changed, err)
	}
	if _, err := s.T.Connect(context.Background(), "", "x"); err == nil {
		t.Fatal("Connect with an empty user id succeeded")
	}
	if _, err := s.T.Connect(context.Background(), "alice", ""); err == nil {
		t.Fatal("Connect with an empty device id succeeded")
	}
}

func testClosed(t *testing.T, f Factory) {
	s := Servers(t, f, 1)[0]
	w := NewWatcher()
	if _, err := s.E.Subscribe(context.Background(), []string{"alice"}, w.Fn); err != nil {
		t.Fatal(err)
	}
	c := Connect(t, s, "alice", "phone")
	w.Wait(t, "alice", "online", online)
	s.Close()
	c.Beat()
	c.Close(true) // after Close: nothing, no panic
	if _, err := s.T.Connect(context.Background(), "alice", "phone"); err == nil {
		t.Fatal("Connect after Close succeeded")
	}
	if _, err := s.E.Get(context.Background(), []string{"alice"}); err == nil {
		t.Fatal("Get after Close succeeded")
	}
	if p, _ := w.Last("alice"); !p.Online {
		t.Fatalf("report after Close: %+v", p)
	}
}

// ------------------------------------------------------------------ multi

func testCrossServer(t *testing.T, f Factory) {
	ss := Servers(t, f, 2)
	a, b := ss[0], ss[1]
	w := Watch(t, b, "alice")
	c := Connect(t, a, "alice", "phone")
	p := w.Wait(t, "alice", "online on the other server", online)
	if g := Get(t, b, "alice"); !g.Online || g.Version != p.Version {
		t.Fatalf("Get on B = %+v, report %+v", g, p)
	}
	c.Close(true)
	w.Wait(t, "alice", "offline on the other server", offline)
	wantTransitions(t, w, "alice", true, false)
}

func testTwoServers(t *testing.T, f Factory) {
	ss := Servers(t, f, 2)
	a, b := ss[0], ss[1]
	w := Watch(t, a, "alice")
	phone := Connect(t, a, "alice", "phone")
	laptop := Connect(t, b, "alice", "laptop")
	w.Wait(t, "alice", "online", online)
	phone.Close(true)
	if p := Get(t, a, "alice"); !p.Online {
		t.Fatalf("offline while the laptop is connected to B: %+v", p)
	}
	laptop.Close(true)
	w.Wait(t, "alice", "offline", offline)
	wantTransitions(t, w, "alice", true, false)
}

func testMoveServer(t *testing.T, f Factory) {
	ss := Servers(t, f, 2)
	a, b := ss[0], ss[1]
	w := Watch(t, b, "alice")
	c1 := Connect(t, a, "alice", "phone")
	w.Wait(t, "alice", "online", online)
	c1.Close(false) // the network dropped; the phone comes back on B
	c2 := Connect(t, b, "alice", "phone")
	stop := Beating(c2)
	time.Sleep(2 * Grace) // A's lingering device expires meanwhile
	stop()
	if d, _ := a.T.Stats(); d != 0 {
		t.Fatalf("server A still holds %d devices after the grace period", d)
	}
	if p := Get(t, a, "alice"); !p.Online {
		t.Fatalf("offline while connected to B: %+v", p)
	}
	c2.Close(true)
	w.Wait(t, "alice", "offline", offline)
	wantTransitions(t, w, "alice", true, false)
}

func testLogoutElsewhere(t *testing.T, f Factory) {
	ss := Servers(t, f, 2)
	a, b := ss[0], ss[1]
	w := Watch(t, a, "alice")
	c := Connect(t, a, "alice", "phone")
	w.Wait(t, "alice", "online", online)
	if err := b.T.Logout(context.Background(), "alice", "phone"); err != nil {
		t.Fatalf("Logout on B: %v", err)
	}
	if p := Get(t, b, "alice"); p.Online {
		t.Fatalf("online after logout on the other server: %+v", p)
	}
	w.Wait(t, "alice", "offline", offline)
	c.Close(true) // the stream on A ends afterwards: no second change
	c2 := Connect(t, a, "alice", "laptop")
	w.Wait(t, "alice", "online (marker)", online)
	c2.Close(true)
	w.Wait(t, "alice", "offline (marker)", offline)
	wantTransitions(t, w, "alice", true, false, true, false)
}

func testHiddenAcross(t *testing.T, f Factory) {
	ss := Servers(t, f, 2)
	a, b := ss[0], ss[1]
	w := Watch(t, a, "alice")
	c := Connect(t, a, "alice", "phone")
	w.Wait(t, "alice", "online", online)
	if err := b.T.SetHidden(context.Background(), "alice", true); err != nil {
		t.Fatal(err)
	}
	w.Wait(t, "alice", "hidden", func(p presence.Presence) bool { return p.Hidden })
	if err := b.T.SetHidden(context.Background(), "alice", false); err != nil {
		t.Fatal(err)
	}
	w.Wait(t, "alice", "visible", func(p presence.Presence) bool { return !p.Hidden && p.Online })
	c.Close(true)
	w.Wait(t, "alice", "offline", offline)
	wantTransitions(t, w, "alice", true, false, true, false)
}

// TestKilledServer is C202 at the engine level: alice is connected to
// server A; A dies without a word (its tracker and engine stop: no Down, no
// lease renewal, like SIGKILL). A watcher on server B sees her go offline
// (within the grace period plus the engine's lease time), with a last
// active time; a device of hers on B is not affected.
func TestKilledServer(t *testing.T, f Factory) {
	ss := Servers(t, f, 2)
	a, b := ss[0], ss[1]
	w := Watch(t, b, "alice", "carol")
	alice := Connect(t, a, "alice", "phone")
	carolA := Connect(t, a, "carol", "phone")
	carolB := Connect(t, b, "carol", "laptop")
	stop := Beating(carolB)
	defer stop()
	_ = carolA
	w.Wait(t, "alice", "online", online)
	w.Wait(t, "carol", "online", online)
	alice.Beat()
	killed := time.Now()
	a.Close()
	p := w.Wait(t, "alice", "offline after server A died", offline)
	if p.LastActiveAt.IsZero() || p.LastActiveAt.After(time.Now()) {
		t.Fatalf("last_active_at after the kill: %+v", p)
	}
	t.Logf("alice offline on B %s after A was killed", time.Since(killed).Round(time.Millisecond))
	if g := Get(t, b, "carol"); !g.Online {
		t.Fatalf("carol, still connected to B, went offline with A: %+v", g)
	}
	wantTransitions(t, w, "alice", true, false)
	wantTransitions(t, w, "carol", true)
}
