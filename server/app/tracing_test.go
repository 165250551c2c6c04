package app_test

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/chatd/chatd/server/app"
	"github.com/chatd/chatd/server/tracing"
)

// TestTracingSendSpanTree (issue 17): with tracing on, one send on the
// Chat stream is one trace: the Chat RPC's span (otelgrpc) → chat.send →
// sequence → store.commit, and sequence → route → deliver.
func TestTracingSendSpanTree(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	a, err := app.New(app.Config{
		GRPCAddr: "127.0.0.1:0",
		HTTPAddr: "127.0.0.1:0",
		DataDir:  t.TempDir(),
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Tracing:  tracing.Config{Exporter: exp},
	})
	if err != nil {
		t.Fatal(err)
	}
	a.Start()
	t.Cleanup(func() { _ = a.Close() })
	cc := dial(t, a.GRPCAddr())
	alice := signUpLogIn(t, cc, "alice", "phone")
	signUpLogIn(t, cc, "bob", "phone")
	st := openStream(t, alice)
	ack := st.send("bob", "m1", "hello")
	if ack.GetMessageId() == 0 {
		t.Fatalf("ack %v", ack)
	}

	want := []struct{ name, parent string }{
		{"chat.send", "chat.v1.ChatService/Chat"},
		{"sequence", "chat.send"},
		{"store.commit", "sequence"},
		{"route", "sequence"},
		{"deliver", "route"},
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		spans := exp.GetSpans()
		byID := map[string]tracetest.SpanStub{}
		byName := map[string]tracetest.SpanStub{}
		for _, s := range spans {
			byID[s.SpanContext.SpanID().String()] = s
			if _, seen := byName[s.Name]; !seen || s.Name != "chat.v1.ChatService/Chat" {
				byName[s.Name] = s
			}
		}
		var missing []string
		for _, w := range want {
			s, ok := byName[w.name]
			if !ok {
				missing = append(missing, w.name)
				continue
			}
			p, ok := byID[s.Parent.SpanID().String()]
			if !ok {
				// The stream's span ends with the stream: look the parent
				// up by name once it is exported.
				if w.name == "chat.send" && s.Parent.IsValid() {
					continue
				}
				missing = append(missing, w.name+" (parent "+w.parent+")")
				continue
			}
			if p.Name != w.parent || p.SpanContext.TraceID() != s.SpanContext.TraceID() {
				t.Fatalf("%s: parent %q in trace %s, want %q in %s", w.name, p.Name, p.SpanContext.TraceID(), w.parent, s.SpanContext.TraceID())
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			var names []string
			for _, s := range spans {
				names = append(names, s.Name)
			}
			t.Fatalf("spans missing: %v; exported: %v", missing, names)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The RPC span of the stream, once the stream ends, is chat.send's parent.
	st.cancel()
	deadline = time.Now().Add(10 * time.Second)
	for {
		var rpc, send tracetest.SpanStub
		for _, s := range exp.GetSpans() {
			switch s.Name {
			case "chat.v1.ChatService/Chat":
				rpc = s
			case "chat.send":
				send = s
			}
		}
		if rpc.Name != "" && send.Parent.SpanID() == rpc.SpanContext.SpanID() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("chat.send's parent %v is not the Chat RPC's span %v", send.Parent.SpanID(), rpc.SpanContext.SpanID())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
