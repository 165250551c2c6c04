package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/chatd/chatd/client"
	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// commands is every chatctl command, in help order.
func (e *env) commands() []*cobra.Command {
	return []*cobra.Command{
		e.signupCmd(),
		e.loginCmd(),
		e.logoutCmd(),
		e.whoamiCmd(),
		e.sendCmd(),
		e.syncCmd(),
		e.listenCmd(),
		group("group", "create, change and show group channels",
			e.groupCreateCmd(), e.groupAddCmd(), e.groupRemoveCmd(), e.groupShowCmd()),
		e.channelsCmd(),
		e.historyCmd(),
		e.readCmd(),
		e.editCmd(),
		e.deleteCmd(),
		withSub(e.receiptsCmd(), e.receiptsSetCmd()),
		group("contacts", "add, remove and list your contacts",
			e.contactsAddCmd(), e.contactsRemoveCmd(), e.contactsListCmd()),
		withSub(e.profileCmd(), e.profileSetCmd()),
		withSub(e.devicesCmd(), e.devicesRevokeCmd()),
		e.presenceCmd(),
		e.watchCmd(),
		e.serversCmd(),
		e.pushCmd(),
		e.muteCmd(),
		e.unmuteCmd(),
	}
}

// ---- the shape every command shares ----

// runFunc runs a command with a client dialed to the server (with the
// stored token unless the command is anonymous) and the positional
// arguments. ctx is not bounded by --timeout: use rpc or e.unary per call.
type runFunc func(ctx context.Context, c *client.Client, args []string) error

// command is a chatctl command that talks to the server: use is the name
// and argument synopsis ("add GROUP USER [--admin|--member]"). The wrapper
// resolves the global flags, dials, runs fn and marks its failures as
// call errors (exit status 1) unless they are usage errors.
func (e *env) command(use, short string, args cobra.PositionalArgs, fn runFunc) *cobra.Command {
	return e.newCommand(use, short, args, true, fn)
}

// anonymousCommand is a command that dials without credentials.
func (e *env) anonymousCommand(use, short string, args cobra.PositionalArgs, fn runFunc) *cobra.Command {
	return e.newCommand(use, short, args, false, fn)
}

func (e *env) newCommand(use, short string, args cobra.PositionalArgs, auth bool, fn runFunc) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := e.resolve(cmd); err != nil {
				return err
			}
			err := func() error {
				c, err := e.dial(auth)
				if err != nil {
					return err
				}
				return fn(cmd.Context(), c, args)
			}()
			if _, usage := err.(*usageError); err != nil && !usage {
				return &callError{err}
			}
			return err
		},
	}
}

// group is a command that only holds subcommands ("group", "contacts").
func group(name, short string, subs ...*cobra.Command) *cobra.Command {
	g := &cobra.Command{
		Use:         name,
		Short:       short,
		Args:        cobra.ArbitraryArgs,
		Annotations: map[string]string{listingKey: listGroup},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("want a subcommand")
			}
			return usagef("unknown command %q", args[0])
		},
	}
	g.AddCommand(subs...)
	return g
}

func withSub(cmd *cobra.Command, subs ...*cobra.Command) *cobra.Command {
	cmd.AddCommand(subs...)
	return cmd
}

// exactly accepts exactly the named positional arguments.
func exactly(names ...string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) == len(names) {
			return noneEmpty(args, names)
		}
		want := strings.Join(names, " ")
		if want == "" {
			want = "no arguments"
		}
		return usagef("want %s, got %d argument(s)", want, len(args))
	}
}

// atLeast accepts n or more positional arguments, described by names.
func atLeast(n int, names string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) < n {
			return usagef("want %s, got %d argument(s)", names, len(args))
		}
		var placeholders []string // "at least one USER" names USER
		for _, w := range strings.Fields(names) {
			if w == strings.ToUpper(w) {
				placeholders = append(placeholders, w)
			}
		}
		return noneEmpty(args, placeholders)
	}
}

