package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/chatd/chatd/client"
	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The commands that read the Chat stream (sync, listen) or the presence
// stream (watch).

func (e *env) printDelivery(d *chatv1.Delivery) {
	e.printf("%s\n", formatMessage(d.GetMessage()))
}

func (e *env) syncCmd() *cobra.Command {
	var limit *int
	cmd := e.command("sync [--limit N]", "print every message since this device's cursor, then ack them", exactly(),
		func(ctx context.Context, c *client.Client, _ []string) error {
			s, err := e.connect(ctx, c)
			if err != nil {
				return err
			}
			defer s.Close()
			start := s.Welcome().GetCursor()
			last, err := s.SyncAll(ctx, int32(*limit), func(d *chatv1.Delivery) error { return show(e, d, e.printDelivery) })
			if err != nil {
				return err
			}
			if last > start {
				uctx, cancel := e.unary(ctx)
				defer cancel()
				if _, err := s.Ack(uctx, last); err != nil {
					return err
				}
			}
			return nil
		})
	cmd.Long = `Prints one line per message in inbox order (time, channel, sender, text),
then advances this device's cursor past them, so the next sync prints only
newer messages. With --json each line is a Delivery object.`
	limit = syncLimitFlag(cmd)
	return cmd
}

func syncLimitFlag(cmd *cobra.Command) *int {
	return limitFlag(cmd, 1000, "sync page size `N`, 1..1000 (default: the server's, 100)")
}

func (e *env) listenCmd() *cobra.Command {
	var limit *int
	cmd := e.command("listen [--limit N]", "sync, then print live messages and typing events until interrupted", exactly(),
		func(ctx context.Context, c *client.Client, _ []string) error {
			ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
			defer stop()
			return e.listen(ctx, c, int32(*limit))
		})
	cmd.Long = `Like sync, then keeps the Chat stream open and prints each new message as it
arrives (and "... is typing", receipt and read-state events), acking as it
goes, until SIGINT or SIGTERM. It survives servers going away (the Go
SDK's client.Resilient): when its server drains (a rolling restart) it
moves to the server named in the drain frame, and when the server dies or
shuts down (Unavailable) or drops the stream because the client was too
slow (ResourceExhausted) it reconnects to the servers Discovery recommends,
with jittered exponential backoff (0.5s to 30s), resumes after the last
message printed and says so on stderr. Exits without reconnecting when
the same device opened a newer stream (another listen with the same
--config-dir: the server closes the oldest), when the token expired or the
device was logged out (Unauthenticated). With --json each line is a
ServerFrame object holding "delivery", "typing", "receipt" or "unread".`
	limit = syncLimitFlag(cmd)
	return cmd
}

// errEvicted ends listen when the server closed its stream because the
// same device opened a newer one.
var errEvicted = status.Error(codes.ResourceExhausted,
	"stopped without reconnecting: this device opened a newer stream (another \"chatctl listen\" with the same --config-dir, "+
		"or another client logged in as this device) and the server closed this one, the oldest; "+
		"run one listener per device, or log in again in another --config-dir for a device of its own")

// Backoff of the reconnections of listen and watch: jittered, exponential,
// capped.
const (
	minBackoff = 500 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// listen runs the device's stream on a client.Resilient until ctx ends:
// it syncs, prints what arrives and acks it, and the Resilient reconnects
// (Discovery, drains, lost servers, backoff) and resumes by itself. It
// reports each reconnection on stderr.
func (e *env) listen(ctx context.Context, c *client.Client, limit int32) error {
	res, err := client.OpenResilient(client.ResilientConfig{
		Servers:    []string{e.serverAddr()},
		Token:      c.Token(),
		Username:   e.creds.Username,
		SyncLimit:  limit,
		MinBackoff: minBackoff,
		MaxBackoff: maxBackoff,
	})
	if err != nil {
		return err
	}
	defer res.Close()
	connected := 0
	events, typing := res.Events(), res.TypingEvents()
	receipts, unread := res.Receipts(), res.UnreadEvents()
	for {
		select {
		case d, ok := <-res.Deliveries():
			if !ok {
				<-res.Done()
				if client.IsEvicted(res.Err()) {
					return errEvicted
				}
				return res.Err()
			}
			if err := e.frame(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Delivery{Delivery: d}}, func() { e.printDelivery(d) }); err != nil {
				return err
			}
			res.AckAsync(d.GetInboxSeq())
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			switch ev.State {
			case client.StateConnected:
				if connected++; connected > 1 {
					e.stderrf("chatctl: connected to %s (%s)\n", clean(ev.ServerID), ev.Addr)
				}
			case client.StateReconnecting:
				st := toStatus(ev.Err)
				e.stderrf("chatctl: %s: %s (reconnecting in %s)\n", st.Code(), st.Message(), formatDuration(ev.Delay))
			}
		case t, ok := <-typing:
			if !ok {
				typing = nil
				continue
			}
			if err := e.frame(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Typing{Typing: t}}, func() {
				e.printf("... %s is typing in %s\n", clean(t.GetUserId()), clean(t.GetChannelId()))
			}); err != nil {
				return err
			}
		case r, ok := <-receipts:
			if !ok {
				receipts = nil
				continue
			}
			if err := e.frame(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Receipt{Receipt: r}}, func() {
				switch {
				case r.GetReadUpTo() > 0:
					e.printf("... %s read %s up to %d\n", clean(r.GetUserId()), clean(r.GetChannelId()), r.GetReadUpTo())
				case r.GetDeliveredUpTo() > 0:
					e.printf("... %s received %s up to %d\n", clean(r.GetUserId()), clean(r.GetChannelId()), r.GetDeliveredUpTo())
				}
			}); err != nil {
				return err
			}
		case u, ok := <-unread:
			if !ok {
				unread = nil
				continue
			}
			if err := e.frame(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Unread{Unread: u}}, func() {
				e.printf("... %s read up to %d: unread %s, total %s\n", clean(u.GetChannelId()), u.GetReadUpTo(),
					count(u.GetUnreadCount(), u.GetUnreadCapped()), count(u.GetTotalUnread(), u.GetTotalCapped()))
			}); err != nil {
				return err
			}
		case <-ctx.Done():
			e.flush(res)
			return nil // interrupted
		}
	}
}

