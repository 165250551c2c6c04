package chat

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/store"
)

// Page sizes of the unary RPCs.
const (
	DefaultChannelsPage = 100
	MaxChannelsPage     = 500
	DefaultHistoryPage  = 50
	MaxHistoryPage      = 500
)

var (
	errGroupFull     = status.Error(codes.FailedPrecondition, fmt.Sprintf("a group holds at most %d members", store.MaxGroupMembers))
	errDirectMembers = status.Error(codes.FailedPrecondition, "the members of a direct channel cannot change")
	errNotAdmin      = status.Error(codes.PermissionDenied, "only the group's owner and admins may do this")
	errRemoveOwner   = status.Error(codes.PermissionDenied, "only the owner may remove the owner")
	errOwnerLeaves   = status.Error(codes.FailedPrecondition, "the owner cannot leave while no other member is an admin: make someone an admin first")
	errMemberMissing = status.Error(codes.NotFound, "user is not a member of the channel")
	errRole          = status.Error(codes.InvalidArgument, "role must be MEMBER or ADMIN")
	errPageSize      = func(max int) error {
		return status.Error(codes.InvalidArgument, fmt.Sprintf("page_size must be 0 (default) or 1 to %d", max))
	}
	errPageToken     = status.Error(codes.InvalidArgument, "invalid page_token")
	errHistoryTarget = status.Error(codes.InvalidArgument, "give exactly one of channel_id and to_user")
	errUserID        = status.Error(codes.InvalidArgument, "user_id is required")
)

// CreateGroup creates a group channel owned by the caller with the given
// members. The name is 1..100 characters without control characters;
// member_ids are canonicalised, de-duplicated and the caller is dropped
// from them before they are counted (groupMemberIDs). Errors:
// InvalidArgument (name, malformed member id, more than
// MaxMemberIDsPerRequest entries), NotFound (a member does not exist; the
// message names it), FailedPrecondition (more than 100 distinct members in
// total, the caller included).
func (s *Service) CreateGroup(ctx context.Context, req *chatv1.CreateGroupRequest) (*chatv1.CreateGroupResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkGroupName(req.GetName()); err != nil {
		return nil, err
	}
	others, err := s.groupMemberIDs(p.UserID, req.GetMemberIds())
	if err != nil {
		return nil, err
	}
	for _, id := range others {
		if _, err := s.st.GetUser(ctx, id); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return nil, status.Errorf(codes.NotFound, "user %q not found", id)
			}
			return nil, s.storeErr(ctx, "CreateGroup.GetUser", err)
		}
	}
	var rnd [16]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, s.storeErr(ctx, "CreateGroup.rand", err)
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	ch := &store.Channel{ID: "g:" + hex.EncodeToString(rnd[:]), Type: store.ChannelGroup, Name: req.GetName(), CreatedAt: now, CreatedBy: p.UserID}
	members := make([]store.Member, 0, len(others)+1)
	members = append(members, store.Member{ChannelID: ch.ID, UserID: p.UserID, Role: store.RoleOwner, JoinedAt: now})
	for _, id := range others {
		members = append(members, store.Member{ChannelID: ch.ID, UserID: id, Role: store.RoleMember, JoinedAt: now})
	}
	if err := s.st.CreateChannel(ctx, ch, members); err != nil {
		if errors.Is(err, store.ErrGroupFull) {
			return nil, errGroupFull
		}
		return nil, s.storeErr(ctx, "CreateGroup.CreateChannel", err)
	}
	return &chatv1.CreateGroupResponse{Channel: channelProto(ch, members, 0, time.Time{}, p.UserID)}, nil
}

// MaxMemberIDsPerRequest bounds the raw member_ids list of one CreateGroup
// request, duplicates included: a cap on the request's size before any
// Unicode work or lookup, well above what MaxGroupMembers distinct members
// spelt a few ways need. It is not the member limit, which counts
// distinct canonical ids.
const MaxMemberIDsPerRequest = 10 * store.MaxGroupMembers