// noneEmpty refuses an empty positional argument (`chatctl send "" hi`) as
// a usage error naming it, before anything reaches the server.
func noneEmpty(args, names []string) error {
	for i, a := range args {
		if strings.TrimSpace(a) == "" {
			name := fmt.Sprintf("argument %d", i+1)
			if i < len(names) {
				name = strings.TrimSuffix(names[i], "...")
			} else if len(names) > 0 {
				name = strings.TrimSuffix(names[len(names)-1], "...") // the repeated last one
			}
			return usagef("%s is empty", name)
		}
	}
	return nil
}

// atMost accepts up to n positional arguments, described by names.
func atMost(n int, names string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) > n {
			return usagef("want at most %d %s, got %d argument(s)", n, names, len(args))
		}
		return nil
	}
}

// rpc makes one unary call bounded by --timeout.
func rpc[Req, Resp any](ctx context.Context, e *env, call func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	ctx, cancel := e.unary(ctx)
	defer cancel()
	return call(ctx, req)
}

// show prints m: one JSON line with --json, else text(m).
func show[T proto.Message](e *env, m T, text func(T)) error {
	if e.json {
		return e.emit(m)
	}
	text(m)
	return nil
}

// showAll shows each of ms.
func showAll[T proto.Message](e *env, ms []T, text func(T)) error {
	for _, m := range ms {
		if err := show(e, m, text); err != nil {
			return err
		}
	}
	return nil
}

