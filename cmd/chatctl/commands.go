package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"google.golang.org/protobuf/proto"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/chatd/chatd/client"
	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// commands is every chatctl subcommand, in help order.
var commands = []command{
	{
		name: "signup", args: "USERNAME --password P [--display-name N]", summary: "create an account (does not log in)",
		detail: "USERNAME: 3..32 characters: letters, digits, '.', '_', '-'.\nThe password is 8..1024 bytes; the display name defaults to USERNAME.",
		setup:  setupSignup,
	},
	{
		name: "login", args: "USERNAME --password P [--device NAME]", summary: "log in as a new device and store its credentials in the config dir",
		detail: "Stores server, username, device_id and bearer token in <config-dir>/credentials.json (mode 0600).",
		setup:  setupLogin,
	},
	{
		name: "logout", summary: "revoke this device's session and delete the stored credentials",
		setup: setupLogout,
	},
	{
		name: "whoami", summary: "show the logged-in user, device, server and the device's cursor",
		setup: setupWhoami,
	},
	{
		name: "send", args: "TARGET TEXT... [--client-message-id KEY]", summary: "send a message and print its ack (channel, message_id, created_at)",
		detail: `TARGET is a channel id (starting with "g:" or "dm:") or a username (the
direct channel with that user). The remaining arguments are joined with
spaces to form the text; put "--" before text that starts with "-".`,
		setup: setupSend,
	},
	{
		name: "sync", args: "[--limit N]", summary: "print every message since this device's cursor, then ack them",
		detail: `Prints one line per message in inbox order (time, channel, sender, text),
then advances this device's cursor past them, so the next sync prints only
newer messages. With --json each line is a Delivery object.`,
		setup: setupSync,
	},
	{
		name: "listen", args: "[--limit N]", summary: "sync, then print live messages and typing events until interrupted",
		detail: `Like sync, then keeps the Chat stream open and prints each new message as it
arrives (and "... is typing", receipt and read-state events), acking as it
goes, until SIGINT or SIGTERM. Reconnects with exponential backoff (0.5s to
30s) when the server shuts down (Unavailable) or drops the stream because
the client was too slow (ResourceExhausted). With --json each line is a
ServerFrame object holding "delivery", "typing", "receipt" or "unread".`,
		setup: setupListen,
	},
	{
		name: "group create", args: "NAME [--members a,b]", summary: "create a group channel (you are its owner)",
		detail: "NAME: 1..100 characters. Prints the new channel.",
		setup:  setupGroupCreate,
	},
	{
		name: "group add", args: "GROUP USER [--admin|--member]", summary: "add a user to a group (owners and admins)",
		setup: setupGroupAdd,
	},
	{
		name: "group remove", args: "GROUP USER", summary: "remove a user from a group (admins, or yourself)",
		setup: setupGroupRemove,
	},
	{
		name: "group show", args: "GROUP", summary: "show a channel and its members",
		setup: setupGroupShow,
	},
	{
		name: "channels", summary: "list your channels, most recently active first, with unread counts",
		detail: `One line per channel: id, type, name, unread count ("N+" when the server
stopped counting at its cap), last activity; then your total unread count.
With --json each line is a Channel object (unreadCount, readUpTo,
lastMessage, receipts) and the last line is {"totalUnread": N,
"totalCapped": bool}.`,
		setup: setupChannels,
	},
	{
		name: "history", args: "TARGET [--before ID] [--after ID] [--limit N]", summary: "print a page of a channel's messages, oldest first",
		detail: `TARGET is a channel id or a username (the direct channel with that user).
Without --before/--after the newest page is printed. With --json each line
is a Message object.`,
		setup: setupHistory,
	},
	{
		name: "read", args: "TARGET [--up-to ID]", summary: "mark a channel read (up to the newest message) on every device",
		detail: `TARGET is a channel id or a username (the direct channel with that user).
Moves your read marker forward (never back); your other devices get the new
unread count at once and the other members see the read receipt. Prints
the channel's unread count and your total. With --json: an UnreadEvent.`,
		setup: setupRead,
	},
	{
		name: "edit", args: "TARGET MESSAGE_ID TEXT... [--client-message-id KEY]", summary: "edit one of your messages (within the server's edit window)",
		detail: `The remaining arguments are joined with spaces to form the new text. Prints
the ack of the edit (a new row that every member's devices receive). With
--json: a SendAck.`,
		setup: setupEdit,
	},
	{
		name: "delete", args: "TARGET MESSAGE_ID [--for-me] [--client-message-id KEY]", summary: "delete a message for everyone, or for you only",
		detail: `Without --for-me the message is deleted for everyone (your own message, or
any message of a group you own or administer). With --for-me it disappears
from your own history and devices only. With --json: a SendAck.`,
		setup: setupDelete,
	},
	{
		name: "receipts", args: "TARGET", summary: "show each member's delivered and read markers of a channel",
		setup: setupReceipts,
	},
	{
		name: "receipts set", args: "--hide|--show", summary: "hide or show your read receipts",
		detail: "While hidden, others see no read receipts from you; your own unread counts still follow your reads.",
		setup:  setupReceiptsSet,
	},
	{
		name: "contacts add", args: "USER", summary: "add a user to your contacts",
		setup: setupContactsAdd,
	},
	{
		name: "contacts remove", args: "USER", summary: "remove a user from your contacts",
		setup: setupContactsRemove,
	},
	{
		name: "contacts list", summary: "list your contacts",
		setup: setupContactsList,
	},
	{
		name: "profile", args: "[USER]", summary: "show a user's profile (default: yourself)",
		detail: `To show a user literally named "set", use "chatctl profile -- set".`,
		setup:  setupProfile,
	},
	{
		name: "profile set", args: "[--display-name N] [--hide-presence|--show-presence]", summary: "change your display name or hide your online status",
		setup: setupProfileSet,
	},
	{
		name: "devices", summary: "list your devices with their cursors",
		setup: setupDevices,
	},
	{
		name: "presence", args: "USER...", summary: "show users' presence (online/offline, last active)",
		setup: setupPresence,
	},
	{
		name: "watch", args: "[USER...]", summary: "stream presence changes of contacts until interrupted",
		detail: "Without USER, watches all contacts.",
		setup:  setupWatch,
	},
}

