package chat

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
)

var (
	errMessageID      = status.Error(codes.InvalidArgument, "message_id is required")
	errMessageMissing = status.Error(codes.NotFound, "message not found")
	errNotText        = status.Error(codes.FailedPrecondition, "only text messages can be edited or deleted")
	errNotAuthor      = status.Error(codes.PermissionDenied, "only the author may edit a message")
	errDeleteDenied   = status.Error(codes.PermissionDenied, "only the author, or a group's owner or admin, may delete a message for everyone")
	errDeleted        = status.Error(codes.FailedPrecondition, "message is deleted")
	errTooManyEdits   = status.Error(codes.FailedPrecondition, fmt.Sprintf("a message can be edited at most %d times", MaxEditsPerMessage))
)

// revision is an edit or delete asked for by a frame or an RPC.
type revision struct {
	channelID       string
	messageID       uint64
	clientMessageID string
	text            string // edits
	delete          bool
	forMe           bool // deletes
}

// prepareRevision validates r for p and returns the sequencer request
// that stores it (kind EDIT or DELETE, ref_message_id, recipients: every
// member, or only p for a delete for me), or a duplicate's original ack
// when p used r.clientMessageID before (retries of an edit or delete are
// idempotent like sends, also after the delete made the message
// "deleted"). Errors: InvalidArgument (ids, text), NotFound (channel,
// message, or another user's "for me" row), PermissionDenied (not a
// member; an edit of another user's message; a delete for everyone by
// someone other than the author or a group's owner or admin),
// FailedPrecondition (not a text message; already deleted, for everyone
// or by p for themselves; outside the edit window; too many edits; the
// client_message_id already names a different message of p),
// Internal.
func (s *Service) prepareRevision(ctx context.Context, p auth.Principal, r revision) (*sequence.Request, *chatv1.SendAck, error) {
	if err := checkChannelID(r.channelID); err != nil {
		return nil, nil, err
	}
	if r.messageID == 0 {
		return nil, nil, errMessageID
	}
	if err := checkClientMessageID(r.clientMessageID); err != nil {
		return nil, nil, err
	}
	if !r.delete {
		if err := checkText(r.text); err != nil {
			return nil, nil, err
		}
	}
	me, err := s.memberOf(ctx, r.channelID, p.UserID)
	if err != nil {
		return nil, nil, err
	}
	if d, err := s.st.LookupDedup(ctx, p.UserID, r.clientMessageID); err == nil {
		// The same key for another message is refused, as in the
		// sequencer (the fields below are those the request gets).
		probe := &sequence.Request{ChannelID: r.channelID, SenderID: p.UserID, ClientMessageID: r.clientMessageID,
			RefMessageID: r.messageID, Kind: store.KindEdit, Text: r.text}
		if r.delete {
			probe.Kind, probe.Text = store.KindDelete, ""
			if r.forMe {
				probe.ForUser = p.UserID
			}
		}
		if err := sequence.CheckReuse(probe, d); err != nil {
			return nil, nil, err
		}
		return nil, &chatv1.SendAck{ChannelId: d.ChannelID, MessageId: d.MessageID, CreatedAt: timestamppb.New(d.CreatedAt),
			ClientMessageId: d.ClientMessageID, Duplicate: true}, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, nil, s.storeErr(ctx, "Revise.LookupDedup", err)
	}
	target, err := s.st.GetMessage(ctx, r.channelID, r.messageID)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, nil, errMessageMissing
		}
		return nil, nil, s.storeErr(ctx, "Revise.GetMessage", err)
	}
	if target.ForUser != "" && target.ForUser != p.UserID {
		return nil, nil, errMessageMissing
	}
	if target.Kind != store.KindText {
		return nil, nil, errNotText
	}
	revs, err := s.st.Revisions(ctx, r.channelID, r.messageID, r.messageID)
	if err != nil {
		return nil, nil, s.storeErr(ctx, "Revise.Revisions", err)
	}
	var deleted, hidden bool
	edits := 0
	for _, rv := range revs {
		switch {
		case rv.Kind == store.KindEdit:
			edits++
		case rv.Kind == store.KindDelete && rv.ForUser == "":
			deleted = true
		case rv.Kind == store.KindDelete && rv.ForUser == p.UserID:
			hidden = true
		}
	}
	req := &sequence.Request{
		ChannelID:       r.channelID,
		SenderID:        p.UserID,
		SenderDeviceID:  p.DeviceID,
		ClientMessageID: r.clientMessageID,
		RefMessageID:    r.messageID,
	}
	switch {
	case !r.delete:
		if target.SenderID != p.UserID {
			return nil, nil, errNotAuthor
		}
		if deleted || hidden {
			return nil, nil, errDeleted
		}
		if s.now().Sub(target.CreatedAt) > s.editWin {
			return nil, nil, status.Errorf(codes.FailedPrecondition, "the edit window (%v after sending) has passed", s.editWin)
		}
		if edits >= MaxEditsPerMessage {
			return nil, nil, errTooManyEdits
		}
		req.Kind, req.Text = store.KindEdit, r.text
	case r.forMe:
		if deleted || hidden {
			return nil, nil, errDeleted
		}
		req.Kind, req.ForUser = store.KindDelete, p.UserID
		req.Recipients = []string{p.UserID}
		return req, nil, nil
	default:
		if target.SenderID != p.UserID {
			ch, err := s.st.GetChannel(ctx, r.channelID)
			if err != nil {
				return nil, nil, s.storeErr(ctx, "Revise.GetChannel", err)
			}
			if ch.Type != store.ChannelGroup || (me.Role != store.RoleOwner && me.Role != store.RoleAdmin) {
				return nil, nil, errDeleteDenied
			}
		}
		if deleted {
			return nil, nil, errDeleted
		}
		req.Kind = store.KindDelete
	}
	ms, err := s.st.ListMembers(ctx, r.channelID)
	if err != nil {
		return nil, nil, s.storeErr(ctx, "Revise.ListMembers", err)
	}
	req.Recipients = make([]string, len(ms))
	for i := range ms {
		req.Recipients[i] = ms[i].UserID
	}
	return req, nil, nil
}

