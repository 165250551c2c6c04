package app_test

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestCluster_ChannelOrderCold: two users on two servers send the first
// messages of their two-member group at the same moment (the channel
// exists but has no allocator state yet). Each of their devices must still receive the
// channel's messages in message_id order: the inbox (sync log) order and
// the channel order agree.
func TestCluster_ChannelOrderCold(t *testing.T) {
	c := newCluster(t, []string{"s1", "s2"})
	const pairs = 10
	var names []string
	for i := range pairs {
		names = append(names, fmt.Sprintf("usera%d", i), fmt.Sprintf("userb%d", i))
	}
	setup := signUpAll(t, c.cc("s1"), names...)
	// Every inbox is initialised first (one group message), so only the
	// channels are new.
	group := createGroup(t, setup["usera0"], "warm", names[1:]...)
	l := newLedger()
	var as, bs []*device
	for i := range pairs {
		as = append(as, c.device(fmt.Sprintf("usera%d", i), "phone", "s1"))
		bs = append(bs, c.device(fmt.Sprintf("userb%d", i), "phone", "s2"))
	}
	warmUp(t, l, sender{as[0], "g", []target{group}})
	all := append(append([]*device{}, as...), bs...)
	awaitAll(t, l, time.Minute, all...)

	// Rounds of fresh channels {a_i, b_(i+r)}: both ends send at once.
	for r := range 8 {
		groups := make([]target, pairs)
		for i := range pairs {
			groups[i] = createGroup(t, setup[as[i].u.name], fmt.Sprintf("pair %d", r), bs[(i+r)%pairs].u.name)
		}
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range pairs {
			a, b := as[i], bs[(i+r)%pairs]
			for _, s := range []sender{
				{a, fmt.Sprintf("r%d", r), []target{groups[i]}},
				{b, fmt.Sprintf("r%d", r), []target{groups[i]}},
			} {
				wg.Go(func() {
					<-start
					if err := runSender(t, l, s.d, s.prefix, s.targets, 10, 0, 0, nil); err != nil {
						t.Error(err)
					}
				})
			}
		}
		close(start)
		wg.Wait()
	}
	awaitAll(t, l, time.Minute, all...)
}

// TestCase_C001_ClusterConcurrentRetry: the device's retry of a send
// reaches a second server while the first attempt is still in flight on
// another (the client gave up waiting and reconnected elsewhere). Still
// exactly one stored message, and both attempts answered with its
// message_id.
func TestCase_C001_ClusterConcurrentRetry(t *testing.T) {
	c := newCluster(t, []string{"s1", "s2"})
	setup := signUpAll(t, c.cc("s1"), "alice", "bob")
	u := logIn(t, c.cc("s1"), "alice", "phone")
	d1 := newDevice(t, c, u, "s1")
	d2 := newDevice(t, c, u, "s2") // the same device, a second stream on s2
	bob := c.device("bob", "phone", "s2")
	l := newLedger()
	tg := dm("bob", "alice")
	warmUp(t, l, sender{d1, "w", []target{tg}})
	const n = 20
	for i := range n {
		cmid := fmt.Sprintf("race-%d", i)
		var wg sync.WaitGroup
		acks := make([]uint64, 2)
		for j, d := range []*device{d1, d2} {
			wg.Go(func() {
				ack, err := d.send(tg, cmid, "raced")
				if err != nil {
					t.Errorf("%s: %v", cmid, err)
					return
				}
				acks[j] = ack.GetMessageId()
				l.record(t, "alice", tg, cmid, "raced", ack)
			})
		}
		wg.Wait()
		if acks[0] != acks[1] {
			t.Errorf("%s: answered with message %d on s1 and %d on s2", cmid, acks[0], acks[1])
		}
	}
	awaitAll(t, l, time.Minute, bob)
	if msgs := history(t, setup["bob"], dmChannel("alice", "bob")); len(msgs) != n+1 {
		t.Errorf("history holds %d messages, want %d", len(msgs), n+1)
	}
}
