package main

import (
	"errors"
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
	fs.IntVar(&lf.maxConns, "max-connections", 1024, "client connections open at once; more are closed at accept (0: no limit)")
	fs.IntVar(&lf.maxConnsPerIP, "max-connections-per-ip", 256, "client connections open at once from one IP address (0: no limit)")
	fs.IntVar(&lf.maxHeaderBytes, "max-header-bytes", 64<<10, "largest request header block")
	fs.Float64Var(&lf.readTimeout, "read-timeout-sec", 10, "time a client has to send a request's headers, and again its body; then 408")
	fs.Float64Var(&lf.idleTimeout, "idle-timeout-sec", 120, "how long an idle keep-alive connection stays open")
	fs.Float64Var(&lf.admissionTimeout, "admission-timeout-sec", 30, "most time from a request's arrival until it is queued (body read, wait for an admission slot); then 503 QUEUE_FULL")
	fs.IntVar(&lf.admissionConcurrency, "admission-concurrency", 1, "generation requests decoded, checked and tokenized at once; the others wait, their bodies read, within --admission-timeout-sec")
	fs.StringVar(&lf.allowedOrigins, "allowed-origins", "", "comma-separated browser origins (https://host[:port]) allowed to call the API, or *; requests with another Origin header get 403")
	return lf
}

func (lf *limitFlags) validate() error {
	switch {
	case lf.maxConns < 0 || lf.maxConnsPerIP < 0:
		return errors.New("--max-connections and --max-connections-per-ip must not be negative")
	case lf.maxHeaderBytes < 1024:
		return errors.New("--max-header-bytes must be at least 1024")
	case lf.admissionConcurrency < 1:
		return errors.New("--admission-concurrency must be at least 1")
	case !(lf.readTimeout > 0 && lf.idleTimeout > 0 && lf.admissionTimeout > 0):
		return errors.New("--read-timeout-sec, --idle-timeout-sec and --admission-timeout-sec must be positive")
	}
	return nil
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
