package main

import (
	"encoding/json"
	"flag"
)

func init() {
	register(command{
		name:     "logits",
		summary:  "print the logits of token ids as JSON (for conformance checks)",
		synopsis: "orcd logits [flags] --ids 1,2,3",
		details: `Runs the ids through the model in one forward pass and prints
{"n_vocab": N, "logits": [[...]]}: one row of N float32 logits for the last
position, or one per position with --all.`,
		examples: []string{
			"orcd logits --model gpt2.gguf --ids 15496,11,995",
			"orcd logits --model gpt2.gguf --device cpu --ids 15496,11,995 --all",
		},
		setup: setupLogits,
	})
}

// logitsOutput is what logits prints: one row of n_vocab float32 logits
// for the last position, or for every position with --all.
type logitsOutput struct {
	NVocab int         `json:"n_vocab"`
	Logits [][]float32 `json:"logits"`
}

func setupLogits(fs *flag.FlagSet) func(*env) int {
	mf := addModelFlags(fs, "exact")
	lf := addLogFlags(fs, "text")
	idsFlag := fs.String("ids", "", "comma-separated token `IDS`")
	all := fs.Bool("all", false, "print the logits of every position, not only the last")
	fs.Bool("json", true, "print JSON (the only format)")
	return func(e *env) int {
		if *idsFlag == "" {
			return e.usageError("need --ids 1,2,3")
		}
		ids, err := parseIDs(*idsFlag)
		if err != nil {
			return e.usageError("%v", err)
		}
		lm, err := loadModel(mf, false, lf.logger(e.stderr), e.stderr)
		if err != nil {
			return e.fail(err)
		}
		defer lm.Close()
		cache, err := lm.Model.NewCache(lm.CtxSize)
		if err != nil {
			return e.fail(err)
		}
		defer cache.Free()
		logits, err := lm.Model.Forward(cache, ids, *all)
		if err != nil {
			return e.fail(err)
		}
		vocab := lm.Model.Config().VocabSize
		out := logitsOutput{NVocab: vocab}
		for lo := 0; lo < len(logits); lo += vocab {
			out.Logits = append(out.Logits, logits[lo:lo+vocab])
		}
		if err := json.NewEncoder(e.stdout).Encode(out); err != nil {
			return e.fail(err)
		}
		return 0
	}
}
