// Package client is the Go SDK for chatd.
//
// A Client is one gRPC connection to a chat server plus the bearer token of
// one device session. It exposes the generated service clients (Account,
// Chat, Discovery, Presence) with the token attached to every call, helpers
// for signing up and logging in, and Connect, which opens the device's
// bidirectional Chat stream as a Session.
//
// Typical use:
//
//	c, err := client.Dial("127.0.0.1:9090")
//	if err != nil { ... }
//	defer c.Close()
//	if _, err := c.LogIn(ctx, "alice", "secret-password", "alice-laptop"); err != nil { ... }
//	s, err := c.Connect(ctx)
//	if err != nil { ... }
//	defer s.Close()
//	// Catch up with everything since this device's cursor, then go live.
//	last, err := s.SyncAll(ctx, 0, func(d *chatv1.Delivery) error { show(d); return nil })
//	s.Ack(ctx, last)
//	for d := range s.Deliveries() { show(d); s.AckAsync(d.GetInboxSeq()) }
//	// The stream ended: s.Err() says why (see Session.Err). Reconnect with
//	// c.Connect(ctx, client.WithResumeFrom(s)) and sync again.
//
// Most applications want OpenResilient instead of Connect: a Resilient
// asks Discovery where to connect, follows a server's Drain frame, and
// reconnects, resumes, resends and deduplicates across server restarts and
// failures by itself, handing over one ordered stream of deliveries and
// connection-state events:
//
//	res, err := client.OpenResilient(client.ResilientConfig{Servers: []string{"chat.example.com:9090"}, Token: token})
//	if err != nil { ... }
//	defer res.Close()
//	for d := range res.Deliveries() { show(d); res.AckAsync(d.GetInboxSeq()) }
//	// Closed: res.Err() says why (Unauthenticated: log in again).
//
// A session hands the device's inbox to the application as one sequence:
// SyncAll's callback and then the Deliveries channel, in the order the
// server sent the sync pages and live deliveries, each inbox entry once
// (by inbox_seq, and by (channel_id, message_id) for a message that a
// cluster placed under a second seq), never skipping one. Live deliveries
// that arrive while SyncAll is still handing over its pages wait for it,
// or are held back and handed over by the pages (see Session.Deliveries
// and Session.SyncAll).
//
// Errors returned by the server keep their gRPC status, so callers inspect
// them with status.Code(err). Errors for a single Chat frame (FrameError) are
// converted to status errors with the frame's code as well.
//
// Client and Session are safe for concurrent use by multiple goroutines.
package client

import (
	"context"
	"crypto/tls"
	"sync"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

// Keepalive parameters. The server enforces a minimum client ping interval
// of 20s (pings more frequent than that get the connection closed with
// ENHANCE_YOUR_CALM), so the client pings every 30s while streams are open.
const (
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 10 * time.Second
)

// recvWindow is the connection's and each stream's HTTP/2 receive window,
// in bytes. A static window turns off grpc-go's BDP estimator, which
// otherwise answers the first DATA frame after every round trip with a
// WINDOW_UPDATE and a PING that the server must read and ack: on a chat
// stream, whose frames are small and spaced out, that is nearly every
// frame (docs/performance.md, issue 16: the server's read and write
// syscalls per message fell by half without it). 4 MiB carries a whole
// sync page (the server cuts them at 3 MiB) without waiting for a window
// update.
const recvWindow = 4 << 20

// Option configures Dial.
type Option func(*dialOptions)

type dialOptions struct {
	token    string
	tls      *tls.Config
	grpcOpts []grpc.DialOption
}

// WithToken sets the bearer token sent with every call (as returned by
// LogIn, or stored from an earlier session). SetToken changes it later.
func WithToken(token string) Option {
	return func(o *dialOptions) { o.token = token }
}

// WithTLS makes the connection use TLS with cfg instead of plaintext.
// Without it Dial uses insecure (plaintext) transport credentials, which is
// meant for loopback and trusted networks only: the bearer token travels in
// clear text.
func WithTLS(cfg *tls.Config) Option {
	return func(o *dialOptions) { o.tls = cfg }
}

// WithDialOptions appends raw gRPC dial options, applied after the SDK's own
// (so they can override transport credentials or keepalive parameters).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *dialOptions) { o.grpcOpts = append(o.grpcOpts, opts...) }
}

// Client is a connection to a chat server and the bearer token of one
// device session. It is safe for concurrent use.
type Client struct {
	conn *grpc.ClientConn

	mu    sync.RWMutex
	token string

	account   chatv1.AccountServiceClient
	chat      chatv1.ChatServiceClient
	discovery chatv1.DiscoveryServiceClient
	presence  chatv1.PresenceServiceClient
}

