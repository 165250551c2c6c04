// Package presencesvc implements chat.v1.PresenceService (GetPresence,
// Subscribe) on a presence.Engine, with the permission rules: a caller
// sees user X only if X has the caller as a contact, and a user who hides
// their presence is offline, without last_active_at, to everyone.
//
// It is the gRPC edge of presence, beside server/chat and server/account:
// it owns the request validation, the per-stream coalescing of changes
// and the mapping of errors to gRPC status codes. The engines and the
// Tracker (server/presence and its sub-packages) know nothing of it; it
// must not import an engine implementation, a store implementation or a
// Redis or database driver.
package presencesvc

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/presence"
	"github.com/chatd/chatd/server/store"
)

// DefaultMaxUsers bounds the users of one Subscribe or GetPresence call
// (store.DefaultMaxContacts).
const DefaultMaxUsers = store.DefaultMaxContacts

// Contacts is what the Service reads from the store.
type Contacts interface {
	// ListContacts returns userID's contacts in ascending id order.
	ListContacts(ctx context.Context, userID string) ([]string, error)
	// IsContact reports whether userID has contactID as a contact.
	IsContact(ctx context.Context, userID, contactID string) (bool, error)
}

var _ Contacts = store.Accounts(nil)

// Config configures a Service.
type Config struct {
	// Engine answers Get and Subscribe. Required (Tracker.Engine()).
	Engine presence.Engine
	// Store holds the contact lists. Required.
	Store Contacts
	// MaxUsers bounds the user_ids of one call, and the contacts an empty
	// user_ids stands for. Default DefaultMaxUsers (1000).
	MaxUsers int
	// RecheckInterval: a Subscribe stream re-checks that a watched user
	// still has the caller as a contact before sending a change, at most
	// once per RecheckInterval per watched user (one IsContact read).
	// Default 30 s; a removal takes effect within it.
	RecheckInterval time.Duration
	// Sessions, if set, re-checks the caller's session (auth.Validate:
	// expiry and revocation) before every change a Subscribe stream sends;
	// a revoked device's stream then ends with Unauthenticated instead.
	Sessions Sessions
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Sessions re-checks a caller's session (*auth.Authenticator).
type Sessions interface {
	Validate(ctx context.Context, p auth.Principal) error
}

// Service implements chatv1.PresenceServiceServer. It is safe for
// concurrent use. Register it behind auth.Authenticator's interceptors:
// both methods read the caller from auth.FromContext.
//
// The permission rule: the caller may see user X if X has the caller as a
// contact (store IsContact(X, caller)), or X is the caller. A user who
// hides their presence (hide_presence) is OFFLINE without last_active_at
// for everyone.
type Service struct {
	chatv1.UnimplementedPresenceServiceServer

	eng      presence.Engine
	st       Contacts
	maxUsers int
	recheck  time.Duration
	sessions Sessions
	log      *slog.Logger
}

var _ chatv1.PresenceServiceServer = (*Service)(nil)

// New returns a Service. Errors (InvalidArgument): no Engine or Store.
func New(cfg Config) (*Service, error) {
	if cfg.Engine == nil || cfg.Store == nil {
		return nil, status.Error(codes.InvalidArgument, "presence: Config.Engine and Config.Store are required")
	}
	if cfg.MaxUsers <= 0 {
		cfg.MaxUsers = DefaultMaxUsers
	}
	if cfg.RecheckInterval <= 0 {
		cfg.RecheckInterval = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Service{eng: cfg.Engine, st: cfg.Store, maxUsers: cfg.MaxUsers, recheck: cfg.RecheckInterval, sessions: cfg.Sessions, log: cfg.Logger}, nil
}

var (
	errUnauthenticated = status.Error(codes.Unauthenticated, "no authenticated caller")
	errInternal        = status.Error(codes.Internal, "internal error")
	errUnavailable     = status.Error(codes.Unavailable, "presence temporarily unavailable, retry")
)

func (s *Service) fail(ctx context.Context, op string, err error, code codes.Code) error {
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return status.FromContextError(ctx.Err()).Err()
	}
	s.log.ErrorContext(ctx, "presence: operation failed", "op", op, "err", err)
	if code == codes.Unavailable {
		return errUnavailable
	}
	return errInternal
}

// targets resolves a request's user_ids into the users the caller may
// watch, canonical, without duplicates, in request order. Empty ids: the
// caller's contacts who have the caller as a contact too (others are left
// out silently). Errors: InvalidArgument (a malformed id, too many ids),
// PermissionDenied naming the first user the caller may not watch,
// Internal.
func (s *Service) targets(ctx context.Context, caller string, ids []string) ([]string, error) {
	if len(ids) > s.maxUsers {
		return nil, status.Errorf(codes.InvalidArgument, "at most %d user_ids per call, got %d", s.maxUsers, len(ids))
	}
	if len(ids) == 0 {
		contacts, err := s.st.ListContacts(ctx, caller)
		if err != nil {
			return nil, s.fail(ctx, "ListContacts", err, codes.Internal)
		}
		if len(contacts) > s.maxUsers {
			contacts = contacts[:s.maxUsers]
		}
		out := contacts[:0]
		for _, c := range contacts {
			ok, err := s.st.IsContact(ctx, c, caller)
			if err != nil {
				return nil, s.fail(ctx, "IsContact", err, codes.Internal)
			}
			if ok {
				out = append(out, c)
			}
		}
		return out, nil
	}
	out := make([]string, 0, len(ids))
	seen := make(map[string]struct{}, len(ids))
	for i, raw := range ids {
		id, err := store.CanonicalUsername(raw)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "user_ids[%d]: %s", i, err.Error())
		}
		if _, dup := seen[id]; dup {
			continue
		}
		seen[id] = struct{}{}
		if id != caller {
			ok, err := s.st.IsContact(ctx, id, caller)
			if err != nil {
				return nil, s.fail(ctx, "IsContact", err, codes.Internal)
			}
			if !ok {
				return nil, status.Errorf(codes.PermissionDenied,
					"not allowed to see the presence of %q: they have not added you as a contact", id)
			}
		}
		out = append(out, id)
	}
	return out, nil
}