// report prints v as one JSON line with --json, else the formatted text.
func (e *env) report(v any, format string, args ...any) error {
	if e.json {
		return e.emitValue(v)
	}
	e.printf(format, args...)
	return nil
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

// passwordFlag defines --password, required unless $CHATCTL_PASSWORD is
// set. The default is read at run time (not at definition, so that help
// never shows it).
func passwordFlag(cmd *cobra.Command) func() string {
	p := cmd.Flags().String("password", "", "the account `PASSWORD`, 8..1024 bytes (default $CHATCTL_PASSWORD)")
	get := func() string {
		if *p != "" {
			return *p
		}
		return os.Getenv("CHATCTL_PASSWORD")
	}
	cmd.PreRunE = func(*cobra.Command, []string) error {
		if get() == "" {
			return usagef("--password (or $CHATCTL_PASSWORD) is required")
		}
		return nil
	}
	return get
}

// limitFlag defines --limit N, checked to be 0..most before the command
// runs (0: the server's default).
func limitFlag(cmd *cobra.Command, most int, usage string) *int {
	n := cmd.Flags().Int("limit", 0, usage)
	cmd.PreRunE = func(*cobra.Command, []string) error {
		if *n < 0 || *n > most {
			return usagef("--limit must be 0..%d", most)
		}
		return nil
	}
	return n
}

// ---- account ----

func (e *env) signupCmd() *cobra.Command {
	var display string
	var password func() string
	cmd := e.anonymousCommand("signup USERNAME --password P [--display-name N]", "create an account (does not log in)", exactly("USERNAME"),
		func(ctx context.Context, c *client.Client, args []string) error {
			name := display
			if name == "" {
				name = args[0]
			}
			uctx, cancel := e.unary(ctx)
			defer cancel()
			p, err := c.SignUp(uctx, args[0], password(), name)
			if err != nil {
				return err
			}
			return show(e, p, func(p *chatv1.Profile) { e.printf("signed up %s (%q)\n", clean(p.GetUserId()), p.GetDisplayName()) })
		})
	cmd.Long = "USERNAME: 3..32 characters: letters, digits, '.', '_', '-'.\nThe password is 8..1024 bytes; the display name defaults to USERNAME."
	password = passwordFlag(cmd)
	cmd.Flags().StringVar(&display, "display-name", "", "display `NAME`, 1..64 characters (default USERNAME)")
	return cmd
}

func (e *env) loginCmd() *cobra.Command {
	var device string
	var password func() string
	cmd := e.anonymousCommand("login USERNAME --password P [--device NAME]", "log in as a new device and store its credentials in the config dir", exactly("USERNAME"),
		func(ctx context.Context, c *client.Client, args []string) error {
			uctx, cancel := e.unary(ctx)
			defer cancel()
			resp, err := c.LogIn(uctx, args[0], password(), device)
			if err != nil {
				return err
			}
			cr := &credentials{
				Server:     e.serverAddr(),
				Username:   resp.GetUserId(),
				DeviceID:   resp.GetDeviceId(),
				DeviceName: device,
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
			resp.AccessToken = "" // the token stays in the config dir, not on stdout
			return show(e, resp, func(*chatv1.LogInResponse) {
				e.printf("logged in as %s, device %s (%s) on %s\n", clean(cr.Username), cr.DeviceID, clean(device), cr.Server)
			})
		})
	cmd.Long = "Stores server, username, device_id and bearer token in <config-dir>/credentials.json (mode 0600)."
	password = passwordFlag(cmd)
	host, _ := os.Hostname()
	cmd.Flags().StringVar(&device, "device", truncate("chatctl@"+host, 64), "device `NAME`, 1..64 characters")
	return cmd
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) > n {
		return string(r[:n])
	}
	return s
}

func (e *env) logoutCmd() *cobra.Command {
	return e.command("logout", "revoke this device's session and delete the stored credentials", exactly(),
		func(ctx context.Context, c *client.Client, _ []string) error {
			uctx, cancel := e.unary(ctx)
			defer cancel()
			// A session the server no longer accepts is as good as logged out.
			if err := c.LogOut(uctx); err != nil && status.Code(err) != codes.Unauthenticated {
				return err
			}
			if err := removeCredentials(e.configDir); err != nil {
				return status.Errorf(codes.FailedPrecondition, "removing credentials: %v", err)
			}
			return e.report(map[string]any{"loggedOut": true, "username": e.creds.Username, "deviceId": e.creds.DeviceID},
				"logged out %s (device %s)\n", clean(e.creds.Username), e.creds.DeviceID)
		})
}

func (e *env) whoamiCmd() *cobra.Command {
	return e.command("whoami", "show the logged-in user, device, server and the device's cursor", exactly(),
		func(ctx context.Context, c *client.Client, _ []string) error {
			resp, err := rpc(ctx, e, c.Account().ListDevices, &chatv1.ListDevicesRequest{})
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
			return e.report(struct {
				UserID     string `json:"userId"`
				DeviceID   string `json:"deviceId"`
				DeviceName string `json:"deviceName"`
				Server     string `json:"server"`
				Cursor     uint64 `json:"cursor,string"`
			}{e.creds.Username, cur.GetDeviceId(), cur.GetName(), server, cur.GetCursor()},
				"user    %s\ndevice  %s (%s)\nserver  %s\ncursor  %d\n",
				clean(e.creds.Username), cur.GetDeviceId(), clean(cur.GetName()), server, cur.GetCursor())
		})
}

func (e *env) devicesCmd() *cobra.Command {
	return e.command("devices", "list your devices with their cursors", exactly(),
		func(ctx context.Context, c *client.Client, _ []string) error {
			resp, err := rpc(ctx, e, c.Account().ListDevices, &chatv1.ListDevicesRequest{})
			if err != nil {
				return err
			}
			return showAll(e, resp.GetDevices(), func(d *chatv1.Device) {
				mark := ""
				if d.GetCurrent() {
					mark = "  (this device)"
				}
				e.printf("%s  %s  created %s  last seen %s  cursor %d%s\n", d.GetDeviceId(), clean(d.GetName()),
					formatTime(d.GetCreatedAt()), formatTime(d.GetLastSeenAt()), d.GetCursor(), mark)
			})
		})
}

func (e *env) devicesRevokeCmd() *cobra.Command {
	var others *bool
	cmd := e.command("revoke DEVICE | --others", "log out one of your devices, or every device but this one", atMost(1, "DEVICE"),
		func(ctx context.Context, c *client.Client, args []string) error {
			if *others == (len(args) == 1) {
				return usagef("name a DEVICE (see chatctl devices) or give --others, not both")
			}
			if *others {
				resp, err := rpc(ctx, e, c.Account().RevokeOtherDevices, &chatv1.RevokeOtherDevicesRequest{})
				if err != nil {
					return err
				}
				ids := resp.GetRevokedDeviceIds()
				if ids == nil {
					ids = []string{}
				}
				return e.report(map[string]any{"revokedDeviceIds": ids},
					"logged out %d other device(s)%s\n", len(ids), listSuffix(ids))
			}
			if _, err := rpc(ctx, e, c.Account().RevokeDevice, &chatv1.RevokeDeviceRequest{DeviceId: args[0]}); err != nil {
				return err
			}
			return e.report(map[string]any{"revokedDeviceIds": []string{args[0]}}, "logged out device %s\n", args[0])
		})
	cmd.Long = `Logs out one of your devices (its id from chatctl devices), or with --others
every device of yours but this one. The device's token stops working at once
and its open streams end within a second, on every server. Revoking this
device itself is chatctl logout (which also deletes the stored credentials).`
	others = cmd.Flags().Bool("others", false, "log out every device but this one")
	return cmd
}

// listSuffix is ": a, b" for a non-empty list.
func listSuffix(ids []string) string {
	if len(ids) == 0 {
		return ""
	}
	return ": " + strings.Join(ids, ", ")
}

func (e *env) profileCmd() *cobra.Command {
	cmd := e.command("profile [USER]", "show a user's profile (default: yourself)", atMost(1, "USER"),
		func(ctx context.Context, c *client.Client, args []string) error {
			user := e.creds.Username
			if len(args) == 1 {
				user = args[0]
			}
			resp, err := rpc(ctx, e, c.Account().GetProfile, &chatv1.GetProfileRequest{Username: user})
			if err != nil {
				return err
			}
			return show(e, resp.GetProfile(), e.printProfile)
		})
	cmd.Long = `To show a user literally named "set", use "chatctl profile -- set".`
	return cmd
}

func (e *env) profileSetCmd() *cobra.Command {
	var display string
	var hide, showPresence bool
	cmd := e.command("set [--display-name N] [--hide-presence|--show-presence]", "change your display name or hide your online status", exactly(),
		func(ctx context.Context, c *client.Client, _ []string) error {
			req := &chatv1.UpdateProfileRequest{DisplayName: display}
			if hide || showPresence {
				req.HidePresence = proto.Bool(hide)
			}
			resp, err := rpc(ctx, e, c.Account().UpdateProfile, req)
			if err != nil {
				return err
			}
			return show(e, resp.GetProfile(), e.printProfile)
		})
	cmd.Flags().StringVar(&display, "display-name", "", "new display `NAME`, 1..64 characters")
	cmd.Flags().BoolVar(&hide, "hide-presence", false, "show as offline to everyone")
	cmd.Flags().BoolVar(&showPresence, "show-presence", false, "show your online status to your contacts again")
	cmd.MarkFlagsMutuallyExclusive("hide-presence", "show-presence")
	cmd.MarkFlagsOneRequired("display-name", "hide-presence", "show-presence")
	return cmd
}

func (e *env) contactsAddCmd() *cobra.Command {
	return e.command("add USER", "add a user to your contacts", exactly("USER"),
		func(ctx context.Context, c *client.Client, args []string) error {
			resp, err := rpc(ctx, e, c.Account().AddContact, &chatv1.AddContactRequest{Username: args[0]})
			if err != nil {
				return err
			}
			return show(e, resp.GetContact(), func(p *chatv1.Profile) {
				e.printf("added contact %s  %q\n", clean(p.GetUserId()), p.GetDisplayName())
			})
		})
}

func (e *env) contactsRemoveCmd() *cobra.Command {
	return e.command("remove USER", "remove a user from your contacts", exactly("USER"),
		func(ctx context.Context, c *client.Client, args []string) error {
			if _, err := rpc(ctx, e, c.Account().RemoveContact, &chatv1.RemoveContactRequest{Username: args[0]}); err != nil {
				return err
			}
			return e.report(map[string]any{"removed": args[0]}, "removed contact %s\n", clean(args[0]))
		})
}

func (e *env) contactsListCmd() *cobra.Command {
	return e.command("list", "list your contacts", exactly(),
		func(ctx context.Context, c *client.Client, _ []string) error {
			resp, err := rpc(ctx, e, c.Account().ListContacts, &chatv1.ListContactsRequest{})
			if err != nil {
				return err
			}
			return showAll(e, resp.GetContacts(), e.printProfile)
		})
}

// ---- messages ----

// sendTarget maps TARGET to the SendParams target.
func sendTarget(target string) client.SendParams {
	if strings.HasPrefix(target, "g:") || strings.HasPrefix(target, "dm:") {
		return client.SendParams{ChannelID: target}
	}
	return client.SendParams{ToUser: target}
}

func (e *env) sendCmd() *cobra.Command {
	var cmid string
	cmd := e.command("send TARGET TEXT... [--client-message-id KEY]", "send a message and print its ack (channel, message_id, created_at)", atLeast(2, "TARGET TEXT"),
		func(ctx context.Context, c *client.Client, args []string) error {
			p := sendTarget(args[0])
			p.Text = strings.Join(args[1:], " ")
			p.ClientMessageID = cmid
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
			return show(e, ack, func(ack *chatv1.SendAck) {
				e.printf("sent  %s  message_id %d  at %s%s\n", clean(ack.GetChannelId()), ack.GetMessageId(),
					formatTime(ack.GetCreatedAt()), duplicateNote(ack, "sent"))
			})
		})
	cmd.Long = `TARGET is a channel id (starting with "g:" or "dm:") or a username (the
direct channel with that user). The remaining arguments are joined with
spaces to form the text; put "--" before text that starts with "-".`
	cmd.Flags().StringVar(&cmid, "client-message-id", "", "idempotency `KEY`, 1..64 bytes (default: random); resending with the same key stores nothing new")
	return cmd
}

func (e *env) historyCmd() *cobra.Command {
	var before, after uint64
	var limit *int
	cmd := e.command("history TARGET [--before ID] [--after ID] [--limit N]", "print a page of a channel's messages, oldest first", exactly("TARGET"),
		func(ctx context.Context, c *client.Client, args []string) error {
			req := &chatv1.GetHistoryRequest{BeforeMessageId: before, AfterMessageId: after, PageSize: int32(*limit)}
			if t := sendTarget(args[0]); t.ChannelID != "" {
				req.ChannelId = t.ChannelID
			} else {
				req.ToUser = t.ToUser
			}
			resp, err := rpc(ctx, e, c.Chat().GetHistory, req)
			if err != nil {
				return err
			}
			if err := showAll(e, resp.GetMessages(), func(m *chatv1.Message) {
				e.printf("%s  (#%d)\n", formatMessage(m), m.GetMessageId())
			}); err != nil {
				return err
			}
			if !e.json && resp.GetMore() {
				flag := "--before"
				if after > 0 {
					flag = "--after"
				}
				e.printf("(more: use %s %d)\n", flag, resp.GetNextMessageId())
			}
			return nil
		})
	cmd.Long = `TARGET is a channel id or a username (the direct channel with that user).
Without --before/--after the newest page is printed. With --json each line
is a Message object.`
	cmd.Flags().Uint64Var(&before, "before", 0, "print messages older than message_id `ID` (exclusive)")
	cmd.Flags().Uint64Var(&after, "after", 0, "print messages newer than message_id `ID` (exclusive), reading forward")
	limit = limitFlag(cmd, 500, "page size `N`, 1..500 (default: the server's, 50)")
	return cmd
}

// ---- channels and groups ----

func (e *env) groupCreateCmd() *cobra.Command {
	var members []string
	cmd := e.command("create NAME [--members a,b]", "create a group channel (you are its owner)", exactly("NAME"),
		func(ctx context.Context, c *client.Client, args []string) error {
			var ids []string
			for _, m := range members {
				if m = strings.TrimSpace(m); m != "" {
					ids = append(ids, m)
				}
			}
			resp, err := rpc(ctx, e, c.Chat().CreateGroup, &chatv1.CreateGroupRequest{Name: args[0], MemberIds: ids})
			if err != nil {
				return err
			}
			return show(e, resp.GetChannel(), e.printChannel)
		})
	cmd.Long = "NAME: 1..100 characters. Prints the new channel."
	cmd.Flags().StringSliceVar(&members, "members", nil, "comma-separated `USERS` to add besides you")
	return cmd
}

func (e *env) groupAddCmd() *cobra.Command {
	var admin, member bool
	cmd := e.command("add GROUP USER [--admin|--member]", "add a user to a group (owners and admins)", exactly("GROUP", "USER"),
		func(ctx context.Context, c *client.Client, args []string) error {
			// Without a flag the role of an existing member is left as it is.
			role := chatv1.MemberRole_MEMBER_ROLE_UNSPECIFIED
			switch {
			case admin:
				role = chatv1.MemberRole_MEMBER_ROLE_ADMIN
			case member:
				role = chatv1.MemberRole_MEMBER_ROLE_MEMBER
			}
			resp, err := rpc(ctx, e, c.Chat().AddMember, &chatv1.AddMemberRequest{ChannelId: args[0], UserId: args[1], Role: role})
			if err != nil {
				return err
			}
			return show(e, resp.GetChannel(), e.printChannel)
		})
	cmd.Flags().BoolVar(&admin, "admin", false, "add the user as an admin (or make a member an admin)")
	cmd.Flags().BoolVar(&member, "member", false, "make an admin a plain member again")
	cmd.MarkFlagsMutuallyExclusive("admin", "member")
	return cmd
}

func (e *env) groupRemoveCmd() *cobra.Command {
	return e.command("remove GROUP USER", "remove a user from a group (admins, or yourself)", exactly("GROUP", "USER"),
		func(ctx context.Context, c *client.Client, args []string) error {
			if _, err := rpc(ctx, e, c.Chat().RemoveMember, &chatv1.RemoveMemberRequest{ChannelId: args[0], UserId: args[1]}); err != nil {
				return err
			}
			return e.report(map[string]any{"channelId": args[0], "removed": args[1]}, "removed %s from %s\n", clean(args[1]), clean(args[0]))
		})
}

func (e *env) groupShowCmd() *cobra.Command {
	return e.command("show GROUP", "show a channel and its members", exactly("GROUP"),
		func(ctx context.Context, c *client.Client, args []string) error {
			resp, err := rpc(ctx, e, c.Chat().GetChannel, &chatv1.GetChannelRequest{ChannelId: args[0]})
			if err != nil {
				return err
			}
			return show(e, resp.GetChannel(), e.printChannel)
		})
}

func (e *env) channelsCmd() *cobra.Command {
	var summary bool
	cmd := e.command("channels [--summary]", "list your channels, most recently active first, with unread counts", exactly(),
		func(ctx context.Context, c *client.Client, _ []string) error {
			if summary {
				resp, err := rpc(ctx, e, c.Chat().ListChannels, &chatv1.ListChannelsRequest{PageSize: 1})
				if err != nil {
					return err
				}
				total, capped := resp.GetTotalUnread(), resp.GetTotalCapped()
				return e.report(map[string]any{"totalUnread": total, "totalCapped": capped}, "total unread %s\n", count(total, capped))
			}
			token := ""
			var total string
			for {
				resp, err := rpc(ctx, e, c.Chat().ListChannels, &chatv1.ListChannelsRequest{PageSize: 500, PageToken: token})
				if err != nil {
					return err
				}
				if token == "" {
					total = count(resp.GetTotalUnread(), resp.GetTotalCapped())
				}
				if err := showAll(e, resp.GetChannels(), func(ch *chatv1.Channel) {
					muted := ""
					if ch.GetMuted() {
						muted = "  muted"
						if u := ch.GetMutedUntil(); u != nil {
							muted += " until " + formatTime(u)
						}
					}
					e.printf("%s  %s  %s  unread %s  last activity %s%s\n", clean(ch.GetChannelId()), channelType(ch.GetType()),
						clean(ch.GetName()), count(ch.GetUnreadCount(), ch.GetUnreadCapped()), formatTime(ch.GetLastActivityAt()), muted)
				}); err != nil {
					return err
				}
				if token = resp.GetNextPageToken(); token == "" {
					break
				}
			}
			if !e.json {
				e.printf("total unread %s\n", total)
			}
			return nil
		})
	cmd.Long = `One line per channel: id, type, name, unread count ("N+" when the server
stopped counting at its cap), last activity, "muted" (and until when) for a
channel you muted; then your total unread count.
With --json each line is a Channel object (unreadCount, readUpTo,
lastMessage, receipts), and nothing else.

With --summary only the total: "total unread N", or with --json one
object {"totalUnread": N, "totalCapped": bool}.`
	cmd.Flags().BoolVar(&summary, "summary", false, "print only your total unread count")
	return cmd
}

// ---- presence ----

func (e *env) printPresence(p *chatv1.Presence) {
	e.printf("%s  %s  last active %s\n", clean(p.GetUserId()), presenceStatus(p.GetStatus()), formatTime(p.GetLastActiveAt()))
}

func (e *env) presenceCmd() *cobra.Command {
	return e.command("presence USER...", "show users' presence (online/offline, last active)", atLeast(1, "at least one USER"),
		func(ctx context.Context, c *client.Client, args []string) error {
			resp, err := rpc(ctx, e, c.Presence().GetPresence, &chatv1.GetPresenceRequest{UserIds: args})
			if err != nil {
				return err
			}
			return showAll(e, resp.GetPresences(), e.printPresence)
		})
}

func (e *env) serversCmd() *cobra.Command {
	var zone *string
	cmd := e.anonymousCommand("servers [--zone Z]", "list the chat servers Discovery recommends, best first, with zone, load and state", exactly(),
		func(ctx context.Context, c *client.Client, _ []string) error {
			resp, err := rpc(ctx, e, c.Discovery().GetEndpoints, &chatv1.GetEndpointsRequest{Zone: *zone})
			if err != nil {
				return err
			}
			return showAll(e, resp.GetEndpoints(), func(ep *chatv1.Endpoint) {
				load := fmt.Sprint(ep.GetLoad())
				if ep.GetCapacity() > 0 {
					load += "/" + fmt.Sprint(ep.GetCapacity())
				}
				e.printf("%-16s %-22s %-22s zone=%-10s streams=%-12s %s %s\n", clean(ep.GetServerId()), clean(ep.GetGrpcAddress()),
					clean(ep.GetHttpAddress()), orDash(clean(ep.GetZone())), load,
					strings.TrimPrefix(ep.GetState().String(), "SERVER_STATE_"), clean(ep.GetVersion()))
			})
		})
	cmd.Long = `Asks Discovery (no log-in needed) which chat servers to connect to and
prints them best first, as a client would try them: serving servers only,
your zone first (--zone, else the answering server's), then the ones with
the most spare capacity. Each line: server id, gRPC address, HTTP address,
zone, open streams (/capacity), state and version. With --json each line
is an Endpoint object.`
	zone = cmd.Flags().String("zone", "", "your zone `Z`: its servers are listed first (default: the answering server's zone)")
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
