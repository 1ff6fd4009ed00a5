package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"orcd/engine"
)

func init() {
	register(command{
		name:     "run",
		summary:  "generate text from a prompt (or token ids) and print it",
		synopsis: "orcd run [flags] (--prompt TEXT | --ids 1,2,3)",
		details: `The text is streamed to stdout as it is generated; --json prints the ids,
the text and the stop reason at the end instead. Generation stops at an
end-of-generation token, after --max-tokens tokens, or when the context
(--ctx-size) is full. Without --model, the built-in kjv-demo is used: a
small GPT-2 trained on the King James Version, so its text is KJV-like.`,
		examples: []string{
			`orcd run --prompt "In the beginning God" --max-tokens 32`,
			`orcd run --model gpt2.gguf --prompt "Hello" --temperature 0 --json`,
			`orcd run --model gpt2.gguf --ids 15496,11,995 --seed 7 --top-p 0.9`,
		},
		setup: setupRun,
	})
}

// runOutput is what --json prints.
type runOutput struct {
	TokenIDs   []int32 `json:"token_ids"`
	Text       string  `json:"text"`
	StopReason string  `json:"stop_reason"`
}

func setupRun(fs *flag.FlagSet) func(*env) int {
	mf := addModelFlags(fs, "fast")
	lf := addLogFlags(fs, "text")
	prompt := fs.String("prompt", "", "prompt `TEXT`")
	idsFlag := fs.String("ids", "", "prompt as comma-separated token `IDS` (instead of --prompt)")
	maxTokens := numFlag(fs, "max-tokens", 64, 1, noMax, "most tokens to generate")
	temperature := numFlag[float64](fs, "temperature", engine.DefaultSampling.Temperature, 0, 2, "sampling temperature; 0 is greedy")
	topK := numFlag(fs, "top-k", 0, 0, noMax, "sample from the K most likely tokens; 0 keeps all")
	topP := numFlag[float64](fs, "top-p", 1, 0, 1, "sample from the smallest set of tokens whose probability reaches P")
	seed := fs.Uint64("seed", 0, "sampling seed")
	jsonOut := fs.Bool("json", false, `print {"token_ids":[...],"text":"...","stop_reason":"..."} instead of streaming text`)
	return func(e *env) int {
		if (*prompt == "") == (*idsFlag == "") {
			return e.usageError("give one of --prompt or --ids")
		}
		params := engine.SamplingParams{Temperature: *temperature, TopK: *topK, TopP: *topP, RepetitionPenalty: 1}
		if err := params.Validate(); err != nil {
			return e.usageError("%v", err)
		}
		var ids []int32
		if *idsFlag != "" {
			var err error
			if ids, err = parseIDs(*idsFlag); err != nil {
				return e.usageError("%v", err)
			}
		}

		log := lf.logger(e.stderr)
		lm, err := loadModel(mf, true, log, e.stderr)
		if err != nil {
			return e.fail(err)
		}
		defer lm.Close()
		if ids == nil {
			if lm.Tokenizer.AddBOS() && lm.Tokenizer.BOS() >= 0 {
				ids = append(ids, lm.Tokenizer.BOS())
			}
			ids = append(ids, lm.Tokenizer.Encode(*prompt)...)
		}
		text := io.Discard
		if !*jsonOut {
			text = e.stdout
		}
		out, err := generate(lm, ids, *maxTokens, engine.NewSampler(params, *seed), text, log)
		if err != nil {
			return e.fail(err)
		}
		if *jsonOut {
			if err := json.NewEncoder(e.stdout).Encode(out); err != nil {
				return e.fail(err)
			}
		} else {
			fmt.Fprintln(e.stdout)
		}
		return 0
	}
}

// generate runs the prompt, then samples up to maxTokens tokens one decode
// step at a time, streaming their text to w. It stops at an
// end-of-generation token, the token budget or a full cache.
func generate(lm *loadedModel, prompt []int32, maxTokens int, sampler *engine.Sampler, w io.Writer, log *slog.Logger) (*runOutput, error) {
	if len(prompt) == 0 {
		return nil, errors.New("the prompt is empty")
	}
	if len(prompt) >= lm.CtxSize {
		return nil, fmt.Errorf("the prompt has %d tokens; --ctx-size %d leaves no room to generate", len(prompt), lm.CtxSize)
	}
	cache, err := lm.Model.NewCache(lm.CtxSize)
	if err != nil {
		return nil, err
	}
	defer cache.Free()

	start := time.Now()
	logits, err := lm.Model.Forward(cache, prompt, false)
	if err != nil {
		return nil, err
	}
	prefill := time.Since(start)

	out := &runOutput{TokenIDs: []int32{}, StopReason: string(engine.StopMaxTokens)}
	history := append([]int32(nil), prompt...)
	dec := lm.Tokenizer.NewStreamDecoder()
	var text strings.Builder
	emit := func(s string) {
		text.WriteString(s)
		io.WriteString(w, s)
	}
	start = time.Now()
	for len(out.TokenIDs) < maxTokens {
		id := sampler.Sample(logits, history)
		if lm.Tokenizer.IsEOG(id) {
			out.StopReason = string(engine.StopEOG)
			break
		}
		out.TokenIDs = append(out.TokenIDs, id)
		history = append(history, id)
		emit(dec.Push(id))
		if len(out.TokenIDs) == maxTokens {
			break
		}
		if cache.Len() == cache.Cap() {
			out.StopReason = string(engine.StopContextFull)
			break
		}
		if logits, err = lm.Model.Forward(cache, []int32{id}, false); err != nil {
			return nil, err
		}
	}
	emit(dec.Flush())
	out.Text = text.String()
	decode := time.Since(start)
	log.Info("generated", "prompt_tokens", len(prompt), "prefill_tokens_per_s", float64(len(prompt))/prefill.Seconds(),
		"tokens", len(out.TokenIDs), "decode_tokens_per_s", float64(len(out.TokenIDs))/decode.Seconds(),
		"stop_reason", out.StopReason)
	return out, nil
}

// parseIDs parses "1,2,3" into token ids.
func parseIDs(s string) ([]int32, error) {
	parts := strings.Split(s, ",")
	ids := make([]int32, 0, len(parts))
	for i, p := range parts {
		v, err := strconv.ParseInt(strings.TrimSpace(p), 10, 32)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("--ids: item %d (%q) is not a token id", i+1, p)
		}
		ids = append(ids, int32(v))
	}
	return ids, nil
}
