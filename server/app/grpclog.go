package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"google.golang.org/grpc/grpclog"
)

// GRPCLogger routes grpc-go's own log (grpclog: the transport, and the
// grpc-web wrapper, which logs through it) into l, so that every line
// chatd writes has one format (--log-format json stays JSON) and carries
// component=grpc. Levels are lowered by one step, because grpc-go logs at
// Error what a client causes (a WebSocket closed before its first message,
// a connection reset): Info and Warning become Debug, Error becomes Info,
// Fatal becomes Error and exits 1 as grpclog.Fatal does.
//
// Install it with grpclog.SetLoggerV2 before the first gRPC call (grpc-go
// documents that the setter is not safe to call concurrently with logging).
func GRPCLogger(l *slog.Logger) grpclog.LoggerV2 {
	return grpcSlog{l: l.With("component", "grpc")}
}

type grpcSlog struct{ l *slog.Logger }

func (g grpcSlog) log(level slog.Level, msg string) {
	g.l.Log(context.Background(), level, msg)
}

func (g grpcSlog) Info(args ...any)   { g.log(slog.LevelDebug, fmt.Sprint(args...)) }
func (g grpcSlog) Infoln(args ...any) { g.log(slog.LevelDebug, fmt.Sprint(args...)) }
func (g grpcSlog) Infof(format string, args ...any) {
	g.log(slog.LevelDebug, fmt.Sprintf(format, args...))
}
func (g grpcSlog) Warning(args ...any)   { g.log(slog.LevelDebug, fmt.Sprint(args...)) }
func (g grpcSlog) Warningln(args ...any) { g.log(slog.LevelDebug, fmt.Sprint(args...)) }
func (g grpcSlog) Warningf(format string, args ...any) {
	g.log(slog.LevelDebug, fmt.Sprintf(format, args...))
}
func (g grpcSlog) Error(args ...any)   { g.log(slog.LevelInfo, fmt.Sprint(args...)) }
func (g grpcSlog) Errorln(args ...any) { g.log(slog.LevelInfo, fmt.Sprint(args...)) }
func (g grpcSlog) Errorf(format string, args ...any) {
	g.log(slog.LevelInfo, fmt.Sprintf(format, args...))
}
func (g grpcSlog) Fatal(args ...any)   { g.log(slog.LevelError, fmt.Sprint(args...)); os.Exit(1) }
func (g grpcSlog) Fatalln(args ...any) { g.log(slog.LevelError, fmt.Sprint(args...)); os.Exit(1) }
func (g grpcSlog) Fatalf(format string, args ...any) {
	g.log(slog.LevelError, fmt.Sprintf(format, args...))
	os.Exit(1)
}

// V reports whether verbosity level v is logged: grpc-go's verbose lines
// (v >= 1) never are, level 0 only when l logs Debug.
func (g grpcSlog) V(v int) bool {
	return v <= 0 && g.l.Enabled(context.Background(), slog.LevelDebug)
}
