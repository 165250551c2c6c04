package app_test

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestCluster_KeyReuse (issue 11, item 3) on a cluster: alice sends key K
// to bob through s1, then K to carol through s2 (the other server's
// dedup path: its LRU never saw K): refused with FailedPrecondition, and
// carol receives nothing; the same send through s2 is a duplicate. Over
// REST (s2's gateway), an edit that reuses a key for other text is a 400
// naming the clash, and its own retry is answered as a duplicate.
func TestCluster_KeyReuse(t *testing.T) {
	c := newCluster(t, []string{"s1", "s2"})
	signUpAll(t, c.cc("s1"), "alice", "bob", "carol")
	a1 := openConv(t, c, nil, "alice", "a-phone", "s1")
	a2 := openConv(t, c, nil, "alice", "a-laptop", "s2")
	first := a1.send("", "bob", "K", "text A")
	if _, err := a2.call(sendFrame("carol", "K", "text B")); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "client_message_id reused for a different message") {
		t.Fatalf("K to carol through s2: %v; want FailedPrecondition naming the clash", err)
	}
	if again := a2.send("", "bob", "K", "text A"); !again.GetDuplicate() || again.GetMessageId() != first.GetMessageId() {
		t.Fatalf("the same send through s2: %v; want the duplicate of %v", again, first)
	}

	base := c.servers["s2"].http
	path := "/v1/channels/" + first.GetChannelId() + "/messages/" + strconv.FormatUint(first.GetMessageId(), 10)
	code, out := restCall(t, base, "PATCH", path, a2.u.token, map[string]string{"clientMessageId": "E", "text": "text A!"})
	if code != http.StatusOK {
		t.Fatalf("edit over REST: %d %v", code, out)
	}
	edited, _ := out["ack"].(map[string]any)
	code, out = restCall(t, base, "PATCH", path, a2.u.token, map[string]string{"clientMessageId": "E", "text": "text A!"})
	if ack, _ := out["ack"].(map[string]any); code != http.StatusOK || ack["duplicate"] != true || ack["messageId"] != edited["messageId"] {
		t.Fatalf("edit retried over REST: %d %v; want the duplicate of %v", code, out, edited)
	}
	if code, out = restCall(t, base, "PATCH", path, a2.u.token, map[string]string{"clientMessageId": "E", "text": "text A?"}); code != http.StatusConflict || !strings.Contains(fmt.Sprint(out["message"]), "client_message_id reused for a different message") {
		t.Fatalf("edit reusing a key over REST: %d %v; want 409 naming the clash", code, out)
	}
	if code, out = restCall(t, base, "PATCH", path, a2.u.token, map[string]string{"clientMessageId": "K", "text": "text A"}); code != http.StatusConflict {
		t.Fatalf("edit reusing a send's key over REST: %d %v; want 409", code, out)
	}

	carol := openConv(t, c, nil, "carol", "c-phone", "s2")
	if n := len(carol.waitDeliveries(0)); n != 0 {
		t.Fatalf("carol received %d messages; want none", n)
	}
}

// sendFrame is a ClientFrame sending text to toUser under key cmid.
func sendFrame(toUser, cmid, text string) *chatv1.ClientFrame {
	return &chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Send{Send: &chatv1.SendMessage{
		Target: &chatv1.SendMessage_ToUser{ToUser: toUser}, ClientMessageId: cmid, Text: text}}}
}