// groupMemberIDs canonicalises the raw member ids of a new group owned by
// owner, drops duplicates and the owner, and checks the member limit on
// what remains (the owner included): the rule every membership change
// shares, so that "Bob", "BOB" and a fullwidth "ｂｏｂ" are one member and
// count once. Errors: InvalidArgument (a request naming more than
// MaxMemberIDsPerRequest ids, a malformed id), FailedPrecondition (more
// than store.MaxGroupMembers distinct members).
func (s *Service) groupMemberIDs(owner string, raw []string) ([]string, error) {
	if len(raw) > MaxMemberIDsPerRequest {
		return nil, status.Errorf(codes.InvalidArgument,
			"member_ids lists %d entries: a request may list at most %d (duplicates included)", len(raw), MaxMemberIDsPerRequest)
	}
	seen := map[string]bool{owner: true}
	others := make([]string, 0, min(len(raw), store.MaxGroupMembers))
	for _, r := range raw {
		id, err := s.canonical(r)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid member id %q", truncate(r, 64))
		}
		if seen[id] {
			continue
		}
		seen[id] = true
		others = append(others, id)
		if len(others)+1 > store.MaxGroupMembers {
			return nil, errGroupFull
		}
	}
	return others, nil
}

// AddMember adds user_id to a group with role MEMBER (default) or ADMIN;
// adding an existing member changes its role if one is given (never the
// owner's). user_id is canonicalised first, so an existing member under
// another spelling is a role change, never a new member counted against
// the limit. Only the group's owner and admins may add. Errors:
// InvalidArgument (ids, role), NotFound (no such channel or user),
// PermissionDenied (caller not a member, or not owner/admin),
// FailedPrecondition (the group holds 100 members; a direct channel).
func (s *Service) AddMember(ctx context.Context, req *chatv1.AddMemberRequest) (*chatv1.AddMemberResponse, error) {
	p, ch, me, err := s.groupForChange(ctx, req.GetChannelId())
	if err != nil {
		return nil, err
	}
	if me.Role != store.RoleOwner && me.Role != store.RoleAdmin {
		return nil, errNotAdmin
	}
	role := store.RoleMember
	switch req.GetRole() {
	case chatv1.MemberRole_MEMBER_ROLE_UNSPECIFIED, chatv1.MemberRole_MEMBER_ROLE_MEMBER:
	case chatv1.MemberRole_MEMBER_ROLE_ADMIN:
		role = store.RoleAdmin
	default:
		return nil, errRole
	}
	uid, err := s.userIDArg(req.GetUserId())
	if err != nil {
		return nil, err
	}
	if _, err := s.st.GetUser(ctx, uid); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "user %q not found", uid)
		}
		return nil, s.storeErr(ctx, "AddMember.GetUser", err)
	}
	change, joined := true, true
	if cur, err := s.st.GetMember(ctx, ch.ID, uid); err == nil {
		joined = false
		// Already a member: keep the owner; change the role only if asked.
		change = cur.Role != store.RoleOwner && req.GetRole() != chatv1.MemberRole_MEMBER_ROLE_UNSPECIFIED && cur.Role != role
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, s.storeErr(ctx, "AddMember.GetMember", err)
	}
	if change {
		m := store.Member{ChannelID: ch.ID, UserID: uid, Role: role, JoinedAt: s.now().UTC().Truncate(time.Millisecond)}
		if err := s.st.AddMember(ctx, m, store.MaxGroupMembers); err != nil {
			switch {
			case errors.Is(err, store.ErrGroupFull):
				return nil, errGroupFull
			case errors.Is(err, store.ErrNotFound):
				return nil, errChannelMissing
			}
			return nil, s.storeErr(ctx, "AddMember", err)
		}
		if joined {
			// The history from before joining is not unread.
			if err := s.startMarkers(ctx, ch.ID, uid); err != nil {
				return nil, s.storeErr(ctx, "AddMember.startMarkers", err)
			}
		}
	}
	c, err := s.loadChannel(ctx, ch, p.UserID)
	if err != nil {
		return nil, err
	}
	return &chatv1.AddMemberResponse{Channel: c}, nil
}

// RemoveMember removes user_id from a group. Owners and admins may remove
// members (only the owner may remove the owner); anyone may remove
// themselves. Errors: InvalidArgument, NotFound (no such channel, or the
// user is not a member), PermissionDenied, FailedPrecondition (a direct
// channel).
func (s *Service) RemoveMember(ctx context.Context, req *chatv1.RemoveMemberRequest) (*chatv1.RemoveMemberResponse, error) {
	p, ch, me, err := s.groupForChange(ctx, req.GetChannelId())
	if err != nil {
		return nil, err
	}
	uid, err := s.userIDArg(req.GetUserId())
	if err != nil {
		return nil, err
	}
	if uid == p.UserID && me.Role == store.RoleOwner {
		// The owner may leave only if someone else can still run the group.
		ms, err := s.st.ListMembers(ctx, ch.ID)
		if err != nil {
			return nil, s.storeErr(ctx, "RemoveMember.ListMembers", err)
		}
		others, admins := 0, 0
		for _, m := range ms {
			if m.UserID == uid {
				continue
			}
			others++
			if m.Role == store.RoleOwner || m.Role == store.RoleAdmin {
				admins++
			}
		}
		if others > 0 && admins == 0 {
			return nil, errOwnerLeaves
		}
	}
	if uid != p.UserID {
		if me.Role != store.RoleOwner && me.Role != store.RoleAdmin {
			return nil, errNotAdmin
		}
		target, err := s.st.GetMember(ctx, ch.ID, uid)
		if err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return nil, errMemberMissing
			}
			return nil, s.storeErr(ctx, "RemoveMember.GetMember", err)
		}
		if target.Role == store.RoleOwner && me.Role != store.RoleOwner {
			return nil, errRemoveOwner
		}
	}
	if err := s.st.RemoveMember(ctx, ch.ID, uid); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, errMemberMissing
		}
		return nil, s.storeErr(ctx, "RemoveMember", err)
	}
	return &chatv1.RemoveMemberResponse{}, nil
}

