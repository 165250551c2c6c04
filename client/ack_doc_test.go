package client_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chatd/chatd/server/app"
)

// TestAckAboveHeadIsFailedPrecondition (issue 11, item 13): an Ack above
// the inbox head is answered FailedPrecondition (the seq is not readable
// yet: a state of the inbox, not a malformed argument), the stream goes
// on, and what documents it says so: Session.Ack's doc comment and the
// Ack message of chat.proto.
func TestAckAboveHeadIsFailedPrecondition(t *testing.T) {
	a := startServer(t, app.Config{})
	ctx := testContext(t)
	alice := newUser(t, ctx, a.GRPCAddr(), "alice")
	s := connect(t, ctx, alice)
	head := s.Welcome().GetHeadSeq()
	if _, err := s.Ack(ctx, head+1); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Ack(head+1) = %v, want FailedPrecondition", err)
	}
	if _, err := s.Heartbeat(ctx); err != nil {
		t.Fatalf("stream unusable after the refused ack: %v", err)
	}

	want := codes.FailedPrecondition.String()
	doc := methodDoc(t, "session.go", "Session", "Ack")
	if !strings.Contains(doc, want+" for a seq above the inbox head") {
		t.Errorf("Session.Ack's doc does not say %s for a seq above the inbox head:\n%s", want, doc)
	}
	proto, err := os.ReadFile("../proto/chat/v1/chat.proto")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`((?:\n *//[^\n]*)+)\nmessage Ack \{`).FindSubmatch(proto)
	if m == nil || !strings.Contains(string(m[1]), want) || strings.Contains(string(m[1]), "InvalidArgument") {
		t.Errorf("chat.proto's Ack comment does not name %s for a seq above the head: %q", want, m)
	}
}

// methodDoc returns the doc comment of recv.name in file (of this package).
func methodDoc(t *testing.T, file, recv, name string) string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range f.Decls {
		fd, ok := d.(*ast.FuncDecl)
		if !ok || fd.Name.Name != name || fd.Recv == nil || len(fd.Recv.List) != 1 {
			continue
		}
		typ := fd.Recv.List[0].Type
		if st, ok := typ.(*ast.StarExpr); ok {
			typ = st.X
		}
		if id, ok := typ.(*ast.Ident); ok && id.Name == recv {
			return strings.Join(strings.Fields(fd.Doc.Text()), " ")
		}
	}
	t.Fatalf("%s.%s not found in %s", recv, name, file)
	return ""
}