// ---- connection helpers ----

// loadCreds returns the stored session, or Unauthenticated if there is none.
func (e *env) loadCreds() (*credentials, error) {
	if e.creds != nil {
		return e.creds, nil
	}
	c, err := loadCredentials(e.configDir)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "reading credentials: %v", err)
	}
	if c == nil || c.Token == "" {
		return nil, status.Errorf(codes.Unauthenticated, "not logged in (no credentials in %s; run 'chatctl login')", e.configDir)
	}
	e.creds = c
	return c, nil
}

// serverAddr: --server or $CHATCTL_SERVER, else the server of the stored
// session, else the default.
func (e *env) serverAddr() string {
	if e.serverExplicit && e.server != "" {
		return e.server
	}
	if c, _ := loadCredentials(e.configDir); c != nil && c.Server != "" {
		return c.Server
	}
	return defaultServer
}

// dial connects to the server, authenticated with the stored token if auth.
func (e *env) dial(auth bool) (*client.Client, error) {
	var opts []client.Option
	addr := e.serverAddr()
	if auth {
		c, err := e.loadCreds()
		if err != nil {
			return nil, err
		}
		opts = append(opts, client.WithToken(c.Token))
	}
	c, err := client.Dial(addr, opts...)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "server %q: %v", addr, err)
	}
	e.client = c
	return c, nil
}

// unary returns a context bounded by --timeout.
func (e *env) unary(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.timeout)
}

func (e *env) connect(ctx context.Context, c *client.Client, opts ...client.SessionOption) (*client.Session, error) {
	cctx, cancel := e.unary(ctx)
	defer cancel()
	return c.Connect(cctx, opts...)
}

func wantArgs(args []string, n int, names string) error {
	if len(args) != n {
		return usagef("want %s, got %d argument(s)", names, len(args))
	}
	return nil
}

