package app

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

// webAssets is the web app, built from client/web/app by
// `npm run build:app` in client/web (esbuild) and committed; scripts/test.sh
// rebuilds it and fails on a difference, as for gen/.
//
//go:embed web
var webAssets embed.FS

// webCSP is the page's Content-Security-Policy: scripts, styles and
// everything else only from chatd itself (no inline script or style, no
// eval), connections to chatd's own origin over HTTP or WebSocket (the
// ws:// and wss:// sources name the request's host; CSP Level 3 'self'
// covers them too, older browsers need them named), no framing.
const webCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; connect-src 'self'"

// mountWebApp serves the web app: index.html at / and its assets under
// /assets/, each with the CSP and no-sniff headers.
func (a *App) mountWebApp(mux *http.ServeMux) {
	sub, err := fs.Sub(webAssets, "web")
	if err != nil {
		panic(err) // the embedded tree always has web/
	}
	files := http.FileServerFS(sub)
	secure := func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		host := r.Host
		h.Set("Content-Security-Policy", webCSP+" ws://"+host+" wss://"+host)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
	}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		secure(w, r)
		h := w.Header()
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Type", "text/html; charset=utf-8")
		http.ServeFileFS(w, r, sub, "index.html")
	})
	mux.HandleFunc("GET /assets/", func(w http.ResponseWriter, r *http.Request) {
		secure(w, r)
		if strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
