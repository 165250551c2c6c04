// Package account implements chat.v1.AccountService: sign-up, log-in and
// log-out of devices, device listing, profiles and contacts.
//
// Every handler validates its input before touching the store, answers bad
// input with a precise gRPC status (InvalidArgument, NotFound,
// AlreadyExists, Unauthenticated, ResourceExhausted) and never leaks store
// errors: those are logged with slog and returned as Internal "internal
// error".
//
// It is a gRPC edge: it owns the account-only input rules (passwords,
// display and device names) and maps the domain's errors to status codes;
// the username rule and the contact limit are the domain's
// (store.CanonicalUsername, store.DefaultMaxContacts). It must not import
// a store implementation, an engine (sequence, hub, router, presence) or a
// Redis or database driver: app wires them in through Config.
package account

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"sync"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Defaults for Config fields left zero (MaxContacts: the domain's
// store.DefaultMaxContacts).
const (
	DefaultMaxDevices = 100
)

// PublicMethods are the AccountService methods that need no bearer token;
// pass them in auth.Config.Public.
var PublicMethods = []string{
	chatv1.AccountService_SignUp_FullMethodName,
	chatv1.AccountService_LogIn_FullMethodName,
}

// Config configures a Service.
type Config struct {
	// Store holds users, devices and contacts. Required.
	Store store.Store
	// Auth issues tokens at log-in and revokes them at log-out. Required.
	Auth *auth.Authenticator
	// OnLogout, if not nil, is called after a device has been revoked
	// (log-out, or displaced by MaxDevices); it closes that device's open
	// streams. It must not block for long.
	OnLogout func(userID, deviceID string)
	// OnPresenceHidden, if not nil, is called after the user hid (true) or
	// showed (false) their presence, so that the presence tracker applies
	// it at once. It must not block for long.
	OnPresenceHidden func(userID string, hidden bool)
	// Now returns the current time; default time.Now.
	Now func() time.Time
	// MaxDevices bounds the live (not revoked) devices of one user; a
	// log-in beyond it revokes the oldest live devices. Default 100.
	MaxDevices int
	// MaxContacts bounds one user's contact list. Default
	// store.DefaultMaxContacts (1000).
	MaxContacts int
	// Push configures push target registration (zero: no provider, every
	// target is refused with FailedPrecondition).
	Push PushConfig
}

// Service implements chatv1.AccountServiceServer. It is safe for concurrent
// use. Register it behind auth.Authenticator's interceptors configured with
// PublicMethods as public: every method but SignUp and LogIn reads the
// caller from auth.FromContext.
type Service struct {
	chatv1.UnimplementedAccountServiceServer

	st               store.Store
	auth             *auth.Authenticator
	onLogout         func(userID, deviceID string)
	onPresenceHidden func(userID string, hidden bool)
	now              func() time.Time
	maxDevices       int
	maxContacts      int
	push             PushConfig

	dummyOnce sync.Once
	dummyHash []byte
}

var _ chatv1.AccountServiceServer = (*Service)(nil)

// New returns a Service. It panics if Store or Auth is nil (a wiring bug).
func New(cfg Config) *Service {
	if cfg.Store == nil || cfg.Auth == nil {
		panic("account: Config.Store and Config.Auth are required")
	}
	s := &Service{
		st:               cfg.Store,
		auth:             cfg.Auth,
		onLogout:         cfg.OnLogout,
		onPresenceHidden: cfg.OnPresenceHidden,
		now:              cfg.Now,
		maxDevices:       cfg.MaxDevices,
		maxContacts:      cfg.MaxContacts,
		push:             cfg.Push,
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.maxDevices <= 0 {
		s.maxDevices = DefaultMaxDevices
	}
	if s.maxContacts <= 0 {
		s.maxContacts = store.DefaultMaxContacts
	}
	return s
}

var (
	errNoPrincipal = status.Error(codes.Unauthenticated, "missing bearer token")
	errBadLogin    = status.Error(codes.Unauthenticated, "invalid username or password")
	errUserExists  = status.Error(codes.AlreadyExists, "username is taken")
	// errUserLookAlike: the name's confusable skeleton is an existing
	// user's (store.ErrUsernameLookAlike).
	errUserLookAlike = status.Error(codes.AlreadyExists, "username is taken: it looks like an existing username")
	errNoUser        = status.Error(codes.NotFound, "user not found")
	errNoDevice      = status.Error(codes.NotFound, "device not found")
	errSelfContact   = status.Error(codes.InvalidArgument, "cannot add yourself as a contact")
	errInternal      = status.Error(codes.Internal, "internal error")
)

func caller(ctx context.Context) (auth.Principal, error) {
	p, ok := auth.FromContext(ctx)
	if !ok || p.UserID == "" {
		return auth.Principal{}, errNoPrincipal
	}
	return p, nil
}

// internal logs a failure of the store (or hashing) and returns the error
// the client sees: the context's status if it ended, else Internal.
func internal(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return status.FromContextError(ctx.Err()).Err()
	}
	slog.ErrorContext(ctx, "account: operation failed", "op", op, "err", err)
	return errInternal
}

func profile(u *store.User) *chatv1.Profile {
	return &chatv1.Profile{
		UserId:      u.ID,
		DisplayName: u.DisplayName,
		CreatedAt:   timestamppb.New(u.CreatedAt),
	}
}

// SignUp creates an account. The username's canonical form (see
// store.CanonicalUsername) becomes the user id; a new username must also
// meet the Unicode identifier profile of store.NewUsername (one script or
// an allowed CJK mix with Latin, one digit system, a letter or digit, no
// leading '-'). Errors: InvalidArgument (username, password 8..1024
// bytes, or display name 1..64 characters outside the limits; nothing is
// stored), AlreadyExists "username is taken", AlreadyExists "username
// looks like an existing username" (same confusable skeleton, UTS #39).
func (s *Service) SignUp(ctx context.Context, req *chatv1.SignUpRequest) (*chatv1.SignUpResponse, error) {
	uid, err := newUsername(req.GetUsername())
	if err != nil {
		return nil, err
	}
	if err := checkPassword(req.GetPassword()); err != nil {
		return nil, err
	}
	name, err := cleanName(req.GetDisplayName(), "display name")
	if err != nil {
		return nil, err
	}
	// Cheap early answer for the common duplicate; CreateUser decides.
	if _, err := s.st.GetUser(ctx, uid); err == nil {
		return nil, errUserExists
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, internal(ctx, "SignUp.GetUser", err)
	}
	hash, err := auth.HashPassword(req.GetPassword())
	if err != nil {
		return nil, internal(ctx, "SignUp.HashPassword", err)
	}
	u := &store.User{ID: uid, DisplayName: name, PasswordHash: hash, CreatedAt: s.now().UTC()}
	if err := s.st.CreateUser(ctx, u); err != nil {
		if errors.Is(err, store.ErrUsernameLookAlike) {
			return nil, errUserLookAlike
		}
		if errors.Is(err, store.ErrAlreadyExists) {
			return nil, errUserExists
		}
		return nil, internal(ctx, "SignUp.CreateUser", err)
	}
	return &chatv1.SignUpResponse{Profile: profile(u)}, nil
}

// spendHash runs one password verification against a fixed hash so that a
// log-in for an unknown user takes as long as one with a wrong password.
func (s *Service) spendHash(password string) {
	s.dummyOnce.Do(func() {
		s.dummyHash, _ = auth.HashPassword("chatd-timing-equaliser")
	})
	if s.dummyHash != nil {
		auth.CheckPassword(s.dummyHash, password)
	}
}

// LogIn verifies the password and starts a new device session: a device
// with a random 128-bit hex device_id, and a bearer token for it valid for
// the Authenticator's TokenTTL. If the user already has MaxDevices live
// devices, the oldest are revoked (and OnLogout called for them). Errors:
// InvalidArgument (device name not 1..64 characters, password over 1024
// bytes), Unauthenticated "invalid username or password" (unknown user or
// wrong password; the same message and cost for both).
func (s *Service) LogIn(ctx context.Context, req *chatv1.LogInRequest) (*chatv1.LogInResponse, error) {
	devName, err := cleanName(req.GetDeviceName(), "device name")
	if err != nil {
		return nil, err
	}
	pw := req.GetPassword()
	if len(pw) > MaxPasswordBytes {
		return nil, errPasswordTooLong
	}
	uid, err := canonicalUsername(req.GetUsername())
	if err != nil {
		s.spendHash(pw)
		return nil, errBadLogin
	}
	u, err := s.st.GetUser(ctx, uid)
	if errors.Is(err, store.ErrNotFound) {
		s.spendHash(pw)
		return nil, errBadLogin
	}
	if err != nil {
		return nil, internal(ctx, "LogIn.GetUser", err)
	}
	ok, err := auth.CheckPassword(u.PasswordHash, pw)
	if err != nil {
		return nil, internal(ctx, "LogIn.CheckPassword", err)
	}
	if !ok {
		return nil, errBadLogin
	}
	if err := s.makeRoomForDevice(ctx, uid); err != nil {
		return nil, err
	}

	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, internal(ctx, "LogIn.rand", err)
	}
	now := s.now().UTC()
	d := &store.Device{
		UserID:     uid,
		DeviceID:   hex.EncodeToString(raw[:]),
		Name:       devName,
		CreatedAt:  now,
		LastSeenAt: now,
	}
	token, exp, err := s.auth.Issue(uid, d.DeviceID, now)
	if err != nil {
		return nil, internal(ctx, "LogIn.Issue", err)
	}
	if err := s.st.PutDevice(ctx, d); err != nil {
		return nil, internal(ctx, "LogIn.PutDevice", err)
	}
	return &chatv1.LogInResponse{
		AccessToken: token,
		DeviceId:    d.DeviceID,
		UserId:      uid,
		ExpiresAt:   timestamppb.New(exp),
	}, nil
}

