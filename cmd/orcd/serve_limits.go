package main

import (
	"flag"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"orcd/server"
)

// limitFlags are serve's limits on connections, request reading and
// admission, and the browser origins it serves: what bounds the resources
// a client can hold before its request is queued.
type limitFlags struct {
	maxConns, maxConnsPerIP int
	maxHeaderBytes          int
	admissionConcurrency    int
	readTimeout             float64
	idleTimeout             float64
	admissionTimeout        float64
	allowedOrigins          string
}

func addLimitFlags(fs *flag.FlagSet) *limitFlags {
	lf := &limitFlags{}
	numVar(fs, &lf.maxConns, "max-connections", 1024, 0, noMax, "client connections open at once; more are closed at accept (0: no limit)")
	numVar(fs, &lf.maxConnsPerIP, "max-connections-per-ip", 256, 0, noMax, "client connections open at once from one IP address (0: no limit)")
	numVar(fs, &lf.maxHeaderBytes, "max-header-bytes", 64<<10, 1024, noMax, "largest request header block in bytes")
	numVar(fs, &lf.readTimeout, "read-timeout-sec", 10, 0.001, maxSeconds, "time a client has to send a request's headers, and again its body; then 408")
	numVar(fs, &lf.idleTimeout, "idle-timeout-sec", 120, 0.001, maxSeconds, "how long an idle keep-alive connection stays open")
	numVar(fs, &lf.admissionTimeout, "admission-timeout-sec", 30, 0.001, maxSeconds, "most time from a request's arrival until it is queued (body read, wait for an admission slot); then 503 QUEUE_FULL")
	numVar(fs, &lf.admissionConcurrency, "admission-concurrency", 1, 1, noMax, "generation requests decoded, checked and tokenized at once; the others wait, their bodies read, within --admission-timeout-sec")
	fs.StringVar(&lf.allowedOrigins, "allowed-origins", "", "comma-separated browser `ORIGINS` (https://host[:port]) allowed to call the API, or *; requests with another Origin header get 403")
	return lf
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// apply sets the server's limits in cfg; conns is the listener's limiter.
func (lf *limitFlags) apply(cfg *server.Config, conns *server.ConnLimiter) {
	cfg.BodyReadTimeout = seconds(lf.readTimeout)
	cfg.AdmissionTimeout = seconds(lf.admissionTimeout)
	cfg.AdmissionConcurrency = lf.admissionConcurrency
	cfg.Connections = conns
	for o := range strings.SplitSeq(lf.allowedOrigins, ",") {
		if o = strings.TrimSuffix(strings.TrimSpace(o), "/"); o != "" {
			cfg.AllowedOrigins = append(cfg.AllowedOrigins, o)
		}
	}
}

// listener wraps ln in the connection limits.
func (lf *limitFlags) listener(ln net.Listener) *server.ConnLimiter {
	return server.LimitConnections(ln, lf.maxConns, lf.maxConnsPerIP)
}

// httpServer is the http.Server for h. It has no ReadTimeout or
// WriteTimeout, which would cut off long event streams; the server bounds
// the body's read time itself.
func (lf *limitFlags) httpServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: seconds(lf.readTimeout), IdleTimeout: seconds(lf.idleTimeout),
		MaxHeaderBytes: lf.maxHeaderBytes, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
}