// passwordFlag defines --password. Its default comes from $CHATCTL_PASSWORD
// at run time (not at definition, so that help never shows it).
func passwordFlag(fs *flag.FlagSet) func() string {
	p := fs.String("password", "", "the account `PASSWORD`, 8..1024 bytes (default $CHATCTL_PASSWORD)")
	return func() string {
		if *p != "" {
			return *p
		}
		return os.Getenv("CHATCTL_PASSWORD")
	}
}

// ---- account ----

func setupSignup(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	password := passwordFlag(fs)
	display := fs.String("display-name", "", "display `NAME`, 1..64 characters (default USERNAME)")
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 1, "USERNAME"); err != nil {
			return err
		}
		pw := password()
		if pw == "" {
			return usagef("--password (or $CHATCTL_PASSWORD) is required")
		}
		name := *display
		if name == "" {
			name = args[0]
		}
		c, err := e.dial(false)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		p, err := c.SignUp(uctx, args[0], pw, name)
		if err != nil {
			return err
		}
		if e.json {
			return e.emit(p)
		}
		e.printf("signed up %s (%q)\n", clean(p.GetUserId()), p.GetDisplayName())
		return nil
	}
}

func setupLogin(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	password := passwordFlag(fs)
	host, _ := os.Hostname()
	device := fs.String("device", truncate("chatctl@"+host, 64), "device `NAME`, 1..64 characters")
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 1, "USERNAME"); err != nil {
			return err
		}
		pw := password()
		if pw == "" {
			return usagef("--password (or $CHATCTL_PASSWORD) is required")
		}
		c, err := e.dial(false)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.LogIn(uctx, args[0], pw, *device)
		if err != nil {
			return err
		}
		cr := &credentials{
			Server:     e.serverAddr(),
			Username:   resp.GetUserId(),
			DeviceID:   resp.GetDeviceId(),
			DeviceName: *device,
			Token:      resp.GetAccessToken(),
		}
		if cr.Username == "" {
			cr.Username = args[0]
		}
		if resp.GetExpiresAt() != nil {
			cr.ExpiresAt = resp.GetExpiresAt().AsTime()
		}
		if err := saveCredentials(e.configDir, cr); err != nil {
			return status.Errorf(codes.FailedPrecondition, "saving credentials: %v", err)
		}
		if e.json {
			// The token stays in the config dir, not on stdout.
			resp.AccessToken = ""
			return e.emit(resp)
		}
		e.printf("logged in as %s, device %s (%s) on %s\n", clean(cr.Username), cr.DeviceID, clean(*device), cr.Server)
		return nil
	}
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) > n {
		return string(r[:n])
	}
	return s
}

func setupLogout(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 0, "no arguments"); err != nil {
			return err
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		rpcErr := c.LogOut(uctx)
		// A session the server no longer accepts is as good as logged out.
		if rpcErr != nil && status.Code(rpcErr) != codes.Unauthenticated {
			return rpcErr
		}
		if err := removeCredentials(e.configDir); err != nil {
			return status.Errorf(codes.FailedPrecondition, "removing credentials: %v", err)
		}
		if e.json {
			return e.emitValue(map[string]any{"loggedOut": true, "username": e.creds.Username, "deviceId": e.creds.DeviceID})
		}
		e.printf("logged out %s (device %s)\n", clean(e.creds.Username), e.creds.DeviceID)
		return nil
	}
}

func setupWhoami(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 0, "no arguments"); err != nil {
			return err
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.Account().ListDevices(uctx, &chatv1.ListDevicesRequest{})
		if err != nil {
			return err
		}
		var cur *chatv1.Device
		for _, d := range resp.GetDevices() {
			if d.GetCurrent() || (cur == nil && d.GetDeviceId() == e.creds.DeviceID) {
				cur = d
			}
		}
		if cur == nil {
			return status.Errorf(codes.NotFound, "device %s is not among the user's devices", e.creds.DeviceID)
		}
		server := e.serverAddr()
		if e.json {
			return e.emitValue(struct {
				UserID     string `json:"userId"`
				DeviceID   string `json:"deviceId"`
				DeviceName string `json:"deviceName"`
				Server     string `json:"server"`
				Cursor     uint64 `json:"cursor,string"`
			}{e.creds.Username, cur.GetDeviceId(), cur.GetName(), server, cur.GetCursor()})
		}
		e.printf("user    %s\ndevice  %s (%s)\nserver  %s\ncursor  %d\n",
			clean(e.creds.Username), cur.GetDeviceId(), clean(cur.GetName()), server, cur.GetCursor())
		return nil
	}
}

