package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// jsonOpts marshals with the default (lowerCamelCase) JSON field names on a
// single line.
var jsonOpts = protojson.MarshalOptions{}

// emit prints m as one JSON line.
func (e *env) emit(m proto.Message) error {
	b, err := jsonOpts.Marshal(m)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	_, err = e.stdout.Write(b)
	return err
}

// emitValue prints a non-protobuf value as one JSON line.
func (e *env) emitValue(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	_, err = e.stdout.Write(b)
	return err
}

func (e *env) printf(format string, args ...any) {
	fmt.Fprintf(e.stdout, format, args...)
}

// formatTime prints a timestamp in local time, or "-" if unset.
func formatTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().Local().Format("2006-01-02 15:04:05")
}

// clean makes untrusted text safe for a terminal line: control characters
// (including newlines and escape sequences) are shown escaped.
func clean(s string) string {
	if strings.IndexFunc(s, unicode.IsControl) < 0 {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if unicode.IsControl(r) {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// formatMessage is one line: time, channel, sender and text.
func formatMessage(m *chatv1.Message) string {
	text := clean(m.GetText())
	switch m.GetKind() {
	case chatv1.MessageKind_MESSAGE_KIND_EDIT:
		text = fmt.Sprintf("(edit of %d) %s", m.GetRefMessageId(), text)
	case chatv1.MessageKind_MESSAGE_KIND_DELETE:
		text = fmt.Sprintf("(deleted %d)", m.GetRefMessageId())
		if m.GetForUser() != "" {
			text = fmt.Sprintf("(deleted %d for you)", m.GetRefMessageId())
		}
	case chatv1.MessageKind_MESSAGE_KIND_SYSTEM:
		text = "* " + text
	}
	switch {
	case m.GetDeleted():
		text = "(this message was deleted)"
	case m.GetEdited():
		text += " (edited)"
	}
	return fmt.Sprintf("%s  %s  %s: %s", formatTime(m.GetCreatedAt()), clean(m.GetChannelId()), clean(m.GetSenderId()), text)
}

func roleName(r chatv1.MemberRole) string {
	switch r {
	case chatv1.MemberRole_MEMBER_ROLE_OWNER:
		return "owner"
	case chatv1.MemberRole_MEMBER_ROLE_ADMIN:
		return "admin"
	case chatv1.MemberRole_MEMBER_ROLE_MEMBER:
		return "member"
	}
	return "unknown"
}

func channelType(t chatv1.ChannelType) string {
	switch t {
	case chatv1.ChannelType_CHANNEL_TYPE_DIRECT:
		return "direct"
	case chatv1.ChannelType_CHANNEL_TYPE_GROUP:
		return "group"
	}
	return "unknown"
}

func presenceStatus(s chatv1.PresenceStatus) string {
	switch s {
	case chatv1.PresenceStatus_PRESENCE_STATUS_ONLINE:
		return "online"
	case chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE:
		return "offline"
	}
	return "unknown"
}

// printChannel prints a channel with its members.
func (e *env) printChannel(ch *chatv1.Channel) {
	e.printf("%s  %s  %s\n", clean(ch.GetChannelId()), channelType(ch.GetType()), clean(ch.GetName()))
	if ch.GetLastActivityAt() == nil || ch.GetLastMessageId() == 0 {
		e.printf("  created %s, no messages yet\n", formatTime(ch.GetCreatedAt()))
	} else {
		e.printf("  created %s, last activity %s, last message_id %d\n",
			formatTime(ch.GetCreatedAt()), formatTime(ch.GetLastActivityAt()), ch.GetLastMessageId())
	}
	for _, m := range ch.GetMembers() {
		e.printf("  %s (%s)\n", clean(m.GetUserId()), roleName(m.GetRole()))
	}
}

// printProfile prints a user: id, display name and when the account was
// created (not when it became a contact).
func (e *env) printProfile(p *chatv1.Profile) {
	e.printf("%s  %q  account created %s\n", clean(p.GetUserId()), p.GetDisplayName(), formatTime(p.GetCreatedAt()))
}

// duplicateNote is the suffix of an ack line: "  (duplicate: already
// done)" when the server had stored the request before, else "".
func duplicateNote(ack *chatv1.SendAck, done string) string {
	if ack.GetDuplicate() {
		return "  (duplicate: already " + done + ")"
	}
	return ""
}

func formatDuration(d time.Duration) string {
	return d.Round(time.Millisecond).String()
}