// Dial creates a Client for the server at addr ("host:port", or any gRPC
// target such as "dns:///chat.example.com:9090"). Like grpc.NewClient it
// does not connect eagerly: the first call does, so an unreachable server
// shows up as an Unavailable error from that call, not from Dial. Dial fails
// only for an unparsable target or conflicting options.
func Dial(addr string, opts ...Option) (*Client, error) {
	var o dialOptions
	for _, opt := range opts {
		opt(&o)
	}
	c := &Client{token: o.token}
	tc := insecure.NewCredentials()
	if o.tls != nil {
		tc = credentials.NewTLS(o.tls)
	}
	gopts := []grpc.DialOption{
		grpc.WithTransportCredentials(tc),
		grpc.WithPerRPCCredentials(tokenCredentials{c}),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:    keepaliveTime,
			Timeout: keepaliveTimeout,
		}),
		grpc.WithUserAgent("chatd-go-client"),
		grpc.WithChainUnaryInterceptor(utf8UnaryInterceptor),
		grpc.WithInitialWindowSize(recvWindow),
		grpc.WithInitialConnWindowSize(recvWindow),
	}
	gopts = append(gopts, o.grpcOpts...)
	conn, err := grpc.NewClient(addr, gopts...)
	if err != nil {
		return nil, err
	}
	c.conn = conn
	c.account = chatv1.NewAccountServiceClient(conn)
	c.chat = chatv1.NewChatServiceClient(conn)
	c.discovery = chatv1.NewDiscoveryServiceClient(conn)
	c.presence = chatv1.NewPresenceServiceClient(conn)
	return c, nil
}

// Close closes the connection. Open Sessions end (their Err reports a
// Canceled or Unavailable status).
func (c *Client) Close() error { return c.conn.Close() }

// Conn returns the underlying gRPC connection, for services the SDK does
// not wrap (for example the standard health service).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Account returns the AccountService client (sign-up, log-in, devices,
// profiles, contacts). Calls carry the current token.
func (c *Client) Account() chatv1.AccountServiceClient { return c.account }

// Chat returns the ChatService client (groups, channels, history, and the
// raw Chat stream; prefer Connect for the stream).
func (c *Client) Chat() chatv1.ChatServiceClient { return c.chat }

// Discovery returns the DiscoveryService client (chat server endpoints).
func (c *Client) Discovery() chatv1.DiscoveryServiceClient { return c.discovery }

// Presence returns the PresenceService client (contacts' online status).
func (c *Client) Presence() chatv1.PresenceServiceClient { return c.presence }

// SetToken replaces the bearer token used by subsequent calls. An empty
// token sends no authorization metadata. Streams already open keep the
// token they were opened with.
func (c *Client) SetToken(token string) {
	c.mu.Lock()
	c.token = token
	c.mu.Unlock()
}

// Token returns the current bearer token ("" if none).
func (c *Client) Token() string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.token
}

// SignUp creates an account and returns its profile. It does not log in.
// Errors: InvalidArgument (username 3..32 characters of letters, digits,
// '.', '_', '-'; password 8..1024 bytes; display name 1..64 characters),
// AlreadyExists (the username is taken).
func (c *Client) SignUp(ctx context.Context, username, password, displayName string) (*chatv1.Profile, error) {
	resp, err := c.account.SignUp(ctx, &chatv1.SignUpRequest{
		Username:    username,
		Password:    password,
		DisplayName: displayName,
	})
	if err != nil {
		return nil, err
	}
	return resp.GetProfile(), nil
}

// LogIn starts a device session named deviceName (1..64 characters) and
// stores the returned access token in the client, so every later call and
// Connect are authenticated as that device. Errors: Unauthenticated (unknown
// user or wrong password), InvalidArgument (bad device name).
func (c *Client) LogIn(ctx context.Context, username, password, deviceName string) (*chatv1.LogInResponse, error) {
	resp, err := c.account.LogIn(ctx, &chatv1.LogInRequest{
		Username:   username,
		Password:   password,
		DeviceName: deviceName,
	})
	if err != nil {
		return nil, err
	}
	c.SetToken(resp.GetAccessToken())
	return resp, nil
}

// LogOut revokes the current device session on the server (its open streams
// end with Unauthenticated) and clears the stored token. The token is
// cleared even when the call fails. Errors: Unauthenticated (no valid token).
func (c *Client) LogOut(ctx context.Context) error {
	_, err := c.account.LogOut(ctx, &chatv1.LogOutRequest{})
	c.SetToken("")
	return err
}

// ErrNoToken is returned by Connect when the client has no bearer token. It
// carries codes.Unauthenticated.
var ErrNoToken = status.Error(codes.Unauthenticated, "client: no bearer token (log in first)")

// tokenCredentials attaches the client's current token to each call.
type tokenCredentials struct{ c *Client }

func (t tokenCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	tok := t.c.Token()
	if tok == "" {
		return nil, nil
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity is false so that the token can be used over
// plaintext loopback connections; use WithTLS anywhere else.
func (tokenCredentials) RequireTransportSecurity() bool { return false }