func setupDevices(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 0, "no arguments"); err != nil {
			return err
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.Account().ListDevices(uctx, &chatv1.ListDevicesRequest{})
		if err != nil {
			return err
		}
		for _, d := range resp.GetDevices() {
			if e.json {
				if err := e.emit(d); err != nil {
					return err
				}
				continue
			}
			mark := ""
			if d.GetCurrent() {
				mark = "  (this device)"
			}
			e.printf("%s  %s  created %s  last seen %s  cursor %d%s\n", d.GetDeviceId(), clean(d.GetName()),
				formatTime(d.GetCreatedAt()), formatTime(d.GetLastSeenAt()), d.GetCursor(), mark)
		}
		return nil
	}
}

func setupProfile(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) > 1 {
			return usagef("want at most one USER, got %d arguments", len(args))
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		user := e.creds.Username
		if len(args) == 1 {
			user = args[0]
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.Account().GetProfile(uctx, &chatv1.GetProfileRequest{Username: user})
		if err != nil {
			return err
		}
		if e.json {
			return e.emit(resp.GetProfile())
		}
		e.printProfile(resp.GetProfile())
		return nil
	}
}

func setupProfileSet(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	display := fs.String("display-name", "", "new display `NAME`, 1..64 characters")
	hide := fs.Bool("hide-presence", false, "show as offline to everyone")
	show := fs.Bool("show-presence", false, "show your online status to your contacts again")
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 0, "no arguments"); err != nil {
			return err
		}
		req := &chatv1.UpdateProfileRequest{DisplayName: *display}
		switch {
		case *hide && *show:
			return usagef("--hide-presence and --show-presence exclude each other")
		case *hide:
			req.HidePresence = proto.Bool(true)
		case *show:
			req.HidePresence = proto.Bool(false)
		case *display == "":
			return usagef("want --display-name, --hide-presence or --show-presence")
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.Account().UpdateProfile(uctx, req)
		if err != nil {
			return err
		}
		if e.json {
			return e.emit(resp.GetProfile())
		}
		e.printProfile(resp.GetProfile())
		return nil
	}
}

func setupContactsAdd(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 1, "USER"); err != nil {
			return err
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.Account().AddContact(uctx, &chatv1.AddContactRequest{Username: args[0]})
		if err != nil {
			return err
		}
		if e.json {
			return e.emit(resp.GetContact())
		}
		e.printf("added contact ")
		e.printProfile(resp.GetContact())
		return nil
	}
}

func setupContactsRemove(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 1, "USER"); err != nil {
			return err
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		if _, err := c.Account().RemoveContact(uctx, &chatv1.RemoveContactRequest{Username: args[0]}); err != nil {
			return err
		}
		if e.json {
			return e.emitValue(map[string]any{"removed": args[0]})
		}
		e.printf("removed contact %s\n", clean(args[0]))
		return nil
	}
}

func setupContactsList(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 0, "no arguments"); err != nil {
			return err
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.Account().ListContacts(uctx, &chatv1.ListContactsRequest{})
		if err != nil {
			return err
		}
		for _, p := range resp.GetContacts() {
			if e.json {
				if err := e.emit(p); err != nil {
					return err
				}
				continue
			}
			e.printProfile(p)
		}
		return nil
	}
}

// ---- messages ----

// sendTarget maps TARGET to the SendParams target.
func sendTarget(target string) client.SendParams {
	if strings.HasPrefix(target, "g:") || strings.HasPrefix(target, "dm:") {
		return client.SendParams{ChannelID: target}
	}
	return client.SendParams{ToUser: target}
}

