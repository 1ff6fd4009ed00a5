package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

func init() {
	register(command{
		name:     "loadtest",
		summary:  "a serving benchmark: concurrent streaming requests against a worker or OpenAI-compatible URL",
		synopsis: "orcd loadtest [flags]",
		details: `Sends --requests streaming requests, --concurrency at a time (a closed
loop, or Poisson arrivals at --rate), with prompts of --prompt-tokens common
English words and max_tokens --output-tokens, each with its own seed drawn
from --seed, and reports output and total tokens per second, time to first
token, inter-token and request latency (mean, p50, p90, p99) and errors, as
a Markdown table or JSON. It exits 1 if any request failed.`,
		examples: []string{
			"orcd loadtest --url http://127.0.0.1:8080 --concurrency 64 --requests 256",
			"orcd loadtest --url http://127.0.0.1:8000 --api openai --rate 20 --requests 500 --format json",
			"orcd loadtest --concurrency 8 --prompt-tokens 128 --prompt-spread 0.5 --shared-prefix 64 --output-tokens 64",
		},
		setup: setupLoadtest,
	})
}

// loadtestFlags configure a run of orcd loadtest.
type loadtestFlags struct {
	url          string
	api          string
	modelName    string
	apiKey       string
	concurrency  int
	requests     int
	rate         float64
	promptTokens int
	promptSpread float64
	sharedPrefix int
	outputTokens int
	outputSpread float64
	temperature  float64
	seed         uint64
	warmup       int
	timeout      float64
	format       string
}

func setupLoadtest(fs *flag.FlagSet) func(*env) int {
	var lf loadtestFlags
	fs.StringVar(&lf.url, "url", "http://127.0.0.1:8080", "base `URL` of the server")
	choiceVar(fs, &lf.api, "api", "worker", []string{"worker", "openai"}, "worker (POST /execute, server-sent events) or openai (POST /v1/completions, streamed)")
	fs.StringVar(&lf.modelName, "model-name", "", "model field of OpenAI requests (default: the first of GET /v1/models)")
	fs.StringVar(&lf.apiKey, "api-key", "", "bearer `TOKEN` to send")
	numVar(fs, &lf.concurrency, "concurrency", 16, 1, noMax, "requests in flight at once (clients)")
	numVar(fs, &lf.requests, "requests", 64, 1, noMax, "requests to measure")
	numVar(fs, &lf.rate, "rate", 0, 0, 1e6, "request arrivals per second, Poisson (0: closed loop, each client sends its next request when the last ends)")
	numVar(fs, &lf.promptTokens, "prompt-tokens", 512, 1, 1<<20, "prompt length in tokens (one common English word each)")
	numVar(fs, &lf.promptSpread, "prompt-spread", 0, 0, 0.99, "prompt lengths vary uniformly by this fraction either way")
	numVar(fs, &lf.sharedPrefix, "shared-prefix", 0, 0, 1<<20, "tokens at the start of every prompt that are the same for all requests (exercises the prefix cache)")
	numVar(fs, &lf.outputTokens, "output-tokens", 256, 1, 1<<20, "max_tokens of each request")
	numVar(fs, &lf.outputSpread, "output-spread", 0, 0, 0.99, "max_tokens vary uniformly by this fraction either way")
	numVar(fs, &lf.temperature, "temperature", 1, 0, 2, "sampling temperature")
	fs.Uint64Var(&lf.seed, "seed", 1, "seed of the prompts, lengths and the requests' sampling seeds")
	numVar(fs, &lf.warmup, "warmup", 0, 0, noMax, "requests sent first and left out of the report, so that it measures a server already under load")
	numVar(fs, &lf.timeout, "timeout-sec", 600, 0.001, maxSeconds, "time limit of one request in seconds")
	choiceVar(fs, &lf.format, "format", "markdown", []string{"markdown", "json"}, "report format")
	return func(e *env) int {
		if lf.sharedPrefix > lf.promptTokens {
			return e.usageError("--shared-prefix %d is longer than --prompt-tokens %d", lf.sharedPrefix, lf.promptTokens)
		}
		if u, err := url.Parse(lf.url); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return e.usageError("--url %q is not an http:// or https:// URL", lf.url)
		}
		lf.url = strings.TrimSuffix(lf.url, "/")
		rep, err := loadtest(context.Background(), &lf, e.stderr)
		if err != nil {
			return e.fail(err)
		}
		if lf.format == "json" {
			enc := json.NewEncoder(e.stdout)
			enc.SetIndent("", "  ")
			enc.Encode(rep)
		} else {
			rep.markdown(e.stdout)
		}
		if rep.Failed > 0 {
			return 1
		}
		return 0
	}
}