// makeRoomForDevice revokes the user's oldest live devices so that one
// more fits under maxDevices.
func (s *Service) makeRoomForDevice(ctx context.Context, uid string) error {
	devs, err := s.st.ListDevices(ctx, uid) // ordered by CreatedAt
	if err != nil {
		return internal(ctx, "LogIn.ListDevices", err)
	}
	live := 0
	for _, d := range devs {
		if !d.Revoked {
			live++
		}
	}
	for _, d := range devs {
		if live < s.maxDevices {
			break
		}
		if d.Revoked {
			continue
		}
		if err := s.revoke(ctx, d); err != nil {
			return err
		}
		live--
	}
	return nil
}

// revoke marks d revoked durably, then in the local cache, removes its
// push target, then closes its streams.
func (s *Service) revoke(ctx context.Context, d *store.Device) error {
	d.Revoked = true
	if err := s.st.PutDevice(ctx, d); err != nil {
		return internal(ctx, "revoke.PutDevice", err)
	}
	s.auth.Revoke(d.UserID, d.DeviceID)
	s.removePushTarget(ctx, d.UserID, d.DeviceID)
	if s.onLogout != nil {
		s.onLogout(d.UserID, d.DeviceID)
	}
	return nil
}

// LogOut revokes the calling device: its token (and any other token of that
// device) fails with Unauthenticated from now on, and its open streams are
// closed through OnLogout. Errors: Unauthenticated.
func (s *Service) LogOut(ctx context.Context, _ *chatv1.LogOutRequest) (*chatv1.LogOutResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	d, err := s.st.GetDevice(ctx, p.UserID, p.DeviceID)
	if errors.Is(err, store.ErrNotFound) {
		s.auth.Revoke(p.UserID, p.DeviceID)
		return nil, status.Error(codes.Unauthenticated, "session revoked")
	}
	if err != nil {
		return nil, internal(ctx, "LogOut.GetDevice", err)
	}
	if err := s.revoke(ctx, d); err != nil {
		return nil, err
	}
	return &chatv1.LogOutResponse{}, nil
}