// groupForChange returns the caller, the channel whose membership is
// about to change and the caller's membership of it. Errors:
// Unauthenticated (no caller), InvalidArgument (malformed id), NotFound,
// FailedPrecondition (a direct channel), PermissionDenied (not a member).
func (s *Service) groupForChange(ctx context.Context, channelID string) (auth.Principal, *store.Channel, *store.Member, error) {
	p, err := principal(ctx)
	if err != nil {
		return p, nil, nil, err
	}
	if err := checkChannelID(channelID); err != nil {
		return p, nil, nil, err
	}
	ch, err := s.channel(ctx, channelID)
	if err != nil {
		return p, nil, nil, err
	}
	if ch.Type != store.ChannelGroup {
		return p, nil, nil, errDirectMembers
	}
	me, err := s.memberOf(ctx, ch.ID, p.UserID)
	if err != nil {
		return p, nil, nil, err
	}
	return p, ch, me, nil
}

// userIDArg canonicalises a request's user_id. Errors: InvalidArgument
// (empty or invalid).
func (s *Service) userIDArg(id string) (string, error) {
	if id == "" {
		return "", errUserID
	}
	uid, err := s.canonical(id)
	if err != nil {
		return "", status.Error(codes.InvalidArgument, "invalid user_id")
	}
	return uid, nil
}

// ListChannels returns the caller's channels, most recently active first,
// with members, last_message_id and last_activity_at, and the caller's
// conversation state (see addState): last_message, unread_count, read_up_to
// and the other members' receipts; every page carries total_unread.
// page_size: 0 means 100, at most 500; page_token is the opaque
// next_page_token of the previous page. Errors: InvalidArgument
// (page_size, page_token).
func (s *Service) ListChannels(ctx context.Context, req *chatv1.ListChannelsRequest) (*chatv1.ListChannelsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = DefaultChannelsPage
	}
	if size < 0 || size > MaxChannelsPage {
		return nil, errPageSize(MaxChannelsPage)
	}
	offset := 0
	if t := req.GetPageToken(); t != "" {
		n, err := strconv.ParseUint(strings.TrimPrefix(t, "o"), 10, 31)
		if err != nil || !strings.HasPrefix(t, "o") {
			return nil, errPageToken
		}
		offset = int(n)
	}
	acts, err := s.st.ListUserChannels(ctx, p.UserID, offset, size+1)
	if err != nil {
		return nil, s.storeErr(ctx, "ListUserChannels", err)
	}
	resp := &chatv1.ListChannelsResponse{}
	if len(acts) > size {
		acts = acts[:size]
		resp.NextPageToken = "o" + strconv.Itoa(offset+size)
	}
	for _, a := range acts {
		ch, err := s.st.GetChannel(ctx, a.ChannelID)
		if err != nil {
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			return nil, s.storeErr(ctx, "ListChannels.GetChannel", err)
		}
		ms, err := s.st.ListMembers(ctx, ch.ID)
		if err != nil {
			return nil, s.storeErr(ctx, "ListChannels.ListMembers", err)
		}
		resp.Channels = append(resp.Channels, channelProto(ch, ms, a.LastMessageID, a.LastActivity, p.UserID))
	}
	if err := s.addState(ctx, p.UserID, resp); err != nil {
		return nil, s.storeErr(ctx, "ListChannels.state", err)
	}
	if err := s.addMutes(ctx, p.UserID, resp.Channels); err != nil {
		return nil, s.storeErr(ctx, "ListChannels.mutes", err)
	}
	return resp, nil
}