func (e *env) stderrf(format string, args ...any) {
	fmt.Fprintf(e.stderr, format, args...)
}

// frame prints one event of the stream: with --json a ServerFrame holding
// it, else text.
func (e *env) frame(f *chatv1.ServerFrame, text func()) error {
	return show(e, f, func(*chatv1.ServerFrame) { text() })
}

// flush waits (bounded by --timeout) for the pending acks; errors are
// reported but do not fail an interrupted listen.
func (e *env) flush(res *client.Resilient) {
	fctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	if err := res.Flush(fctx); err != nil {
		st := toStatus(err)
		e.stderrf("chatctl: %s: %s (acking on exit)\n", st.Code(), st.Message())
	}
}

func (e *env) watchCmd() *cobra.Command {
	cmd := e.command("watch [USER...]", "print users' presence, then each change, until interrupted (default: your contacts)", cobra.ArbitraryArgs,
		func(ctx context.Context, c *client.Client, args []string) error {
			if len(args) == 0 {
				if err := e.announceContacts(ctx, c); err != nil {
					return err
				}
			}
			ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
			defer stop()
			return e.watch(ctx, c, args)
		})
	cmd.Long = `Prints the current presence of each USER first, then every change. You
may watch a user who has added you as a contact (or yourself).

Without USER, watches your contacts who have added you back; it says so on
stderr first, and fails if you have no contacts. When the server restarts
it subscribes again (jittered backoff, 0.5s to 30s) and prints the current
presence again.`
	return cmd
}

// watch prints presence until ctx ends. When the stream is lost (the
// server restarts or drains: Unavailable, or an OK end) it subscribes again
// with jittered exponential backoff (0.5 s to 30 s, reset by a stream that
// delivered something), on a fresh connection; the server then sends the
// current presence again first.
func (e *env) watch(ctx context.Context, c *client.Client, users []string) error {
	bo := &backoff.ExponentialBackOff{InitialInterval: minBackoff, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: maxBackoff}
	bo.Reset()
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			nc, err := client.Dial(e.serverAddr(), client.WithToken(c.Token()))
			if err != nil {
				return err
			}
			defer nc.Close()
			c = nc
		}
		got, err := e.watchOnce(ctx, c, users)
		if ctx.Err() != nil {
			return nil
		}
		if got {
			bo.Reset()
		}
		if !errors.Is(err, io.EOF) && status.Code(err) != codes.Unavailable {
			return err
		}
		wait := min(bo.NextBackOff(), maxBackoff)
		st := toStatus(err)
		if errors.Is(err, io.EOF) {
			st = status.New(codes.Unavailable, "stream ended")
		}
		e.stderrf("chatctl: %s: %s (reconnecting in %s)\n", st.Code(), st.Message(), formatDuration(wait))
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
	}
}

// watchOnce runs one Subscribe stream until it ends; got reports whether
// it printed anything.
func (e *env) watchOnce(ctx context.Context, c *client.Client, users []string) (got bool, err error) {
	stream, err := c.Presence().Subscribe(ctx, &chatv1.SubscribeRequest{UserIds: users})
	if err != nil {
		return false, err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return got, err
		}
		got = true
		if err := show(e, resp.GetPresence(), e.printPresence); err != nil {
			return got, err
		}
	}
}

// announceContacts tells (on stderr) whom a watch without USER watches,
// or fails if there is no one.
func (e *env) announceContacts(ctx context.Context, c *client.Client) error {
	resp, err := rpc(ctx, e, c.Account().ListContacts, &chatv1.ListContactsRequest{})
	if err != nil {
		return err
	}
	var names []string
	for _, p := range resp.GetContacts() {
		names = append(names, clean(p.GetUserId()))
	}
	if len(names) == 0 {
		return status.Error(codes.FailedPrecondition, "you have no contacts to watch: name users (chatctl watch USER...) "+
			"or add contacts (chatctl contacts add USER); each must have added you too")
	}
	e.stderrf("watching those of your contacts %s who have added you back (the others show nothing); Ctrl-C to stop\n", strings.Join(names, ", "))
	return nil
}
