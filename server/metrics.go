package server

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"orcd/engine"
)

// metrics are the server's Prometheus metrics, in a registry of their own so
// that several servers (tests) can coexist.
type metrics struct {
	registry     *prometheus.Registry
	requests     *prometheus.CounterVec
	refused      *prometheus.CounterVec
	panics       prometheus.Counter
	tokens       prometheus.Counter
	promptTokens prometheus.Counter
	ttft         prometheus.Histogram
	interToken   prometheus.Histogram
}

// newMetrics registers the server's metrics, the Go runtime's (go_*) and
// the process's (process_*: resident memory, open file descriptors, CPU);
// conns may be nil.
func newMetrics(e *engine.Engine, d Device, conns *ConnLimiter) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orcd_requests_total",
			Help: "Generation requests by endpoint and outcome (a stop reason, or an error code).",
		}, []string{"endpoint", "outcome"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orcd_refused_requests_total",
			Help: "Requests refused before their endpoint ran (origin, auth, route, content type, body size), by error code.",
		}, []string{"code"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "orcd_panics_total", Help: "Panics recovered in request handlers (each is logged with its stack).",
		}),
		tokens: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "orcd_generated_tokens_total", Help: "Tokens generated.",
		}),
		promptTokens: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "orcd_prompt_tokens_total", Help: "Prompt tokens processed.",
		}),
		ttft: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "orcd_time_to_first_token_seconds",
			Help:    "Time from request arrival to the first generated token.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
		interToken: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "orcd_inter_token_latency_seconds",
			Help:    "Time between consecutive generated tokens of one request.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
	}
	m.registry.MustRegister(m.requests, m.refused, m.panics, m.tokens, m.promptTokens, m.ttft, m.interToken,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "orcd_queue_depth", Help: "Requests waiting for a decoding slot.",
		}, func() float64 { return float64(e.QueueDepth()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "orcd_active_requests", Help: "Requests holding a decoding slot.",
		}, func() float64 { return float64(e.Active()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "orcd_vram_bytes", Help: "Device memory held by the model and its caches.",
		}, func() float64 {
			if d == nil {
				return 0
			}
			return float64(d.VRAMBytesUsed())
		}),
	)
	if conns != nil {
		m.registry.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "orcd_open_connections", Help: "Client connections open.",
			}, func() float64 { return float64(conns.Open()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "orcd_refused_connections_total", Help: "Connections closed at accept because a limit was reached.",
				ConstLabels: prometheus.Labels{"limit": "max_connections"},
			}, func() float64 { total, _ := conns.Refused(); return float64(total) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "orcd_refused_connections_total", Help: "Connections closed at accept because a limit was reached.",
				ConstLabels: prometheus.Labels{"limit": "max_connections_per_ip"},
			}, func() float64 { _, perIP := conns.Refused(); return float64(perIP) }),
		)
	}
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// tokenClock records time to first token and inter-token latency of one request.
type tokenClock struct {
	m                  *metrics
	start, first, last time.Time
}

func (m *metrics) clock(start time.Time) *tokenClock { return &tokenClock{m: m, start: start} }

// tick records one generated token.
func (c *tokenClock) tick() {
	now := time.Now()
	if c.first.IsZero() {
		c.first = now
		c.m.ttft.Observe(now.Sub(c.start).Seconds())
	} else {
		c.m.interToken.Observe(now.Sub(c.last).Seconds())
	}
	c.last = now
	c.m.tokens.Inc()
}

// ttft is the time to first token, or 0 when no token came.
func (c *tokenClock) ttft() time.Duration {
	if c.first.IsZero() {
		return 0
	}
	return c.first.Sub(c.start)
}