// GetChannel returns one channel with its members. Errors: InvalidArgument
// (malformed id), NotFound (no such channel), PermissionDenied (the caller
// is not a member).
func (s *Service) GetChannel(ctx context.Context, req *chatv1.GetChannelRequest) (*chatv1.GetChannelResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkChannelID(req.GetChannelId()); err != nil {
		return nil, err
	}
	if _, err := s.memberOf(ctx, req.GetChannelId(), p.UserID); err != nil {
		return nil, err
	}
	ch, err := s.channel(ctx, req.GetChannelId())
	if err != nil {
		return nil, err
	}
	c, err := s.loadChannel(ctx, ch, p.UserID)
	if err != nil {
		return nil, err
	}
	if err := s.addMutes(ctx, p.UserID, []*chatv1.Channel{c}); err != nil {
		return nil, s.storeErr(ctx, "GetChannel.mutes", err)
	}
	return &chatv1.GetChannelResponse{Channel: c}, nil
}

// loadChannel reads a channel's members and newest message into its proto.
func (s *Service) loadChannel(ctx context.Context, ch *store.Channel, viewer string) (*chatv1.Channel, error) {
	ms, err := s.st.ListMembers(ctx, ch.ID)
	if err != nil {
		return nil, s.storeErr(ctx, "ListMembers", err)
	}
	last, err := s.st.LastMessageID(ctx, ch.ID)
	if err != nil {
		return nil, s.storeErr(ctx, "LastMessageID", err)
	}
	var at time.Time
	if last > 0 {
		m, err := s.st.GetMessage(ctx, ch.ID, last)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, s.storeErr(ctx, "GetMessage", err)
		}
		if m != nil {
			at = m.CreatedAt
		}
	}
	return channelProto(ch, ms, last, at, viewer), nil
}

// GetHistory returns a page of a channel's messages in ascending
// message_id order: backward from before_message_id (exclusive; 0 = the
// newest) or, when after_message_id is set, forward from it. The page is
// folded (edits and deletes applied) unless raw is set; see historyPage. The channel is
// channel_id, or the direct channel with to_user (empty if they never
// talked). page_size: 0 means 50, at most 500. Errors: InvalidArgument
// (target, page_size), NotFound (no such channel or user),
// PermissionDenied (the caller is not a member).
func (s *Service) GetHistory(ctx context.Context, req *chatv1.GetHistoryRequest) (*chatv1.GetHistoryResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = DefaultHistoryPage
	}
	if size < 0 || size > MaxHistoryPage {
		return nil, errPageSize(MaxHistoryPage)
	}
	var channelID string
	switch {
	case req.GetChannelId() != "" && req.GetToUser() == "":
		channelID = req.GetChannelId()
		if err := checkChannelID(channelID); err != nil {
			return nil, err
		}
	case req.GetToUser() != "" && req.GetChannelId() == "":
		peer, err := s.peer(ctx, p.UserID, req.GetToUser())
		if err != nil {
			return nil, err
		}
		channelID = directChannelID(p.UserID, peer)
		if _, err := s.st.GetChannel(ctx, channelID); errors.Is(err, store.ErrNotFound) {
			return &chatv1.GetHistoryResponse{}, nil // they never talked
		}
	default:
		return nil, errHistoryTarget
	}
	if _, err := s.memberOf(ctx, channelID, p.UserID); err != nil {
		return nil, err
	}
	resp, err := s.historyPage(ctx, channelID, p.UserID, req.GetBeforeMessageId(), req.GetAfterMessageId(), size, req.GetRaw())
	if err != nil {
		return nil, s.storeErr(ctx, "History", err)
	}
	return resp, nil
}

// channelProto builds the API view of a channel for viewer: a direct
// channel is named after the other member.
func channelProto(ch *store.Channel, ms []store.Member, lastID uint64, lastAt time.Time, viewer string) *chatv1.Channel {
	c := &chatv1.Channel{
		ChannelId:     ch.ID,
		Type:          chatv1.ChannelType(ch.Type),
		Name:          ch.Name,
		CreatedAt:     timestamppb.New(ch.CreatedAt),
		LastMessageId: lastID,
		Members:       make([]*chatv1.Member, 0, len(ms)),
	}
	if !lastAt.IsZero() {
		c.LastActivityAt = timestamppb.New(lastAt)
	}
	for _, m := range ms {
		c.Members = append(c.Members, &chatv1.Member{UserId: m.UserID, Role: chatv1.MemberRole(m.Role)})
		if ch.Type == store.ChannelDirect && m.UserID != viewer {
			c.Name = m.UserID
		}
	}
	return c
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
