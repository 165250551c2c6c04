package app

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// listenPprof binds cfg.PprofAddr (if set) for the Go runtime profiles of
// net/http/pprof under /debug/pprof/. It is a listener of its own, never
// the public HTTP port: profiles show internals and a CPU profile costs
// CPU, so bind it to loopback or a private interface.
func (a *App) listenPprof() error {
	if a.cfg.PprofAddr == "" {
		return nil
	}
	lis, err := net.Listen("tcp", a.cfg.PprofAddr)
	if err != nil {
		return fmt.Errorf("listen pprof %s: %w", a.cfg.PprofAddr, err)
	}
	if tcp, ok := lis.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		a.log.Warn("pprof listens on a non-loopback address: keep it off public networks", "addr", lis.Addr().String())
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	a.pprofLis = lis
	a.pprofServer = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return nil
}

// PprofAddr is the bound pprof address (host:port), or "" when off.
func (a *App) PprofAddr() string {
	if a.pprofLis == nil {
		return ""
	}
	return a.pprofLis.Addr().String()
}