// RevokeDevice logs out one of the caller's own devices (the calling one
// too): durably, in this server's authenticator at once, and through
// OnLogout (its streams here end now, on other servers through the
// router). Only the caller's devices are looked up, so another user's
// device is NotFound, as an unknown one. An already revoked device
// succeeds. Errors: Unauthenticated, InvalidArgument (no device_id),
// NotFound "device not found".
func (s *Service) RevokeDevice(ctx context.Context, req *chatv1.RevokeDeviceRequest) (*chatv1.RevokeDeviceResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	id := req.GetDeviceId()
	if id == "" || len(id) > 128 {
		return nil, status.Error(codes.InvalidArgument, "device_id must be 1 to 128 bytes (see ListDevices)")
	}
	d, err := s.st.GetDevice(ctx, p.UserID, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errNoDevice
	}
	if err != nil {
		return nil, internal(ctx, "RevokeDevice.GetDevice", err)
	}
	if d.Revoked {
		return &chatv1.RevokeDeviceResponse{}, nil
	}
	if err := s.revoke(ctx, d); err != nil {
		return nil, err
	}
	return &chatv1.RevokeDeviceResponse{}, nil
}

// RevokeOtherDevices logs out every live device of the caller's but the
// calling one, as RevokeDevice, and returns their ids. Errors:
// Unauthenticated.
func (s *Service) RevokeOtherDevices(ctx context.Context, _ *chatv1.RevokeOtherDevicesRequest) (*chatv1.RevokeOtherDevicesResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	devs, err := s.st.ListDevices(ctx, p.UserID)
	if err != nil {
		return nil, internal(ctx, "RevokeOtherDevices.ListDevices", err)
	}
	out := &chatv1.RevokeOtherDevicesResponse{}
	for _, d := range devs {
		if d.Revoked || d.DeviceID == p.DeviceID {
			continue
		}
		if err := s.revoke(ctx, d); err != nil {
			return nil, err
		}
		out.RevokedDeviceIds = append(out.RevokedDeviceIds, d.DeviceID)
	}
	return out, nil
}