// loadWords are common English words that are one token each, with their
// leading space, in the GPT-2 and o200k vocabularies alike: a prompt of n of
// them is about n tokens (the report counts what the server says it read).
var loadWords = strings.Fields(`the of and to in is that for it as was with be by on not he this are or his
from at which but have an they you were her she there one all we their been has when who will more no if out
so said what up its about than into them can only other new some could time these two may then do first any
my now such like our over man me even most made after also did many before must through back years where much
your way well down should because each just those people how too little state good very make world still own
see men work long get here between both life being under never day same another know while last might us great
old year off come since against go came right used take three`)

// loadRequest is one generated request.
type loadRequest struct {
	prompt    string
	maxTokens int
	seed      uint64
}

// makeRequests draws n requests from the flags' distributions with a
// generator seeded by the flags, so two runs send the same requests.
func makeRequests(lf *loadtestFlags, n int, salt uint64) []loadRequest {
	r := rand.New(rand.NewPCG(lf.seed, salt))
	spread := func(base int, f float64) int {
		return max(1, int(math.Round(float64(base)*(1+f*(2*r.Float64()-1)))))
	}
	words := func(rr *rand.Rand, k int) []string {
		w := make([]string, k)
		for i := range w {
			w[i] = loadWords[rr.IntN(len(loadWords))]
		}
		return w
	}
	shared := words(rand.New(rand.NewPCG(lf.seed, 0)), lf.sharedPrefix)
	reqs := make([]loadRequest, n)
	for i := range reqs {
		length := max(spread(lf.promptTokens, lf.promptSpread), lf.sharedPrefix)
		w := append(append([]string(nil), shared...), words(r, length-len(shared))...)
		reqs[i] = loadRequest{prompt: strings.Join(w, " "), maxTokens: spread(lf.outputTokens, lf.outputSpread), seed: r.Uint64N(1 << 53)}
	}
	return reqs
}

// loadResult is what one request measured.
type loadResult struct {
	err          string
	start, end   time.Time
	promptTokens int
	outputTokens int
	ttft         time.Duration
	itl          []time.Duration // gaps between tokens after the first
	latency      time.Duration
}

// loadReport is the outcome of a run, in the order it is printed.
type loadReport struct {
	URL             string             `json:"url"`
	API             string             `json:"api"`
	Concurrency     int                `json:"concurrency"`
	Rate            float64            `json:"rate"`
	Requests        int                `json:"requests"`
	Completed       int                `json:"completed"`
	Failed          int                `json:"failed"`
	Errors          map[string]int     `json:"errors,omitempty"`
	DurationSeconds float64            `json:"duration_seconds"`
	PromptTokens    int                `json:"prompt_tokens"`
	OutputTokens    int                `json:"output_tokens"`
	OutputTokPerSec float64            `json:"output_tokens_per_second"`
	TotalTokPerSec  float64            `json:"total_tokens_per_second"`
	RequestsPerSec  float64            `json:"requests_per_second"`
	TTFTms          map[string]float64 `json:"ttft_ms"`
	ITLms           map[string]float64 `json:"itl_ms"`
	LatencyMs       map[string]float64 `json:"latency_ms"`
}

// loadtest runs the warm-up and the measured requests and reports.
func loadtest(ctx context.Context, lf *loadtestFlags, progress io.Writer) (*loadReport, error) {
	// Every client keeps its connection between requests. (net/http keeps
	// 2 idle connections a host by default: the others would be closed and
	// reopened at each request, which costs the server accepts and can
	// briefly push a client past the server's connections-per-IP limit.)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = lf.concurrency
	client := &http.Client{Timeout: time.Duration(lf.timeout * float64(time.Second)), Transport: tr}
	if lf.api == "openai" && lf.modelName == "" {
		name, err := firstModel(ctx, client, lf)
		if err != nil {
			return nil, err
		}
		lf.modelName = name
	}
	// The warm-up requests go first in the same stream, so the measured
	// ones start while the server is already loaded, and the measured time
	// runs from the first measured request's start to the last one's end.
	reqs := append(makeRequests(lf, lf.warmup, 1), makeRequests(lf, lf.requests, 2)...)
	results := run(ctx, client, lf, reqs, newLoadProgress(progress, len(reqs)))[lf.warmup:]
	first, last := results[0].start, results[0].end
	for _, r := range results {
		if r.start.Before(first) {
			first = r.start
		}
		if r.end.After(last) {
			last = r.end
		}
	}
	return summarize(lf, results, last.Sub(first)), nil
}