func setupSend(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	cmid := fs.String("client-message-id", "", "idempotency `KEY`, 1..64 bytes (default: random); resending with the same key stores nothing new")
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) < 2 {
			return usagef("want TARGET TEXT, got %d argument(s)", len(args))
		}
		p := sendTarget(args[0])
		p.Text = strings.Join(args[1:], " ")
		p.ClientMessageID = *cmid
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		s, err := e.connect(ctx, c)
		if err != nil {
			return err
		}
		defer s.Close()
		uctx, cancel := e.unary(ctx)
		defer cancel()
		ack, err := s.Send(uctx, p)
		if err != nil {
			return err
		}
		if e.json {
			return e.emit(ack)
		}
		dup := ""
		if ack.GetDuplicate() {
			dup = "  (duplicate: already sent)"
		}
		e.printf("sent  %s  message_id %d  at %s%s\n", clean(ack.GetChannelId()), ack.GetMessageId(), formatTime(ack.GetCreatedAt()), dup)
		return nil
	}
}

func limitFlag(fs *flag.FlagSet) *int {
	return fs.Int("limit", 0, "sync page size `N`, 1..1000 (default: the server's, 100)")
}

func (e *env) printDelivery(d *chatv1.Delivery) error {
	if e.json {
		return e.emit(d)
	}
	e.printf("%s\n", formatMessage(d.GetMessage()))
	return nil
}

func setupSync(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	limit := limitFlag(fs)
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 0, "no arguments"); err != nil {
			return err
		}
		if *limit < 0 || *limit > 1000 {
			return usagef("--limit must be 0..1000")
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		s, err := e.connect(ctx, c)
		if err != nil {
			return err
		}
		defer s.Close()
		start := s.Welcome().GetCursor()
		last, err := s.SyncAll(ctx, int32(*limit), e.printDelivery)
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
	}
}

func setupListen(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	limit := limitFlag(fs)
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 0, "no arguments"); err != nil {
			return err
		}
		if *limit < 0 || *limit > 1000 {
			return usagef("--limit must be 0..1000")
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		return e.listen(ctx, c, int32(*limit))
	}
}

// retryable reports whether a stream error calls for a reconnect.
func retryable(err error) bool {
	if errors.Is(err, io.EOF) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.ResourceExhausted:
		return true
	}
	return false
}

const (
	minBackoff = 500 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// listen runs sessions until ctx ends, reconnecting on retryable errors.
func (e *env) listen(ctx context.Context, c *client.Client, limit int32) error {
	backoff := minBackoff
	var resume uint64        // highest inbox_seq printed so far
	var prev *client.Session // the last session: its memory of messages printed
	for {
		opts := []client.SessionOption{client.WithResumeAfter(resume)}
		if prev != nil {
			opts = append(opts, client.WithResumeFrom(prev))
		}
		s, err := e.connect(ctx, c, opts...)
		if err == nil {
			backoff = minBackoff
			err = e.listenSession(ctx, s, limit, &resume)
			s.Close()
			prev = s
		}
		if ctx.Err() != nil {
			return nil // interrupted
		}
		if !retryable(err) {
			return err
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, maxBackoff)
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

func (e *env) stderrf(format string, args ...any) {
	fmt.Fprintf(e.stderr, format, args...)
}

// listenSession syncs, then prints live deliveries and typing events until
// the session ends (its error) or ctx ends (nil, after flushing acks).
func (e *env) listenSession(ctx context.Context, s *client.Session, limit int32, resume *uint64) error {
	handle := func(d *chatv1.Delivery) error {
		var err error
		if e.json {
			err = e.emit(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Delivery{Delivery: d}})
		} else {
			e.printf("%s\n", formatMessage(d.GetMessage()))
		}
		if err != nil {
			return err
		}
		*resume = d.GetInboxSeq()
		s.AckAsync(d.GetInboxSeq())
		return nil
	}
	last, err := s.SyncAll(ctx, limit, handle)
	if err != nil {
		if ctx.Err() != nil {
			return e.flush(s)
		}
		return err
	}
	// After a reconnect, entries printed by the previous session but not yet
	// acked are skipped by the sync (WithResumeAfter): ack them now.
	s.AckAsync(last)
	deliveries, typing := s.Deliveries(), s.TypingEvents()
	receipts, unread := s.Receipts(), s.UnreadEvents()
	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return s.Err()
			}
			if err := handle(d); err != nil {
				return err
			}
		case t, ok := <-typing:
			if !ok {
				typing = nil
				continue
			}
			if e.json {
				if err := e.emit(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Typing{Typing: t}}); err != nil {
					return err
				}
				continue
			}
			e.printf("... %s is typing in %s\n", clean(t.GetUserId()), clean(t.GetChannelId()))
		case r, ok := <-receipts:
			if !ok {
				receipts = nil
				continue
			}
			if e.json {
				if err := e.emit(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Receipt{Receipt: r}}); err != nil {
					return err
				}
				continue
			}
			switch {
			case r.GetReadUpTo() > 0:
				e.printf("... %s read %s up to %d\n", clean(r.GetUserId()), clean(r.GetChannelId()), r.GetReadUpTo())
			case r.GetDeliveredUpTo() > 0:
				e.printf("... %s received %s up to %d\n", clean(r.GetUserId()), clean(r.GetChannelId()), r.GetDeliveredUpTo())
			}
		case u, ok := <-unread:
			if !ok {
				unread = nil
				continue
			}
			if e.json {
				if err := e.emit(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Unread{Unread: u}}); err != nil {
					return err
				}
				continue
			}
			e.printf("... %s read up to %d: unread %s, total %s\n", clean(u.GetChannelId()), u.GetReadUpTo(),
				count(u.GetUnreadCount(), u.GetUnreadCapped()), count(u.GetTotalUnread(), u.GetTotalCapped()))
		case <-ctx.Done():
			return e.flush(s)
		}
	}
}