// ListDevices lists the caller's own live (not revoked) devices, oldest
// first, with current=true for the calling device. There is no way to list
// another user's devices. Errors: Unauthenticated.
func (s *Service) ListDevices(ctx context.Context, _ *chatv1.ListDevicesRequest) (*chatv1.ListDevicesResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	devs, err := s.st.ListDevices(ctx, p.UserID)
	if err != nil {
		return nil, internal(ctx, "ListDevices", err)
	}
	out := make([]*chatv1.Device, 0, len(devs))
	for _, d := range devs {
		if d.Revoked {
			continue
		}
		out = append(out, &chatv1.Device{
			DeviceId:   d.DeviceID,
			Name:       d.Name,
			CreatedAt:  timestamppb.New(d.CreatedAt),
			LastSeenAt: timestamppb.New(d.LastSeenAt),
			Cursor:     d.Cursor,
			Current:    d.DeviceID == p.DeviceID,
		})
	}
	return &chatv1.ListDevicesResponse{Devices: out}, nil
}

// GetProfile returns the public profile of the named user (any spelling that
// canonicalises to the user id), or the caller's own when the username is
// Me ("me") or empty; the caller's own profile also carries hide_presence. Errors:
// Unauthenticated, InvalidArgument (not a valid username), NotFound "user
// not found".
func (s *Service) GetProfile(ctx context.Context, req *chatv1.GetProfileRequest) (*chatv1.GetProfileResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	uid := p.UserID
	if name := req.GetUsername(); name != Me && name != "" {
		if uid, err = canonicalUsername(req.GetUsername()); err != nil {
			return nil, err
		}
	}
	u, err := s.getUser(ctx, "GetProfile", uid)
	if err != nil {
		return nil, err
	}
	pr := profile(u)
	if uid == p.UserID {
		pr.HidePresence = u.PresenceHidden
		if pr.PushPreviews, err = s.st.PushPreviews(ctx, uid); err != nil {
			return nil, internal(ctx, "GetProfile.PushPreviews", err)
		}
	}
	return &chatv1.GetProfileResponse{Profile: pr}, nil
}

// Me is the username GetProfile reads as the caller, as it reads an empty
// one ("GET /v1/users/me" over REST). It is never a username: usernames have at least 3
// characters.
const Me = "me"

func (s *Service) getUser(ctx context.Context, op, uid string) (*store.User, error) {
	u, err := s.st.GetUser(ctx, uid)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errNoUser
	}
	if err != nil {
		return nil, internal(ctx, op+".GetUser", err)
	}
	return u, nil
}

