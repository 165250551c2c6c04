package chat

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/grpcerr"
	"github.com/chatd/chatd/server/hub"
	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/router/local"
	"github.com/chatd/chatd/server/store"
)

// TestStreamEndsWhenTokenExpires: an idle stream (no frame, no heartbeat)
// ends with Unauthenticated, reason TOKEN_EXPIRED, at the moment its
// token expires, not at its next frame; what is sent to the user after
// that never reaches it.
func TestStreamEndsWhenTokenExpires(t *testing.T) {
	const ttl = 1500 * time.Millisecond
	e := newEnv(t, envConfig{tokenTTL: ttl})
	e.users("alice", "bob")
	issued := time.Now()
	a := e.open("alice", "a1") // its token expires at issued+ttl (or a little later)
	b := e.open("bob", "b1")
	b.ackOf(b.sendTo("alice", "m1", "before"))
	if got := a.deliveries(1); got[0].GetMessage().GetText() != "before" {
		t.Fatalf("alice got %v", got)
	}
	st := a.ended()
	took := time.Since(issued)
	if st.Code() != codes.Unauthenticated || st.Message() != "token expired" || grpcerr.Reason(st.Err()) != store.ReasonTokenExpired {
		t.Fatalf("stream ended with %v (reason %q), want Unauthenticated token expired, TOKEN_EXPIRED", st, grpcerr.Reason(st.Err()))
	}
	// The token's expiry is stored in whole milliseconds, so the stream may
	// end a fraction of a millisecond before issued+ttl.
	if took < ttl-50*time.Millisecond || took > ttl+time.Second {
		t.Fatalf("stream ended %v after the token was issued, want at its expiry (%v)", took, ttl)
	}
	if a.delivered.Load() != 1 {
		t.Fatalf("alice's stream got %d deliveries, want 1", a.delivered.Load())
	}
}

// TestNothingSentAfterExpiry: the writer's send refuses every frame once
// the token has expired, even when the expiry timer has not been taken
// yet (a select picks any ready case), and once the session is closed.
func TestNothingSentAfterExpiry(t *testing.T) {
	h := hub.New(hub.Config{})
	h.SetRouter(local.New(func(router.Event) {}))
	sess, err := h.Register(t.Context(), "alice", "a1", 16)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Unregister(sess)
	f := &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Delivery{Delivery: &chatv1.Delivery{InboxSeq: 1}}}
	// gs is nil: a send that got past the checks would panic.
	st := &stream{s: &Service{}, sess: sess, p: auth.Principal{UserID: "alice", DeviceID: "a1", ExpiresAt: time.Now().Add(-time.Millisecond)}}
	if err := st.send(f); err != auth.ErrExpired {
		t.Fatalf("send after expiry: %v, want auth.ErrExpired", err)
	}
	st.p.ExpiresAt = time.Now().Add(time.Hour)
	sess.Close(auth.ErrRevoked)
	if err := st.send(f); err != auth.ErrRevoked {
		t.Fatalf("send after the session closed: %v, want its error", err)
	}
}
