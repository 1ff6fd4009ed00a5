package server

import (
	"net/http"
	"sync"
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
	stepTokens   prometheus.Histogram
	stepSeqs     prometheus.Histogram
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
	m.stepTokens = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "orcd_step_tokens",
		Help:    "Tokens per engine step (decode tokens and prompt chunks together).",
		Buckets: prometheus.ExponentialBuckets(1, 2, 13),
	})
	m.stepSeqs = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "orcd_step_sequences",
		Help:    "Sequences per engine step.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 10),
	})
	e.ObserveSteps(func(s engine.StepInfo) {
		m.stepTokens.Observe(float64(s.Tokens))
		m.stepSeqs.Observe(float64(s.Sequences))
	})
	stat := func(name, help string, v func(engine.Stats) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return v(e.Stats()) })
	}
	counter := func(name, help string, v func(engine.Stats) float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return v(e.Stats()) })
	}
	m.registry.MustRegister(m.requests, m.refused, m.panics, m.tokens, m.promptTokens, m.ttft, m.interToken, m.stepTokens, m.stepSeqs,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		stat("orcd_queue_depth", "Requests waiting to run (orcd_waiting_sequences, kept for dashboards).",
			func(s engine.Stats) float64 { return float64(s.Waiting) }),
		stat("orcd_active_requests", "Sequences running (orcd_running_sequences, kept for dashboards).",
			func(s engine.Stats) float64 { return float64(s.Running) }),
		stat("orcd_running_sequences", "Sequences in the running batch.",
			func(s engine.Stats) float64 { return float64(s.Running) }),
		stat("orcd_waiting_sequences", "Sequences waiting to be admitted, preempted ones included.",
			func(s engine.Stats) float64 { return float64(s.Waiting) }),
		counter("orcd_preemptions_total", "Sequences preempted (to be recomputed) because the KV cache ran out of blocks.",
			func(s engine.Stats) float64 { return float64(s.Preemptions) }),
		stat("orcd_kv_blocks", "Blocks in the KV cache pool.",
			func(s engine.Stats) float64 { return float64(s.KVBlocks) }),
		stat("orcd_kv_block_tokens", "Tokens per KV cache block.",
			func(s engine.Stats) float64 { return float64(s.BlockSize) }),
		stat("orcd_kv_blocks_used", "KV cache blocks held by sequences.",
			func(s engine.Stats) float64 { return float64(s.KVBlocksUsed) }),
		stat("orcd_kv_blocks_free", "KV cache blocks not held by any sequence (cached prefixes included).",
			func(s engine.Stats) float64 { return float64(s.KVBlocks - s.KVBlocksUsed) }),
		stat("orcd_kv_blocks_cached", "Free KV cache blocks that keep a cached prompt prefix for reuse.",
			func(s engine.Stats) float64 { return float64(s.KVBlocksCached) }),
		counter("orcd_prefix_cache_queried_tokens_total", "Prompt tokens looked up in the prefix cache.",
			func(s engine.Stats) float64 { return float64(s.PrefixLookupTokens) }),
		counter("orcd_prefix_cache_hit_tokens_total", "Prompt tokens found in the prefix cache (not recomputed).",
			func(s engine.Stats) float64 { return float64(s.PrefixHitTokens) }),
		stat("orcd_prefix_cache_hit_rate", "Share of looked-up prompt tokens found in the prefix cache, since start.",
			func(s engine.Stats) float64 {
				if s.PrefixLookupTokens == 0 {
					return 0
				}
				return float64(s.PrefixHitTokens) / float64(s.PrefixLookupTokens)
			}),
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
	mu                 sync.Mutex // the choices of one request tick it at once
	start, first, last time.Time
}

func (m *metrics) clock(start time.Time) *tokenClock { return &tokenClock{m: m, start: start} }

// tick records one generated token.
func (c *tokenClock) tick() {
	c.mu.Lock()
	defer c.mu.Unlock()
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
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.first.IsZero() {
		return 0
	}
	return c.first.Sub(c.start)
}