// revise validates and stores r and returns the new row's ack.
func (s *Service) revise(ctx context.Context, r revision) (*chatv1.SendAck, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	req, dup, err := s.prepareRevision(ctx, p, r)
	if err != nil {
		return nil, err
	}
	if dup != nil {
		s.metrics.Duplicates.Inc()
		return dup, nil
	}
	res, err := s.seq.Do(ctx, req)
	if err != nil {
		return nil, err
	}
	if res.Duplicate {
		s.metrics.Duplicates.Inc()
	} else {
		s.metrics.MessagesAccepted.Inc()
	}
	return sendAckOf(res), nil
}

// EditMessage replaces the text of one of the caller's text messages with
// a new EDIT row (see the proto and prepareRevision for the errors).
func (s *Service) EditMessage(ctx context.Context, req *chatv1.EditMessageRequest) (*chatv1.EditMessageResponse, error) {
	ack, err := s.revise(ctx, revision{channelID: req.GetChannelId(), messageID: req.GetMessageId(),
		clientMessageID: req.GetClientMessageId(), text: req.GetText()})
	if err != nil {
		return nil, err
	}
	return &chatv1.EditMessageResponse{Ack: ack}, nil
}

// DeleteMessage deletes a text message for everyone or, with for_me, for
// the caller only, with a new DELETE row (see the proto and
// prepareRevision for the errors).
func (s *Service) DeleteMessage(ctx context.Context, req *chatv1.DeleteMessageRequest) (*chatv1.DeleteMessageResponse, error) {
	ack, err := s.revise(ctx, revision{channelID: req.GetChannelId(), messageID: req.GetMessageId(),
		clientMessageID: req.GetClientMessageId(), delete: true, forMe: req.GetForMe()})
	if err != nil {
		return nil, err
	}
	return &chatv1.DeleteMessageResponse{Ack: ack}, nil
}

// handleRevision serves an EditMessage or DeleteMessage frame like a send:
// validated on the reader, then submit (stream.go): answered with a
// SendAck or a FrameError once committed.
func (st *stream) handleRevision(id uint64, r revision) error {
	s := st.s
	req, dup, err := s.prepareRevision(st.ctx, st.p, r)
	if err != nil {
		return st.replyErr(id, err)
	}
	if dup != nil {
		s.metrics.Duplicates.Inc()
		return st.reply(&chatv1.ServerFrame{FrameId: id, Payload: &chatv1.ServerFrame_SendAck{SendAck: dup}})
	}
	name := "chat.edit"
	if r.delete {
		name = "chat.delete"
	}
	ctx, span := st.startSpan(name)
	return st.submitTraced(ctx, span, id, req)
}

func (st *stream) handleEdit(id uint64, m *chatv1.EditMessage) error {
	return st.handleRevision(id, revision{channelID: m.GetChannelId(), messageID: m.GetMessageId(),
		clientMessageID: m.GetClientMessageId(), text: m.GetText()})
}

func (st *stream) handleDelete(id uint64, m *chatv1.DeleteMessage) error {
	return st.handleRevision(id, revision{channelID: m.GetChannelId(), messageID: m.GetMessageId(),
		clientMessageID: m.GetClientMessageId(), delete: true, forMe: m.GetForMe()})
}
