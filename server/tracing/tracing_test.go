package tracing_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/chatd/chatd/server/tracing"
)

// TestOffIsNil: the zero Config is off: no tracer, no provider, Shutdown
// a no-op.
func TestOffIsNil(t *testing.T) {
	p, err := tracing.New(tracing.Config{})
	if err != nil || p.Enabled() || p.Tracer("x") != nil || p.TracerProvider() != nil || p.Shutdown(context.Background()) != nil {
		t.Fatalf("off provider: %v %v", p, err)
	}
}

// TestLogHandlerCarriesTraceID: a record logged with a traced context has
// its trace_id and span_id; one without has neither.
func TestLogHandlerCarriesTraceID(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	p, err := tracing.New(tracing.Config{Exporter: exp})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background())
	var buf bytes.Buffer
	log := slog.New(tracing.LogHandler(slog.NewJSONHandler(&buf, nil))).With("k", "v")
	ctx, span := p.Tracer("t").Start(context.Background(), "op")
	log.InfoContext(ctx, "traced")
	span.End()
	log.Info("plain")
	lines := bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n"))
	var traced, plain map[string]any
	if len(lines) != 2 || json.Unmarshal(lines[0], &traced) != nil || json.Unmarshal(lines[1], &plain) != nil {
		t.Fatalf("log: %s", buf.Bytes())
	}
	sc := span.SpanContext()
	if traced["trace_id"] != sc.TraceID().String() || traced["span_id"] != sc.SpanID().String() || traced["k"] != "v" {
		t.Fatalf("traced record %v, want trace %s span %s", traced, sc.TraceID(), sc.SpanID())
	}
	if _, ok := plain["trace_id"]; ok {
		t.Fatalf("untraced record has a trace id: %v", plain)
	}
	if len(exp.GetSpans()) != 1 || exp.GetSpans()[0].Name != "op" {
		t.Fatalf("exported %v", exp.GetSpans())
	}
}
