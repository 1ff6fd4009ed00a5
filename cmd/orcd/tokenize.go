package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"orcd/demo"
	"orcd/gguf"
	"orcd/model"
	"orcd/tokenizer"
)

func init() {
	register(command{
		name:     "tokenize",
		summary:  "encode text to token ids, or decode ids to text",
		synopsis: "orcd tokenize [--model FILE | --tokenizer FILE | --vocab NAME] [flags] [TEXT...]",
		details: `Encodes each TEXT argument and prints its ids as a JSON array, then one line
per token: the id and the token's text (Go-quoted; a token may hold part of a
UTF-8 character). Special-token text such as <|start|> is encoded as plain
text unless --parse-special is given.

  --jsonl    read one JSON string per stdin line; print one JSON array of ids
             per line, in the same order
  --decode   the reverse: each TEXT argument (or, without any, each stdin
             line) is a JSON array of ids; print the decoded text as a JSON
             string

With --model, a tokenizer.json beside the model is preferred to the GGUF's
own vocabulary, as when serving. Without --model, --tokenizer or --vocab,
the built-in model's vocabulary (gpt2) is used, as run and serve use the
built-in model.
A TEXT that begins with a dash goes after --.`,
		examples: []string{
			`orcd tokenize "Hello, world"`,
			`orcd tokenize --vocab gpt2 "Hello, world" " and more"`,
			`orcd tokenize --model gpt2.gguf --decode "[15496, 11, 995]"`,
			`orcd tokenize --vocab o200k_harmony --parse-special "<|start|>user"`,
			`orcd tokenize --vocab gpt2 -- "-not a flag"`,
		},
		args:  "[TEXT...]",
		setup: setupTokenize,
	})
}

func setupTokenize(fs *flag.FlagSet) func(*env) int {
	modelPath := fs.String("model", "", "GGUF model `FILE` whose tokenizer to use")
	tokPath := fs.String("tokenizer", "", "HF tokenizer.json `FILE` to use")
	vocab := choiceFlag(fs, "vocab", "", []string{tokenizer.VocabGPT2, tokenizer.VocabO200kHarmony}, "embedded vocabulary to use")
	jsonl := fs.Bool("jsonl", false, "read JSON strings from stdin, one per line; print id arrays")
	decode := fs.Bool("decode", false, "decode JSON arrays of ids to JSON strings")
	parseSpecial := fs.Bool("parse-special", false, "encode special-token text (<|start|>) as special tokens")
	lf := addLogFlags(fs, "text")
	return func(e *env) int {
		if *vocab != "" && (*modelPath != "" || *tokPath != "") {
			return e.usageError("--vocab excludes --model and --tokenizer")
		}
		if *jsonl && (*decode || len(e.args) > 0) {
			return e.usageError("--jsonl reads stdin only and excludes --decode")
		}
		if !*jsonl && !*decode && len(e.args) == 0 {
			return e.usageError("no TEXT to encode (or use --jsonl)")
		}
		if *modelPath == "" && *tokPath == "" && *vocab == "" {
			lf.logger(e.stderr).Info("no --model, --tokenizer or --vocab given; using the built-in model's vocabulary", "model", demo.Name, "vocab", demo.Vocab)
			*vocab = demo.Vocab
		}
		tk, err := openTokenizer(*modelPath, *tokPath, *vocab)
		if err != nil {
			return e.fail(err)
		}
		if err := tokenizeWith(e, tk, *jsonl, *decode, *parseSpecial); err != nil {
			return e.fail(err)
		}
		return 0
	}
}

// tokenizeWith runs the mode the flags chose with tk.
func tokenizeWith(e *env, tk *tokenizer.Tokenizer, jsonl, decode, parseSpecial bool) error {
	encode := tk.Encode
	if parseSpecial {
		encode = tk.EncodeSpecial
	}
	out := bufio.NewWriter(e.stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false) // print <|start|>, not \u003c|start|\u003e

	switch {
	case jsonl:
		return eachLine(e.stdin, func(n int, line string) error {
			var text string
			if err := json.Unmarshal([]byte(line), &text); err != nil {
				return fmt.Errorf("stdin line %d: want a JSON string: %v", n, err)
			}
			return enc.Encode(encode(text))
		})
	case decode:
		decodeOne := func(where, line string) error {
			var ids []int32
			if err := json.Unmarshal([]byte(line), &ids); err != nil {
				return fmt.Errorf("%s: want a JSON array of token ids: %v", where, err)
			}
			for i, id := range ids {
				if id < 0 || int(id) >= tk.VocabSize() {
					return fmt.Errorf("%s: id %d (element %d) is outside the vocabulary of %d", where, id, i, tk.VocabSize())
				}
			}
			return enc.Encode(tk.Decode(ids))
		}
		if len(e.args) == 0 {
			return eachLine(e.stdin, func(n int, line string) error {
				return decodeOne("stdin line "+strconv.Itoa(n), line)
			})
		}
		for i, a := range e.args {
			if err := decodeOne("argument "+strconv.Itoa(i+1), a); err != nil {
				return err
			}
		}
		return nil
	}
	for _, text := range e.args {
		ids := encode(text)
		if err := enc.Encode(ids); err != nil {
			return err
		}
		for _, id := range ids {
			fmt.Fprintf(out, "%d\t%s\n", id, strconv.Quote(tk.TokenText(id)))
		}
	}
	return nil
}

// openTokenizer loads the tokenizer the flags name.
func openTokenizer(modelPath, tokPath, vocab string) (*tokenizer.Tokenizer, error) {
	if vocab != "" {
		return tokenizer.Embedded(vocab)
	}
	var f *gguf.File
	if modelPath != "" {
		var err error
		if f, err = model.Open(modelPath); err != nil {
			return nil, err
		}
		defer f.Close()
	}
	return tokenizer.Load(modelPath, tokPath, f)
}

// eachLine calls fn with each line of r (numbered from 1, without its line
// ending), however long.
func eachLine(r io.Reader, fn func(n int, line string) error) error {
	br := bufio.NewReader(r)
	for n := 1; ; n++ {
		line, err := br.ReadString('\n')
		if line != "" {
			if err := fn(n, strings.TrimRight(line, "\r\n")); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("stdin: %w", err)
		}
	}
}