// run sends reqs with lf's concurrency (and arrival rate) and returns each
// one's result, calling done after each.
func run(ctx context.Context, client *http.Client, lf *loadtestFlags, reqs []loadRequest, done func(loadResult)) []loadResult {
	results := make([]loadResult, len(reqs))
	next := make(chan int)
	go func() {
		defer close(next)
		r := rand.New(rand.NewPCG(lf.seed, 3))
		for i := range reqs {
			if lf.rate > 0 && i > 0 {
				time.Sleep(time.Duration(r.ExpFloat64() / lf.rate * float64(time.Second)))
			}
			next <- i
		}
	}()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range lf.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				res := send(ctx, client, lf, reqs[i], i)
				results[i] = res
				if done != nil {
					mu.Lock()
					done(res)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return results
}

// send runs one streaming request and measures it.
func send(ctx context.Context, client *http.Client, lf *loadtestFlags, req loadRequest, i int) (res loadResult) {
	res.start = time.Now()
	defer func() { res.end = time.Now() }()
	var path string
	var body map[string]any
	if lf.api == "worker" {
		path = "/execute"
		body = map[string]any{"job_id": fmt.Sprintf("loadtest-%d-%d", time.Now().UnixNano(), i), "prompt": req.prompt,
			"max_tokens": req.maxTokens, "temperature": lf.temperature, "seed": req.seed}
	} else {
		path = "/v1/completions"
		body = map[string]any{"model": lf.modelName, "prompt": req.prompt, "max_tokens": req.maxTokens, "temperature": lf.temperature,
			"seed": req.seed, "stream": true, "stream_options": map[string]any{"include_usage": true}}
	}
	payload, _ := json.Marshal(body)
	hreq, err := http.NewRequestWithContext(ctx, "POST", lf.url+path, bytes.NewReader(payload))
	if err != nil {
		res.err = err.Error()
		return res
	}
	hreq.Header.Set("Content-Type", "application/json")
	if lf.apiKey != "" {
		hreq.Header.Set("Authorization", "Bearer "+lf.apiKey)
	}
	start := time.Now()
	resp, err := client.Do(hreq)
	if err != nil {
		res.err = "transport: " + err.Error()
		return res
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		res.err = fmt.Sprintf("HTTP %d", resp.StatusCode)
		io.Copy(io.Discard, resp.Body)
		return res
	}
	var last time.Time
	tick := func() {
		now := time.Now()
		if last.IsZero() {
			res.ttft = now.Sub(start)
		} else {
			res.itl = append(res.itl, now.Sub(last))
		}
		last = now
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		if name, ok := strings.CutPrefix(line, "event: "); ok {
			event = name
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		if lf.api == "worker" {
			if err := workerEvent(event, data, &res, tick); err != "" {
				res.err = err
				return res
			}
			continue
		}
		if data == "[DONE]" {
			break
		}
		if err := openAIChunk(data, &res, tick); err != "" {
			res.err = err
			return res
		}
	}
	if err := sc.Err(); err != nil && res.err == "" {
		res.err = "stream: " + err.Error()
	}
	res.latency = time.Since(start)
	return res
}

// workerEvent reads one /execute event into res; it returns an error kind
// for an error event.
func workerEvent(event, data string, res *loadResult, tick func()) string {
	var d struct {
		TokensOut    int    `json:"tokens_out"`
		PromptTokens int    `json:"prompt_tokens"`
		Code         string `json:"code"`
	}
	switch event {
	case "token":
		tick()
	case "end", "metrics", "started", "error":
		if err := json.Unmarshal([]byte(data), &d); err != nil {
			return "bad " + event + " event"
		}
		if event == "error" {
			return "error event " + d.Code
		}
		if event == "end" {
			res.outputTokens = d.TokensOut
		}
		if d.PromptTokens > 0 {
			res.promptTokens = d.PromptTokens
		}
	}
	return ""
}

// openAIChunk reads one streamed completion chunk into res.
func openAIChunk(data string, res *loadResult, tick func()) string {
	var c struct {
		Choices []struct {
			Text string `json:"text"`
		} `json:"choices"`
		Usage *struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
		Error *struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(data), &c); err != nil {
		return "bad chunk"
	}
	if c.Error != nil {
		return "error chunk " + c.Error.Code
	}
	if len(c.Choices) > 0 && c.Choices[0].Text != "" {
		tick()
	}
	if c.Usage != nil {
		res.promptTokens, res.outputTokens = c.Usage.PromptTokens, c.Usage.CompletionTokens
	}
	return ""
}

// firstModel asks GET /v1/models for the served model's name.
func firstModel(ctx context.Context, client *http.Client, lf *loadtestFlags) (string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", lf.url+"/v1/models", nil)
	if err != nil {
		return "", err
	}
	if lf.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+lf.apiKey)
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || len(list.Data) == 0 {
		return "", fmt.Errorf("GET %s/v1/models: no model listed (%v); set --model-name", lf.url, err)
	}
	return list.Data[0].ID, nil
}

// summarize turns the results into the report.
func summarize(lf *loadtestFlags, results []loadResult, elapsed time.Duration) *loadReport {
	rep := &loadReport{URL: lf.url, API: lf.api, Concurrency: lf.concurrency, Rate: lf.rate, Requests: len(results),
		DurationSeconds: elapsed.Seconds()}
	var ttft, itl, lat []time.Duration
	for _, r := range results {
		if r.err != "" {
			rep.Failed++
			if rep.Errors == nil {
				rep.Errors = map[string]int{}
			}
			rep.Errors[r.err]++
			continue
		}
		rep.Completed++
		rep.PromptTokens += r.promptTokens
		rep.OutputTokens += r.outputTokens
		if r.ttft > 0 {
			ttft = append(ttft, r.ttft)
		}
		itl = append(itl, r.itl...)
		lat = append(lat, r.latency)
	}
	secs := max(elapsed.Seconds(), 1e-9)
	rep.OutputTokPerSec = float64(rep.OutputTokens) / secs
	rep.TotalTokPerSec = float64(rep.PromptTokens+rep.OutputTokens) / secs
	rep.RequestsPerSec = float64(rep.Completed) / secs
	rep.TTFTms, rep.ITLms, rep.LatencyMs = percentiles(ttft), percentiles(itl), percentiles(lat)
	return rep
}

// percentiles are the mean, p50, p90 and p99 of ds in milliseconds
// (nearest rank), or nil for none.
func percentiles(ds []time.Duration) map[string]float64 {
	if len(ds) == 0 {
		return nil
	}
	slices.Sort(ds)
	ms := func(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }
	rank := func(p float64) time.Duration { return ds[max(0, int(math.Ceil(p*float64(len(ds))))-1)] }
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return map[string]float64{"mean": ms(sum / time.Duration(len(ds))), "p50": ms(rank(0.5)), "p90": ms(rank(0.9)), "p99": ms(rank(0.99))}
}

// markdown prints the report as a table.
func (r *loadReport) markdown(w io.Writer) {
	fmt.Fprintf(w, "| %s | %s |\n|---|---|\n", "metric", "value")
	row := func(k, format string, args ...any) { fmt.Fprintf(w, "| %s | %s |\n", k, fmt.Sprintf(format, args...)) }
	row("target", "%s (%s API)", r.URL, r.API)
	mode := "closed loop"
	if r.Rate > 0 {
		mode = fmt.Sprintf("%.3g req/s Poisson", r.Rate)
	}
	row("load", "%d concurrent, %s", r.Concurrency, mode)
	row("requests", "%d completed, %d failed", r.Completed, r.Failed)
	for k, n := range r.Errors {
		row("error", "%d × %s", n, k)
	}
	row("duration", "%.3g s", r.DurationSeconds)
	row("prompt / output tokens", "%d / %d", r.PromptTokens, r.OutputTokens)
	row("output tok/s", "%.4g", r.OutputTokPerSec)
	row("total tok/s", "%.4g", r.TotalTokPerSec)
	row("requests/s", "%.3g", r.RequestsPerSec)
	for _, p := range []struct {
		name string
		v    map[string]float64
	}{{"TTFT", r.TTFTms}, {"inter-token latency", r.ITLms}, {"request latency", r.LatencyMs}} {
		if p.v != nil {
			row(p.name+" ms (mean / p50 / p90 / p99)", "%.4g / %.4g / %.4g / %.4g", p.v["mean"], p.v["p50"], p.v["p90"], p.v["p99"])
		}
	}
}

// newLoadProgress returns a per-request callback that redraws a progress
// line on a terminal (or prints one per tenth elsewhere), nil for no writer.
func newLoadProgress(w io.Writer, total int) func(loadResult) {
	if w == nil {
		return nil
	}
	start, tty := time.Now(), isTerminal(w)
	done, failed, tokens, lastTenth := 0, 0, 0, 0
	return func(r loadResult) {
		done++
		tokens += r.outputTokens
		if r.err != "" {
			failed++
		}
		if !tty && done*10/total == lastTenth && done != total {
			return
		}
		lastTenth = done * 10 / total
		secs := time.Since(start).Seconds()
		line := fmt.Sprintf("loadtest: %d/%d requests, %d failed, %.1f s, %.4g output tok/s", done, total, failed, secs, float64(tokens)/max(secs, 1e-9))
		if tty {
			end := ""
			if done == total {
				end = "\n"
			}
			fmt.Fprintf(w, "\r%s\x1b[K%s", line, end)
		} else {
			fmt.Fprintln(w, line)
		}
	}
}
