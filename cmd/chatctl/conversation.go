package main

import (
	"context"
	"strconv"
	"strings"

	"github.com/chatd/chatd/client"
	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/spf13/cobra"
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

func (e *env) readCmd() *cobra.Command {
	var upTo uint64
	cmd := e.command("read TARGET [--up-to ID]", "mark a channel read (up to the newest message) on every device", exactly("TARGET"),
		func(ctx context.Context, c *client.Client, args []string) error {
			ch, err := e.resolveChannel(ctx, c, args[0])
			if err != nil {
				return err
			}
			resp, err := rpc(ctx, e, c.Chat().MarkRead, &chatv1.MarkReadRequest{ChannelId: ch, MessageId: upTo})
			if err != nil {
				return err
			}
			return show(e, resp.GetUnread(), func(ev *chatv1.UnreadEvent) {
				e.printf("read  %s  up to %d  unread %s  total unread %s\n", clean(ch), ev.GetReadUpTo(),
					count(ev.GetUnreadCount(), ev.GetUnreadCapped()), count(ev.GetTotalUnread(), ev.GetTotalCapped()))
			})
		})
	cmd.Long = `TARGET is a channel id or a username (the direct channel with that user).
Moves your read marker forward (never back); your other devices get the new
unread count at once and the other members see the read receipt. Prints
the channel's unread count and your total. With --json: an UnreadEvent.`
	cmd.Flags().Uint64Var(&upTo, "up-to", 0, "mark read up to message_id `ID` (default: the newest message)")
	return cmd
}

// count prints an unread count, "N+" when capped.
func count(n uint32, capped bool) string {
	s := strconv.FormatUint(uint64(n), 10)
	if capped {
		s += "+"
	}
	return s
}

// revision resolves what an edit or delete acts on (the channel of TARGET,
// a channel id or a username, and MESSAGE_ID), calls do with it and the
// idempotency key (cmid, or a random one), and prints the ack.
func (e *env) revision(ctx context.Context, c *client.Client, args []string, cmid, what string,
	do func(ctx context.Context, channelID string, id uint64, key string) (*chatv1.SendAck, error)) error {
	id, err := parseMessageID(args[1])
	if err != nil {
		return err
	}
	key := cmid
	if key == "" {
		key = client.NewClientMessageID()
	}
	ch, err := e.resolveChannel(ctx, c, args[0])
	if err != nil {
		return err
	}
	uctx, cancel := e.unary(ctx)
	defer cancel()
	ack, err := do(uctx, ch, id, key)
	if err != nil {
		return err
	}
	return show(e, ack, func(ack *chatv1.SendAck) {
		e.printf("%s  %s  message_id %d  (row %d at %s)%s\n", what, clean(ack.GetChannelId()), id, ack.GetMessageId(),
			formatTime(ack.GetCreatedAt()), duplicateNote(ack, "done"))
	})
}

func cmidFlag(cmd *cobra.Command) *string {
	return cmd.Flags().String("client-message-id", "", "idempotency `KEY`, 1..64 bytes (default: random)")
}

func (e *env) editCmd() *cobra.Command {
	var cmid *string
	cmd := e.command("edit TARGET MESSAGE_ID TEXT... [--client-message-id KEY]", "edit one of your messages (within the server's edit window)",
		atLeast(3, "TARGET MESSAGE_ID TEXT"),
		func(ctx context.Context, c *client.Client, args []string) error {
			return e.revision(ctx, c, args, *cmid, "edited", func(ctx context.Context, ch string, id uint64, key string) (*chatv1.SendAck, error) {
				resp, err := c.Chat().EditMessage(ctx, &chatv1.EditMessageRequest{ChannelId: ch, MessageId: id,
					ClientMessageId: key, Text: strings.Join(args[2:], " ")})
				return resp.GetAck(), err
			})
		})
	cmd.Long = `The remaining arguments are joined with spaces to form the new text. Prints
the ack of the edit (a new row that every member's devices receive). With
--json: a SendAck.`
	cmid = cmidFlag(cmd)
	return cmd
}

func (e *env) deleteCmd() *cobra.Command {
	var forMe bool
	var cmid *string
	cmd := e.command("delete TARGET MESSAGE_ID [--for-me] [--client-message-id KEY]", "delete a message for everyone, or for you only",
		exactly("TARGET", "MESSAGE_ID"),
		func(ctx context.Context, c *client.Client, args []string) error {
			what := "deleted"
			if forMe {
				what = "deleted for you"
			}
			return e.revision(ctx, c, args, *cmid, what, func(ctx context.Context, ch string, id uint64, key string) (*chatv1.SendAck, error) {
				resp, err := c.Chat().DeleteMessage(ctx, &chatv1.DeleteMessageRequest{ChannelId: ch, MessageId: id,
					ClientMessageId: key, ForMe: forMe})
				return resp.GetAck(), err
			})
		})
	cmd.Long = `Without --for-me the message is deleted for everyone (your own message, or
any message of a group you own or administer). With --for-me it disappears
from your own history and devices only. With --json: a SendAck.`
	cmd.Flags().BoolVar(&forMe, "for-me", false, "delete the message for you only")
	cmid = cmidFlag(cmd)
	return cmd
}

func (e *env) receiptsCmd() *cobra.Command {
	return e.command("receipts TARGET", "show each member's delivered and read markers of a channel", exactly("TARGET"),
		func(ctx context.Context, c *client.Client, args []string) error {
			ch, err := e.resolveChannel(ctx, c, args[0])
			if err != nil {
				return err
			}
			resp, err := rpc(ctx, e, c.Chat().GetReceipts, &chatv1.GetReceiptsRequest{ChannelId: ch})
			if err != nil {
				return err
			}
			return showAll(e, resp.GetReceipts(), func(r *chatv1.ReceiptEvent) {
				e.printf("%s  delivered up to %d  read up to %d\n", clean(r.GetUserId()), r.GetDeliveredUpTo(), r.GetReadUpTo())
			})
		})
}

func (e *env) receiptsSetCmd() *cobra.Command {
	var hide, unhide bool
	cmd := e.command("set --hide|--show", "hide or show your read receipts", exactly(),
		func(ctx context.Context, c *client.Client, _ []string) error {
			resp, err := rpc(ctx, e, c.Chat().SetReadReceipts, &chatv1.SetReadReceiptsRequest{HideReadReceipts: hide})
			if err != nil {
				return err
			}
			return show(e, resp, func(resp *chatv1.SetReadReceiptsResponse) {
				if resp.GetHideReadReceipts() {
					e.printf("read receipts hidden\n")
				} else {
					e.printf("read receipts shown\n")
				}
			})
		})
	cmd.Long = "While hidden, others see no read receipts from you; your own unread counts still follow your reads."
	cmd.Flags().BoolVar(&hide, "hide", false, "hide your read receipts from other members")
	cmd.Flags().BoolVar(&unhide, "show", false, "show your read receipts again")
	cmd.MarkFlagsOneRequired("hide", "show")
	cmd.MarkFlagsMutuallyExclusive("hide", "show")
	return cmd
}