// toProto is what a watcher sees of p.
func toProto(p presence.Presence) *chatv1.Presence {
	online, last := p.Visible()
	out := &chatv1.Presence{UserId: p.UserID, Status: chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE}
	if online {
		out.Status = chatv1.PresenceStatus_PRESENCE_STATUS_ONLINE
	}
	if !last.IsZero() {
		out.LastActiveAt = timestamppb.New(last)
	}
	return out
}

// GetPresence returns the presence of each requested user (canonical ids,
// duplicates once, in request order); empty user_ids: of every contact
// who has the caller as a contact. Errors: Unauthenticated,
// InvalidArgument (a malformed id; more than MaxUsers ids),
// PermissionDenied (naming the first user who has not added the caller as
// a contact; unknown users included), Unavailable (the engine failed),
// Internal.
func (s *Service) GetPresence(ctx context.Context, req *chatv1.GetPresenceRequest) (*chatv1.GetPresenceResponse, error) {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return nil, errUnauthenticated
	}
	ids, err := s.targets(ctx, p.UserID, req.GetUserIds())
	if err != nil {
		return nil, err
	}
	ps, err := s.eng.Get(ctx, ids)
	if err != nil {
		return nil, s.fail(ctx, "Get", err, codes.Unavailable)
	}
	out := &chatv1.GetPresenceResponse{Presences: make([]*chatv1.Presence, len(ps))}
	for i, x := range ps {
		out.Presences[i] = toProto(x)
	}
	return out, nil
}

// Subscribe sends the current presence of each requested user (as
// GetPresence resolves user_ids), one SubscribeResponse each, then every
// change of what the caller may see of them (status or last_active_at)
// until the client leaves. Changes are coalesced per user: a subscriber
// that reads slowly gets each user's latest state, never a backlog, and
// never holds up the fan-out to others (the per-subscriber state is
// bounded by the users watched). If a watched user removes the caller
// from their contacts, the caller gets that user OFFLINE (without
// last_active_at) once, at their next change (within RecheckInterval), and
// nothing more about them. The user list is
// fixed when the stream opens: subscribe again to pick up new contacts.
//
// Errors: as GetPresence, before anything is sent; Canceled when the
// client leaves.
func (s *Service) Subscribe(req *chatv1.SubscribeRequest, stream grpc.ServerStreamingServer[chatv1.SubscribeResponse]) error {
	ctx := stream.Context()
	p, ok := auth.FromContext(ctx)
	if !ok {
		return errUnauthenticated
	}
	ids, err := s.targets(ctx, p.UserID, req.GetUserIds())
	if err != nil {
		return err
	}
	w := newWatch(len(ids), time.Now())
	cancel, err := s.eng.Subscribe(ctx, ids, w.push)
	if err != nil {
		return s.fail(ctx, "Subscribe", err, codes.Unavailable)
	}
	defer cancel()
	snap, err := s.eng.Get(ctx, ids)
	if err != nil {
		return s.fail(ctx, "Get", err, codes.Unavailable)
	}
	for _, x := range snap {
		w.seed(x)
		if err := stream.Send(&chatv1.SubscribeResponse{Presence: toProto(x)}); err != nil {
			return err
		}
	}
	// The stream ends at the moment the token expires (a timer, no
	// goroutine), and nothing is sent once it has.
	var expiry <-chan time.Time
	if t, c := p.ExpiryTimer(); t != nil {
		defer t.Stop()
		expiry = c
	}
	var batch []presence.Presence
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-expiry:
			return auth.ErrExpired
		case <-w.sig:
		}
		if p.Expired(time.Now()) {
			return auth.ErrExpired
		}
		if s.sessions != nil {
			if err := s.sessions.Validate(ctx, p); err != nil {
				return err // revoked (or expired): nothing more is sent
			}
		}
		batch = w.take(batch[:0])
		for _, x := range batch {
			msg, err := s.visible(ctx, p.UserID, w, x)
			if err != nil {
				return err
			}
			if msg == nil {
				continue
			}
			if err := stream.Send(&chatv1.SubscribeResponse{Presence: msg}); err != nil {
				return err
			}
		}
	}
}

