package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
)

func init() {
	register(command{
		name:    "logits",
		summary: "print the logits of token ids as JSON (for conformance checks)",
		run:     runLogits,
	})
}

// logitsOutput is what logits prints: one row of n_vocab float32 logits
// for the last position, or for every position with --all.
type logitsOutput struct {
	NVocab int         `json:"n_vocab"`
	Logits [][]float32 `json:"logits"`
}

func runLogits(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("logits", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mf := addModelFlags(fs)
	idsFlag := fs.String("ids", "", "comma-separated token ids")
	all := fs.Bool("all", false, "print the logits of every position, not only the last")
	fs.Bool("json", true, "print JSON (the only format)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 || *idsFlag == "" {
		fmt.Fprintln(stderr, "orcd logits: need --ids 1,2,3 (and no other arguments)")
		return 2
	}
	ids, err := parseIDs(*idsFlag)
	if err != nil {
		fmt.Fprintf(stderr, "orcd logits: %v\n", err)
		return 2
	}
	lm, err := loadModel(mf, false, slog.New(slog.NewTextHandler(stderr, nil)), stderr)
	if err != nil {
		fmt.Fprintf(stderr, "orcd logits: %v\n", err)
		return 1
	}
	defer lm.Close()
	cache, err := lm.Model.NewCache(lm.CtxSize)
	if err != nil {
		fmt.Fprintf(stderr, "orcd logits: %v\n", err)
		return 1
	}
	defer cache.Free()
	logits, err := lm.Model.Forward(cache, ids, *all)
	if err != nil {
		fmt.Fprintf(stderr, "orcd logits: %v\n", err)
		return 1
	}
	vocab := lm.Model.Config().VocabSize
	out := logitsOutput{NVocab: vocab}
	for lo := 0; lo < len(logits); lo += vocab {
		out.Logits = append(out.Logits, logits[lo:lo+vocab])
	}
	if err := json.NewEncoder(stdout).Encode(out); err != nil {
		fmt.Fprintf(stderr, "orcd logits: %v\n", err)
		return 1
	}
	return 0
}
