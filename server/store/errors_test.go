package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/chatd/chatd/server/store"
)

func TestErrorCode(t *testing.T) {
	cause := errors.New("disk on fire")
	wrapped := &store.Error{Code: store.CodeUnavailable, Message: "retry", Err: store.ErrNotFound}
	for _, tc := range []struct {
		err  error
		want store.Code
	}{
		{nil, ""},
		{store.Errorf(store.CodeInvalid, "bad %s", "x"), store.CodeInvalid},
		{fmt.Errorf("op: %w", store.Errorf(store.CodeAlreadyExists, "dup")), store.CodeAlreadyExists},
		{wrapped, store.CodeUnavailable}, // the *Error's code wins over its cause's
		{store.ErrNotFound, store.CodeNotFound},
		{fmt.Errorf("get: %w", store.ErrNotFound), store.CodeNotFound},
		{store.ErrAlreadyExists, store.CodeAlreadyExists},
		{store.ErrGroupFull, store.CodeFailedPrecondition},
		{store.ErrInvalidUsername, store.CodeInvalid},
		{context.Canceled, store.CodeCanceled},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), store.CodeDeadlineExceeded},
		{cause, store.CodeInternal},
	} {
		if got := store.ErrorCode(tc.err); got != tc.want {
			t.Errorf("ErrorCode(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
	if !errors.Is(wrapped, store.ErrNotFound) {
		t.Error("an *Error does not unwrap to its cause")
	}
}

func TestErrorText(t *testing.T) {
	e := store.Errorf(store.CodeUnavailable, "router closed")
	if e.Error() != "router closed" || store.ErrorMessage(e) != "router closed" {
		t.Errorf("Error() = %q, ErrorMessage = %q", e.Error(), store.ErrorMessage(e))
	}
	c := &store.Error{Code: store.CodeInternal, Message: "internal error", Err: errors.New("boom")}
	if c.Error() != "internal error: boom" || store.ErrorMessage(fmt.Errorf("op: %w", c)) != "internal error" {
		t.Errorf("Error() = %q, ErrorMessage = %q", c.Error(), store.ErrorMessage(c))
	}
	if store.ErrorMessage(errors.New("secret detail")) != "internal error" || store.ErrorMessage(nil) != "" {
		t.Error("ErrorMessage exposes the text of a plain error")
	}
}