// flush waits (bounded by --timeout) for the pending acks; errors are
// reported but do not fail an interrupted listen.
func (e *env) flush(s *client.Session) error {
	fctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	if err := s.Flush(fctx); err != nil {
		st := toStatus(err)
		e.stderrf("chatctl: %s: %s (acking on exit)\n", st.Code(), st.Message())
	}
	return nil
}

func setupHistory(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	before := fs.Uint64("before", 0, "print messages older than message_id `ID` (exclusive)")
	after := fs.Uint64("after", 0, "print messages newer than message_id `ID` (exclusive), reading forward")
	limit := fs.Int("limit", 0, "page size `N`, 1..500 (default: the server's, 50)")
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 1, "TARGET"); err != nil {
			return err
		}
		if *limit < 0 || *limit > 500 {
			return usagef("--limit must be 0..500")
		}
		req := &chatv1.GetHistoryRequest{BeforeMessageId: *before, AfterMessageId: *after, PageSize: int32(*limit)}
		if t := sendTarget(args[0]); t.ChannelID != "" {
			req.ChannelId = t.ChannelID
		} else {
			req.ToUser = t.ToUser
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.Chat().GetHistory(uctx, req)
		if err != nil {
			return err
		}
		for _, m := range resp.GetMessages() {
			if e.json {
				if err := e.emit(m); err != nil {
					return err
				}
				continue
			}
			e.printf("%s  (#%d)\n", formatMessage(m), m.GetMessageId())
		}
		if !e.json && resp.GetMore() {
			flag := "--before"
			if *after > 0 {
				flag = "--after"
			}
			e.printf("(more: use %s %d)\n", flag, resp.GetNextMessageId())
		}
		return nil
	}
}

// ---- channels and groups ----

func setupGroupCreate(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	members := fs.String("members", "", "comma-separated `USERS` to add besides you")
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 1, "NAME"); err != nil {
			return err
		}
		var ids []string
		for _, m := range strings.Split(*members, ",") {
			if m = strings.TrimSpace(m); m != "" {
				ids = append(ids, m)
			}
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.Chat().CreateGroup(uctx, &chatv1.CreateGroupRequest{Name: args[0], MemberIds: ids})
		if err != nil {
			return err
		}
		if e.json {
			return e.emit(resp.GetChannel())
		}
		e.printChannel(resp.GetChannel())
		return nil
	}
}

