package chat

import (
	"context"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// MuteChannel mutes a channel for the caller until req.until (absent:
// forever): the dispatcher sends the caller's devices no push for its
// messages (server/push). Delivery to open streams and unread counts are
// unchanged. An until that is not in the future ends the mute at once
// (as UnmuteChannel) and is answered as given: a mute that has already
// ended. (It was an InvalidArgument; schemathesis found a schema-valid
// request refused for the clock, which the REST document cannot say.)
// Errors: InvalidArgument (malformed channel id or timestamp), NotFound
// (no such channel), PermissionDenied (not a member).
func (s *Service) MuteChannel(ctx context.Context, req *chatv1.MuteChannelRequest) (*chatv1.MuteChannelResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkChannelID(req.GetChannelId()); err != nil {
		return nil, err
	}
	var until time.Time
	if req.Until != nil {
		if err := req.Until.CheckValid(); err != nil {
			return nil, status.Error(codes.InvalidArgument, "until is not a valid timestamp")
		}
		until = req.Until.AsTime().Truncate(time.Millisecond)
	}
	if _, err := s.memberOf(ctx, req.GetChannelId(), p.UserID); err != nil {
		return nil, err
	}
	// Already over: unmuted. A given until of 0001-01-01 (Go's zero time)
	// is a time in the past too, not "forever" (that is an absent until).
	if req.Until != nil && !until.After(time.Now()) {
		if err := s.st.DeleteMute(ctx, p.UserID, req.GetChannelId()); err != nil {
			return nil, s.storeErr(ctx, "DeleteMute", err)
		}
		return &chatv1.MuteChannelResponse{ChannelId: req.GetChannelId(), Until: timestamppb.New(until)}, nil
	}
	if err := s.st.SetMute(ctx, p.UserID, store.Mute{ChannelID: req.GetChannelId(), Until: until}); err != nil {
		return nil, s.storeErr(ctx, "SetMute", err)
	}
	resp := &chatv1.MuteChannelResponse{ChannelId: req.GetChannelId()}
	if req.Until != nil {
		resp.Until = timestamppb.New(until)
	}
	return resp, nil
}

// UnmuteChannel ends the caller's mute of a channel (idempotent; a
// channel the caller left can be unmuted too). Errors: InvalidArgument
// (malformed channel id).
func (s *Service) UnmuteChannel(ctx context.Context, req *chatv1.UnmuteChannelRequest) (*chatv1.UnmuteChannelResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkChannelID(req.GetChannelId()); err != nil {
		return nil, err
	}
	if err := s.st.DeleteMute(ctx, p.UserID, req.GetChannelId()); err != nil {
		return nil, s.storeErr(ctx, "DeleteMute", err)
	}
	return &chatv1.UnmuteChannelResponse{}, nil
}

// addMutes sets muted and muted_until on the caller's channels from one
// read of their mutes.
func (s *Service) addMutes(ctx context.Context, user string, chs []*chatv1.Channel) error {
	ms, err := s.st.ListMutes(ctx, user)
	if err != nil || len(ms) == 0 {
		return err
	}
	now := time.Now()
	byID := make(map[string]store.Mute, len(ms))
	for _, m := range ms {
		if m.Active(now) {
			byID[m.ChannelID] = m
		}
	}
	for _, c := range chs {
		if m, ok := byID[c.GetChannelId()]; ok {
			c.Muted = true
			if !m.Until.IsZero() {
				c.MutedUntil = timestamppb.New(m.Until)
			}
		}
	}
	return nil
}

// UnreadCounts returns user's unread count in channelID and in total, as
// an UnreadEvent would carry them (each capped at the uint32 range); the
// push dispatcher puts them in a push (count and APNs badge).
func (s *Service) UnreadCounts(ctx context.Context, channelID, user string) (channel, total uint32, err error) {
	ev, _, err := s.unreadEvent(ctx, channelID, user)
	if err != nil {
		return 0, 0, err
	}
	return ev.GetUnreadCount(), ev.GetTotalUnread(), nil
}