// UpdateProfile sets the caller's display name (trimmed, NFC, 1..64
// characters, no control or format characters) and returns the new
// profile. Errors: Unauthenticated, InvalidArgument, NotFound.
func (s *Service) UpdateProfile(ctx context.Context, req *chatv1.UpdateProfileRequest) (*chatv1.UpdateProfileResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	// An empty display name leaves it unchanged only when the request
	// changes something else.
	setName := req.GetDisplayName() != "" || (req.HidePresence == nil && req.PushPreviews == nil)
	var name string
	if setName {
		if name, err = cleanName(req.GetDisplayName(), "display name"); err != nil {
			return nil, err
		}
	}
	if setName {
		if err := s.st.UpdateDisplayName(ctx, p.UserID, name); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return nil, errNoUser
			}
			return nil, internal(ctx, "UpdateProfile", err)
		}
	}
	if req.HidePresence != nil {
		hidden := req.GetHidePresence()
		if err := s.st.SetPresenceHidden(ctx, p.UserID, hidden); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return nil, errNoUser
			}
			return nil, internal(ctx, "UpdateProfile", err)
		}
		if s.onPresenceHidden != nil {
			s.onPresenceHidden(p.UserID, hidden)
		}
	}
	if req.PushPreviews != nil {
		if err := s.st.SetPushPreviews(ctx, p.UserID, req.GetPushPreviews()); err != nil {
			return nil, internal(ctx, "UpdateProfile.SetPushPreviews", err)
		}
	}
	u, err := s.getUser(ctx, "UpdateProfile", p.UserID)
	if err != nil {
		return nil, err
	}
	pr := profile(u)
	pr.HidePresence = u.PresenceHidden
	if pr.PushPreviews, err = s.st.PushPreviews(ctx, p.UserID); err != nil {
		return nil, internal(ctx, "UpdateProfile.PushPreviews", err)
	}
	return &chatv1.UpdateProfileResponse{Profile: pr}, nil
}

// AddContact adds the named user to the caller's contacts (idempotent) and
// returns their profile. Errors: Unauthenticated, InvalidArgument (invalid
// username, or the caller themself), NotFound "user not found",
// ResourceExhausted (the list already holds MaxContacts).
func (s *Service) AddContact(ctx context.Context, req *chatv1.AddContactRequest) (*chatv1.AddContactResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	cid, err := canonicalUsername(req.GetUsername())
	if err != nil {
		return nil, err
	}
	if cid == p.UserID {
		return nil, errSelfContact
	}
	u, err := s.getUser(ctx, "AddContact", cid)
	if err != nil {
		return nil, err
	}
	already, err := s.st.IsContact(ctx, p.UserID, cid)
	if err != nil {
		return nil, internal(ctx, "AddContact.IsContact", err)
	}
	if !already {
		ids, err := s.st.ListContacts(ctx, p.UserID)
		if err != nil {
			return nil, internal(ctx, "AddContact.ListContacts", err)
		}
		if len(ids) >= s.maxContacts {
			return nil, status.Errorf(codes.ResourceExhausted,
				"contact list is full (at most %d contacts)", s.maxContacts)
		}
		if err := s.st.AddContact(ctx, p.UserID, cid); err != nil {
			return nil, internal(ctx, "AddContact", err)
		}
	}
	return &chatv1.AddContactResponse{Contact: profile(u)}, nil
}

// RemoveContact removes the named user from the caller's contacts
// (idempotent: removing a non-contact succeeds). Errors: Unauthenticated,
// InvalidArgument (invalid username).
func (s *Service) RemoveContact(ctx context.Context, req *chatv1.RemoveContactRequest) (*chatv1.RemoveContactResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	cid, err := canonicalUsername(req.GetUsername())
	if err != nil {
		return nil, err
	}
	if err := s.st.RemoveContact(ctx, p.UserID, cid); err != nil {
		return nil, internal(ctx, "RemoveContact", err)
	}
	return &chatv1.RemoveContactResponse{}, nil
}

// ListContacts returns the profiles of the caller's contacts in ascending
// user id order (at most MaxContacts). Errors: Unauthenticated.
func (s *Service) ListContacts(ctx context.Context, _ *chatv1.ListContactsRequest) (*chatv1.ListContactsResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	ids, err := s.st.ListContacts(ctx, p.UserID)
	if err != nil {
		return nil, internal(ctx, "ListContacts", err)
	}
	out := make([]*chatv1.Profile, 0, len(ids))
	for _, id := range ids {
		u, err := s.st.GetUser(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, internal(ctx, "ListContacts.GetUser", err)
		}
		out = append(out, profile(u))
	}
	return &chatv1.ListContactsResponse{Contacts: out}, nil
}
