package app_test

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/internal/pushtest"
	"github.com/chatd/chatd/server/push"
	goredis "github.com/redis/go-redis/v9"
)

// clusterPushWindow is the collapse window of TestCluster_Push's servers.
const clusterPushWindow = 2 * time.Second

// TestCluster_Push runs the end-to-end push checks of issue 12 on two
// chatd servers (--store scylla on the real CQL server, one Redis, the
// push queue the cluster's Redis Stream read by both servers' consumers)
// against web-push-testing. The subtests share one cluster; each has its
// own users, so they see only their own pushes.
func TestCluster_Push(t *testing.T) {
	w := pushtest.StartWebPush(t)
	vapid := filepath.Join(t.TempDir(), "vapid.json") // shared by both servers, as the docs ask
	c := newCluster(t, nil, "--push-webpush-hosts", w.Host, "--push-collapse-window", clusterPushWindow.String(),
		"--vapid-key-file", vapid)
	c.env = map[string][]string{"s1": {"SSL_CERT_FILE=" + w.CertFile(t)}, "s2": {"SSL_CERT_FILE=" + w.CertFile(t)}}
	c.start("s1")
	c.start("s2")

	// Twenty messages in (about) one second to a device that is away:
	// every message is queued, and the burst becomes one push per server
	// consumer at most (docs/push.md, cluster mode: the entries are split
	// between the consumers that read them), each with the count 20 and
	// the channel's collapse key, so the device shows one line. Previews
	// are off by default: no text and no sender in any decrypted payload.
	t.Run("BurstCollapses", func(t *testing.T) {
		alice := signUpLogIn(t, c.cc("s1"), "burst-alice", "laptop")
		phone := signUpLogIn(t, c.cc("s2"), "burst-bob", "phone")
		sub := registerWebPush(t, phone, w)
		as := openStream(t, alice)
		enq := clusterMetric(t, c, "chatd_push_enqueued_total")
		sent := clusterMetric(t, c, `chatd_push_sent_total{provider="webpush"}`)
		t0 := time.Now()
		for i := range 20 {
			as.send("burst-bob", fmt.Sprintf("cburst-%d", i), fmt.Sprintf("burst text %d", i))
		}
		t.Logf("20 messages sent in %v (collapse window %v)", time.Since(t0).Round(time.Millisecond), clusterPushWindow)
		waitFor(t, func() bool { return len(payloads(t, w, sub)) >= 1 })
		time.Sleep(2 * clusterPushWindow) // a second consumer's push, or a late one, would come by now
		ch := dmChannel("burst-alice", "burst-bob")
		ps := payloads(t, w, sub)
		if len(ps) < 1 || len(ps) > len(c.servers) {
			var times []string
			for _, r := range requestsTo(w, sub) {
				times = append(times, r.Time.Sub(t0).Round(time.Millisecond).String())
			}
			t.Fatalf("%d pushes for a burst of 20, want 1 to %d (one per server consumer at most): %+v\nat %v after the first message\ns1:\n%s\ns2:\n%s",
				len(ps), len(c.servers), ps, times, pushMetrics(t, c.servers["s1"].http), pushMetrics(t, c.servers["s2"].http))
		}
		for _, p := range ps {
			if p.ChannelID != ch || p.Unread != 20 || p.Title != push.DefaultTitle {
				t.Fatalf("push %+v, want channel %s with 20 unread", p, ch)
			}
			if p.Body != "" || p.Sender != "" {
				t.Fatalf("push without previews carries text or sender: %+v", p)
			}
		}
		for _, s := range w.Notifications(t, sub) {
			if strings.Contains(s, "burst text") || strings.Contains(s, `"sender"`) || strings.Contains(s, `"body"`) {
				t.Fatalf("decrypted payload %q carries message content", s)
			}
		}
		reqs := requestsTo(w, sub)
		if len(reqs) != len(ps) {
			t.Fatalf("%d requests to the push service, %d pushes", len(reqs), len(ps))
		}
		for _, r := range reqs {
			if r.Header.Get("Topic") != push.CollapseKey(ch) || r.Status != 201 {
				t.Fatalf("push request status %d Topic %q, want 201 with the channel's collapse key %q", r.Status, r.Header.Get("Topic"), push.CollapseKey(ch))
			}
		}
		if d := clusterMetric(t, c, "chatd_push_enqueued_total") - enq; d != 20 {
			t.Fatalf("%v jobs queued for the burst, want 20", d)
		}
		if d := clusterMetric(t, c, `chatd_push_sent_total{provider="webpush"}`) - sent; d != float64(len(ps)) {
			t.Fatalf("sent metric grew by %v, want %d", d, len(ps))
		}
		t.Logf("%d push(es) for the burst", len(ps))
	})

	// A channel muted on one server gets no push from any server's
	// consumer; before the mute it did.
	t.Run("MutedChannelGetsNone", func(t *testing.T) {
		alice := signUpLogIn(t, c.cc("s2"), "mute-alice", "laptop")
		phone := signUpLogIn(t, c.cc("s1"), "mute-bob", "phone")
		laptop := logIn(t, c.cc("s2"), "mute-bob", "laptop")
		sub := registerWebPush(t, phone, w)
		as := openStream(t, alice)
		as.send("mute-bob", "cmute-0", "before the mute")
		waitFor(t, func() bool { return len(payloads(t, w, sub)) == 1 })
		ch := dmChannel("mute-alice", "mute-bob")
		if _, err := chatv1.NewChatServiceClient(laptop.cc).MuteChannel(laptop.ctx(context.Background()), &chatv1.MuteChannelRequest{ChannelId: ch}); err != nil {
			t.Fatalf("MuteChannel: %v", err)
		}
		muted := clusterMetric(t, c, `chatd_push_dropped_total{reason="muted"}`)
		as.send("mute-bob", "cmute-1", "muted")
		waitFor(t, func() bool { return clusterMetric(t, c, `chatd_push_dropped_total{reason="muted"}`) == muted+1 })
		if ps := payloads(t, w, sub); len(ps) != 1 {
			t.Fatalf("%d pushes, want only the one before the mute: %+v", len(ps), ps)
		}
	})

	// The push service answers 410 for bob's phone: its target is deleted
	// (seen from either server) and not tried again; his laptop's target
	// survives and keeps getting pushes.
	t.Run("GoneTargetDeleted", func(t *testing.T) {
		alice := signUpLogIn(t, c.cc("s1"), "gone-alice", "laptop")
		phone := signUpLogIn(t, c.cc("s2"), "gone-bob", "phone")
		laptop := logIn(t, c.cc("s1"), "gone-bob", "laptop")
		phoneSub := registerWebPush(t, phone, w)
		laptopSub := registerWebPush(t, laptop, w)
		w.Expire(t, phoneSub)
		removed := clusterMetric(t, c, `chatd_push_targets_removed_total{provider="webpush"}`)
		as := openStream(t, alice)
		as.send("gone-bob", "cgone-1", "to a phone that uninstalled")
		waitFor(t, func() bool {
			return clusterMetric(t, c, `chatd_push_targets_removed_total{provider="webpush"}`) == removed+1
		})
		for _, id := range []string{"s1", "s2"} {
			got, err := chatv1.NewAccountServiceClient(c.cc(id)).GetPushTarget(phone.ctx(context.Background()), &chatv1.GetPushTargetRequest{})
			if err != nil || got.GetTarget() != nil {
				t.Fatalf("phone's target seen from %s after 410: %v %v, want none", id, got, err)
			}
		}
		waitFor(t, func() bool { return len(payloads(t, w, laptopSub)) == 1 })
		tried := len(requestsTo(w, phoneSub))
		as.send("gone-bob", "cgone-2", "again")
		waitFor(t, func() bool { return len(payloads(t, w, laptopSub)) == 2 })
		time.Sleep(clusterPushWindow / 2)
		if n := len(requestsTo(w, phoneSub)); n != tried || tried != 1 {
			t.Fatalf("%d requests to the gone target (%d before the second message), want the single 410", n, tried)
		}
	})

	// The server whose consumer holds queued pushes (read from the stream,
	// still inside their collapse window) is SIGKILLed: the other server
	// does not send them (they are not its entries; it would claim them
	// only after redisqueue.DefaultClaimIdle), the killed server sends them
	// after its restart (it reads its pending entries first), each once.
	// Runs last: it restarts a server.
	t.Run("QueuedSurviveSIGKILL", func(t *testing.T) {
		alice := signUpLogIn(t, c.cc("s1"), "kill-alice", "laptop")
		bob := signUpLogIn(t, c.cc("s2"), "kill-bob", "phone")
		carol := signUpLogIn(t, c.cc("s1"), "kill-carol", "phone")
		subs := map[string]pushtest.Subscription{"kill-bob": registerWebPush(t, bob, w), "kill-carol": registerWebPush(t, carol, w)}
		enq := clusterMetric(t, c, "chatd_push_enqueued_total")
		as := openStream(t, alice)
		sentAt := time.Now() // the first job is due a window after this
		as.send("kill-bob", "ckill-1", "to bob")
		as.send("kill-carol", "ckill-2", "to carol")
		as.send("kill-bob", "ckill-3", "to bob again")
		waitFor(t, func() bool { return clusterMetric(t, c, "chatd_push_enqueued_total") == enq+3 })
		// Wait until consumers have read all three entries, then kill
		// the one holding bob's.
		r := goredis.NewClient(&goredis.Options{Addr: c.redis})
		defer r.Close()
		stream := "chatd:" + c.keyspace + ":push"
		var pending []goredis.XPendingExt
		waitFor(t, func() bool {
			var err error
			pending, err = r.XPendingExt(context.Background(), &goredis.XPendingExtArgs{Stream: stream, Group: "push", Start: "-", End: "+", Count: 100}).Result()
			if err != nil {
				t.Fatalf("XPENDING: %v", err)
			}
			return len(pending) == 3
		})
		entries, err := r.XRange(context.Background(), stream, "-", "+").Result()
		if err != nil {
			t.Fatalf("XRANGE: %v", err)
		}
		userOf := map[string]string{}
		for _, e := range entries {
			userOf[e.ID], _ = e.Values["u"].(string)
		}
		// holders[user] is the set of consumers holding the user's entries.
		holders := map[string]map[string]bool{"kill-bob": {}, "kill-carol": {}}
		for _, p := range pending {
			if holders[userOf[p.ID]] == nil {
				t.Fatalf("pending entry %s of %q", p.ID, userOf[p.ID])
			}
			holders[userOf[p.ID]][p.Consumer] = true
		}
		holder := slices.Sorted(maps.Keys(holders["kill-bob"]))[0]
		c.kill(holder)
		if since := time.Since(sentAt); since >= clusterPushWindow {
			t.Fatalf("the kill came %v after the messages, not inside the %v window: the test proves nothing", since, clusterPushWindow)
		}
		// Before the restart: only the entries of the live consumer were
		// sent (one push per user it held entries of).
		time.Sleep(time.Until(sentAt.Add(clusterPushWindow + time.Second)))
		for u, s := range subs {
			want := len(holders[u])
			if holders[u][holder] {
				want--
			}
			if n := len(payloads(t, w, s)); n != want {
				t.Fatalf("%s got %d push(es) while %s (holding entries of %v) was dead, want %d", u, n, holder, holders[u], want)
			}
		}
		c.start(holder)
		// After it: one push per consumer that held the user's entries,
		// none twice.
		pb := waitPushes(t, w, subs["kill-bob"], len(holders["kill-bob"]), 0)
		waitPushes(t, w, subs["kill-carol"], len(holders["kill-carol"]), clusterPushWindow)
		if pb[len(pb)-1].Unread != 2 {
			t.Fatalf("bob's push after the restart: %+v, want 2 unread", pb[len(pb)-1])
		}
		if p, err := r.XPending(context.Background(), stream, "push").Result(); err != nil || p.Count != 0 {
			t.Fatalf("entries still pending after the pushes: %+v %v", p, err)
		}
		t.Logf("killed %s; entries held by %v; sent after its restart", holder, holders)
	})
}

// clusterMetric sums a metric over the cluster's running servers.
func clusterMetric(t *testing.T, c *cluster, name string) float64 {
	t.Helper()
	var sum float64
	for _, p := range c.servers {
		sum += pushMetric(t, p.http, name)
	}
	return sum
}

// requestsTo returns the requests the push service saw for sub.
func requestsTo(w *pushtest.WebPush, sub pushtest.Subscription) []pushtest.Captured {
	var out []pushtest.Captured
	for _, r := range w.Requests() {
		if strings.HasSuffix(r.Path, sub.ClientHash) {
			out = append(out, r)
		}
	}
	return out
}