// visible returns the message to send for report x, or nil if the watcher
// already shows that. It re-checks the permission.
func (s *Service) visible(ctx context.Context, caller string, w *watch, x presence.Presence) (*chatv1.Presence, error) {
	msg := toProto(x)
	if !w.differs(x.UserID, msg) {
		return nil, nil
	}
	if x.UserID != caller && w.due(x.UserID, s.recheck) {
		ok, err := s.st.IsContact(ctx, x.UserID, caller)
		if err != nil {
			return nil, s.fail(ctx, "IsContact", err, codes.Internal)
		}
		if !ok {
			w.revoke(x.UserID)
			msg = &chatv1.Presence{UserId: x.UserID, Status: chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE}
		}
	}
	w.sent(x.UserID, msg)
	return msg, nil
}

// watch is one Subscribe stream's state: the newest report per user not
// yet handled (coalesced), and what was sent.
type watch struct {
	mu      sync.Mutex
	known   map[string]uint64            // newest version accepted per user
	pending map[string]presence.Presence // accepted, not yet handled
	shown   map[string]shown             // last sent per user
	revoked map[string]bool
	checked map[string]time.Time // last permission check, if after start
	start   time.Time            // the permission check of Subscribe
	sig     chan struct{}
}

type shown struct {
	status chatv1.PresenceStatus
	last   int64 // Unix ms, 0 if none
}

func newWatch(n int, start time.Time) *watch {
	return &watch{
		start:   start,
		checked: make(map[string]time.Time),
		known:   make(map[string]uint64, n),
		pending: make(map[string]presence.Presence),
		shown:   make(map[string]shown, n),
		sig:     make(chan struct{}, 1),
	}
}

// push is the engine callback: it never blocks.
func (w *watch) push(p presence.Presence) {
	w.mu.Lock()
	if v, ok := w.known[p.UserID]; (ok && p.Version <= v) || w.revoked[p.UserID] {
		w.mu.Unlock()
		return
	}
	w.known[p.UserID] = p.Version
	w.pending[p.UserID] = p
	w.mu.Unlock()
	select {
	case w.sig <- struct{}{}:
	default:
	}
}

// seed records a snapshot report (already sent).
func (w *watch) seed(p presence.Presence) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if v, ok := w.known[p.UserID]; ok && p.Version <= v {
		// A newer report arrived first; it is pending and will be sent.
		w.shown[p.UserID] = toShown(toProto(p))
		return
	}
	w.known[p.UserID] = p.Version
	w.shown[p.UserID] = toShown(toProto(p))
	delete(w.pending, p.UserID)
}

func (w *watch) take(buf []presence.Presence) []presence.Presence {
	w.mu.Lock()
	defer w.mu.Unlock()
	for u, p := range w.pending {
		buf = append(buf, p)
		delete(w.pending, u)
	}
	return buf
}

func toShown(m *chatv1.Presence) shown {
	var last int64
	if m.GetLastActiveAt() != nil {
		last = m.GetLastActiveAt().AsTime().UnixMilli()
	}
	return shown{status: m.GetStatus(), last: last}
}

func (w *watch) differs(user string, m *chatv1.Presence) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.revoked[user] {
		return false
	}
	old, ok := w.shown[user]
	return !ok || old != toShown(m)
}

func (w *watch) sent(user string, m *chatv1.Presence) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.shown[user] = toShown(m)
}

// due reports whether user's permission must be checked again, and if so
// records the check as done now. Only the sending goroutine calls it.
func (w *watch) due(user string, every time.Duration) bool {
	now := time.Now()
	last, ok := w.checked[user]
	if !ok {
		last = w.start
	}
	if now.Sub(last) < every {
		return false
	}
	w.checked[user] = now
	return true
}

func (w *watch) revoke(user string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.revoked == nil {
		w.revoked = make(map[string]bool)
	}
	w.revoked[user] = true
	delete(w.pending, user)
}