func setupGroupAdd(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	admin := fs.Bool("admin", false, "add the user as an admin (or make a member an admin)")
	member := fs.Bool("member", false, "make an admin a plain member again")
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 2, "GROUP USER"); err != nil {
			return err
		}
		// Without a flag the role of an existing member is left as it is.
		role := chatv1.MemberRole_MEMBER_ROLE_UNSPECIFIED
		switch {
		case *admin && *member:
			return usagef("--admin and --member exclude each other")
		case *admin:
			role = chatv1.MemberRole_MEMBER_ROLE_ADMIN
		case *member:
			role = chatv1.MemberRole_MEMBER_ROLE_MEMBER
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.Chat().AddMember(uctx, &chatv1.AddMemberRequest{ChannelId: args[0], UserId: args[1], Role: role})
		if err != nil {
			return err
		}
		if e.json {
			return e.emit(resp.GetChannel())
		}
		e.printChannel(resp.GetChannel())
		return nil
	}
}

func setupGroupRemove(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 2, "GROUP USER"); err != nil {
			return err
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		if _, err := c.Chat().RemoveMember(uctx, &chatv1.RemoveMemberRequest{ChannelId: args[0], UserId: args[1]}); err != nil {
			return err
		}
		if e.json {
			return e.emitValue(map[string]any{"channelId": args[0], "removed": args[1]})
		}
		e.printf("removed %s from %s\n", clean(args[1]), clean(args[0]))
		return nil
	}
}

func setupGroupShow(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 1, "GROUP"); err != nil {
			return err
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.Chat().GetChannel(uctx, &chatv1.GetChannelRequest{ChannelId: args[0]})
		if err != nil {
			return err
		}
		if e.json {
			return e.emit(resp.GetChannel())
		}
		e.printChannel(resp.GetChannel())
		return nil
	}
}

func setupChannels(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 0, "no arguments"); err != nil {
			return err
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		token := ""
		var total uint32
		var totalCapped bool
		for first := true; ; first = false {
			uctx, cancel := e.unary(ctx)
			resp, err := c.Chat().ListChannels(uctx, &chatv1.ListChannelsRequest{PageSize: 500, PageToken: token})
			cancel()
			if err != nil {
				return err
			}
			if first {
				total, totalCapped = resp.GetTotalUnread(), resp.GetTotalCapped()
			}
			for _, ch := range resp.GetChannels() {
				if e.json {
					if err := e.emit(ch); err != nil {
						return err
					}
					continue
				}
				e.printf("%s  %s  %s  unread %s  last activity %s\n", clean(ch.GetChannelId()), channelType(ch.GetType()),
					clean(ch.GetName()), count(ch.GetUnreadCount(), ch.GetUnreadCapped()), formatTime(ch.GetLastActivityAt()))
			}
			token = resp.GetNextPageToken()
			if token == "" {
				break
			}
		}
		if e.json {
			return e.emitValue(map[string]any{"totalUnread": total, "totalCapped": totalCapped})
		}
		e.printf("total unread %s\n", count(total, totalCapped))
		return nil
	}
}

// ---- presence ----

func (e *env) printPresence(p *chatv1.Presence) error {
	if e.json {
		return e.emit(p)
	}
	e.printf("%s  %s  last active %s\n", clean(p.GetUserId()), presenceStatus(p.GetStatus()), formatTime(p.GetLastActiveAt()))
	return nil
}

func setupPresence(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) == 0 {
			return usagef("want at least one USER")
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.Presence().GetPresence(uctx, &chatv1.GetPresenceRequest{UserIds: args})
		if err != nil {
			return err
		}
		for _, p := range resp.GetPresences() {
			if err := e.printPresence(p); err != nil {
				return err
			}
		}
		return nil
	}
}

func setupWatch(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		stream, err := c.Presence().Subscribe(ctx, &chatv1.SubscribeRequest{UserIds: args})
		if err != nil {
			return err
		}
		for {
			resp, err := stream.Recv()
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
			if err := e.printPresence(resp.GetPresence()); err != nil {
				return err
			}
		}
	}
}
