package main

import (
	"context"
	"flag"
	"strconv"
	"strings"

	"github.com/chatd/chatd/client"
	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// resolveChannel maps TARGET to a channel id: a channel id as it is, a
// username to the direct channel with that user (NotFound if the two never
// talked).
func (e *env) resolveChannel(ctx context.Context, c *client.Client, target string) (string, error) {
	if t := sendTarget(target); t.ChannelID != "" {
		return t.ChannelID, nil
	}
	uctx, cancel := e.unary(ctx)
	defer cancel()
	resp, err := c.Chat().GetHistory(uctx, &chatv1.GetHistoryRequest{ToUser: target, PageSize: 1, Raw: true})
	if err != nil {
		return "", err
	}
	if len(resp.GetMessages()) == 0 {
		return "", status.Errorf(codes.NotFound, "no direct channel with %s yet", clean(target))
	}
	return resp.GetMessages()[0].GetChannelId(), nil
}

func parseMessageID(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil || id == 0 {
		return 0, usagef("MESSAGE_ID must be a positive integer, got %q", s)
	}
	return id, nil
}

func setupRead(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	upTo := fs.Uint64("up-to", 0, "mark read up to message_id `ID` (default: the newest message)")
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 1, "TARGET"); err != nil {
			return err
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		ch, err := e.resolveChannel(ctx, c, args[0])
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.Chat().MarkRead(uctx, &chatv1.MarkReadRequest{ChannelId: ch, MessageId: *upTo})
		if err != nil {
			return err
		}
		ev := resp.GetUnread()
		if e.json {
			return e.emit(ev)
		}
		e.printf("read  %s  up to %d  unread %s  total unread %s\n", clean(ch), ev.GetReadUpTo(),
			count(ev.GetUnreadCount(), ev.GetUnreadCapped()), count(ev.GetTotalUnread(), ev.GetTotalCapped()))
		return nil
	}
}

// count prints an unread count, "N+" when capped.
func count(n uint32, capped bool) string {
	s := strconv.FormatUint(uint64(n), 10)
	if capped {
		s += "+"
	}
	return s
}

// revisionTarget resolves what an edit or delete acts on: the channel of
// target (a channel id or a username), the message id, and the
// idempotency key (cmid, or a random one).
func (e *env) revisionTarget(ctx context.Context, target, messageID, cmid string) (c *client.Client, channelID string, id uint64, key string, err error) {
	if id, err = parseMessageID(messageID); err != nil {
		return nil, "", 0, "", err
	}
	if key = cmid; key == "" {
		key = client.NewClientMessageID()
	}
	if c, err = e.dial(true); err != nil {
		return nil, "", 0, "", err
	}
	if channelID, err = e.resolveChannel(ctx, c, target); err != nil {
		return nil, "", 0, "", err
	}
	return c, channelID, id, key, nil
}

func setupEdit(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	cmid := fs.String("client-message-id", "", "idempotency `KEY`, 1..64 bytes (default: random)")
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) < 3 {
			return usagef("want TARGET MESSAGE_ID TEXT, got %d argument(s)", len(args))
		}
		c, ch, id, key, err := e.revisionTarget(ctx, args[0], args[1], *cmid)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.Chat().EditMessage(uctx, &chatv1.EditMessageRequest{ChannelId: ch, MessageId: id,
			ClientMessageId: key, Text: strings.Join(args[2:], " ")})
		if err != nil {
			return err
		}
		return e.printRevision("edited", id, resp.GetAck())
	}
}

func setupDelete(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	forMe := fs.Bool("for-me", false, "delete the message for you only")
	cmid := fs.String("client-message-id", "", "idempotency `KEY`, 1..64 bytes (default: random)")
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 2, "TARGET MESSAGE_ID"); err != nil {
			return err
		}
		c, ch, id, key, err := e.revisionTarget(ctx, args[0], args[1], *cmid)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.Chat().DeleteMessage(uctx, &chatv1.DeleteMessageRequest{ChannelId: ch, MessageId: id,
			ClientMessageId: key, ForMe: *forMe})
		if err != nil {
			return err
		}
		what := "deleted"
		if *forMe {
			what = "deleted for you"
		}
		return e.printRevision(what, id, resp.GetAck())
	}
}

func (e *env) printRevision(what string, id uint64, ack *chatv1.SendAck) error {
	if e.json {
		return e.emit(ack)
	}
	dup := ""
	if ack.GetDuplicate() {
		dup = "  (duplicate: already done)"
	}
	e.printf("%s  %s  message_id %d  (row %d at %s)%s\n", what, clean(ack.GetChannelId()), id, ack.GetMessageId(), formatTime(ack.GetCreatedAt()), dup)
	return nil
}

func setupReceipts(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 1, "TARGET"); err != nil {
			return err
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		ch, err := e.resolveChannel(ctx, c, args[0])
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.Chat().GetReceipts(uctx, &chatv1.GetReceiptsRequest{ChannelId: ch})
		if err != nil {
			return err
		}
		for _, r := range resp.GetReceipts() {
			if e.json {
				if err := e.emit(r); err != nil {
					return err
				}
				continue
			}
			e.printf("%s  delivered up to %d  read up to %d\n", clean(r.GetUserId()), r.GetDeliveredUpTo(), r.GetReadUpTo())
		}
		return nil
	}
}

func setupReceiptsSet(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	hide := fs.Bool("hide", false, "hide your read receipts from other members")
	show := fs.Bool("show", false, "show your read receipts again")
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 0, "no arguments"); err != nil {
			return err
		}
		if *hide == *show {
			return usagef("give exactly one of --hide and --show")
		}
		c, err := e.dial(true)
		if err != nil {
			return err
		}
		uctx, cancel := e.unary(ctx)
		defer cancel()
		resp, err := c.Chat().SetReadReceipts(uctx, &chatv1.SetReadReceiptsRequest{HideReadReceipts: *hide})
		if err != nil {
			return err
		}
		if e.json {
			return e.emit(resp)
		}
		if resp.GetHideReadReceipts() {
			e.printf("read receipts hidden\n")
		} else {
			e.printf("read receipts shown\n")
		}
		return nil
	}
}
