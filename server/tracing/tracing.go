// Package tracing is chatd's OpenTelemetry tracing: a TracerProvider that
// exports spans by OTLP over gRPC when an endpoint is configured, and
// nothing at all otherwise.
//
// Off is the default and costs nothing: Tracer returns nil, and the code
// that makes spans (the gRPC stats handler, the gateway's HTTP handler,
// the Chat stream, the sequencer, the publisher) is not installed or
// checks for a nil tracer before doing any work.
//
// The spans of one send on the Chat stream (see docs/operations.md):
//
//	chat.send                 the client frame, until its SendAck is queued
//	└─ sequence               queued in the sequencer until its batch is done
//	   ├─ store.commit        the batch's durable write (AppendBatch)
//	   └─ route               the batch's deliveries built for the inboxes
//	      └─ deliver          handed to the Router (local streams, or peers)
package tracing

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// DefaultServiceName is the service.name resource attribute of chatd's
// spans.
const DefaultServiceName = "chatd"

// Config configures tracing. The zero value is off.
type Config struct {
	// Endpoint is the OTLP/gRPC collector, host:port (plaintext, as a
	// local collector or agent listens; e.g. 127.0.0.1:4317). Empty: off.
	Endpoint string
	// Exporter, when set, receives the spans instead of an OTLP exporter,
	// synchronously as each span ends (tests: tracetest.InMemoryExporter).
	// It turns tracing on without an Endpoint.
	Exporter sdktrace.SpanExporter
	// ServiceName is the service.name resource attribute; zero means
	// DefaultServiceName.
	ServiceName string
	// ServerID is the service.instance.id resource attribute.
	ServerID string
	// Logger receives the SDK's errors (an export that failed: the
	// collector is down or refused the spans) at Warn, with
	// component=tracing. Zero means slog.Default().
	Logger *slog.Logger
}

// Provider is the process's tracing: its TracerProvider when on.
type Provider struct {
	tp *sdktrace.TracerProvider
}

// New returns the Provider of cfg: off (every method a no-op, Tracer nil)
// when cfg has neither Endpoint nor Exporter. An OTLP exporter connects
// lazily: an unreachable collector is not an error here; its spans are
// dropped (and the SDK logs why).
func New(cfg Config) (*Provider, error) {
	if cfg.Endpoint == "" && cfg.Exporter == nil {
		return &Provider{}, nil
	}
	if cfg.ServiceName == "" {
		cfg.ServiceName = DefaultServiceName
	}
	res := resource.NewSchemaless(
		attribute.String("service.name", cfg.ServiceName),
		attribute.String("service.instance.id", cfg.ServerID),
	)
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "tracing")
	// The SDK reports export failures through the global error handler,
	// which otherwise prints them through the log package (at INFO once
	// slog is the default): an operator wants them as warnings.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing: export failed; spans dropped", "err", err)
	}))
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if cfg.Exporter != nil {
		opts = append(opts, sdktrace.WithSyncer(cfg.Exporter))
	} else {
		exp, err := otlptracegrpc.New(context.Background(),
			otlptracegrpc.WithEndpoint(cfg.Endpoint), otlptracegrpc.WithInsecure())
		if err != nil {
			return nil, err
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	return &Provider{tp: sdktrace.NewTracerProvider(opts...)}, nil
}

// Enabled reports whether spans are recorded.
func (p *Provider) Enabled() bool { return p != nil && p.tp != nil }

// TracerProvider returns the SDK's provider, nil when off.
func (p *Provider) TracerProvider() trace.TracerProvider {
	if !p.Enabled() {
		return nil
	}
	return p.tp
}

// Tracer returns the named tracer, nil when off: callers skip their spans
// on nil.
func (p *Provider) Tracer(name string) trace.Tracer {
	if !p.Enabled() {
		return nil
	}
	return p.tp.Tracer(name)
}

// Propagator is the W3C trace-context propagator the gRPC and HTTP
// handlers read incoming traceparent headers with.
func Propagator() propagation.TextMapPropagator { return propagation.TraceContext{} }

// Shutdown exports the spans still buffered and stops the exporter (at
// most until ctx ends). A no-op when off.
func (p *Provider) Shutdown(ctx context.Context) error {
	if !p.Enabled() {
		return nil
	}
	return p.tp.Shutdown(ctx)
}

// LogHandler wraps h so that a record logged with a context holding a
// valid span (slog's *Context methods) carries its ids: trace_id and
// span_id (hex, as OTLP and W3C trace-context write them).
func LogHandler(h slog.Handler) slog.Handler { return logHandler{h} }

type logHandler struct{ slog.Handler }

func (l logHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return l.Handler.Handle(ctx, r)
}

func (l logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return logHandler{l.Handler.WithAttrs(as)}
}

func (l logHandler) WithGroup(name string) slog.Handler { return logHandler{l.Handler.WithGroup(name)} }
