package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"orcd/gguf"
	"orcd/tokenizer"
)

func init() {
	register(command{
		name:    "tokenize",
		summary: "encode text to token ids, or decode ids to text",
		run: func(args []string, stdout, stderr io.Writer) int {
			return runTokenize(args, os.Stdin, stdout, stderr)
		},
	})
}

const tokenizeUsage = `Usage: orcd tokenize (--model F.gguf | --tokenizer tokenizer.json | --vocab NAME) [flags] [TEXT...]

Encodes each TEXT argument and prints its ids as a JSON array, then one line
per token: the id and the token's text (Go-quoted; a token may hold part of a
UTF-8 character). Special-token text such as <|start|> is encoded as plain
text unless --parse-special is given.

  --jsonl    read one JSON string per stdin line; print one JSON array of ids
             per line, in the same order
  --decode   the reverse: each TEXT argument (or, without any, each stdin
             line) is a JSON array of ids; print the decoded text as a JSON
             string

With --model, a tokenizer.json beside the model is preferred to the GGUF's
own vocabulary, as when serving.

Flags:
`

func runTokenize(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tokenize", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	modelPath := fs.String("model", "", "GGUF model whose tokenizer to use")
	tokPath := fs.String("tokenizer", "", "HF tokenizer.json to use")
	vocab := fs.String("vocab", "", `embedded vocabulary to use: "gpt2" or "o200k_harmony"`)
	jsonl := fs.Bool("jsonl", false, "read JSON strings from stdin, one per line; print id arrays")
	decode := fs.Bool("decode", false, "decode JSON arrays of ids to JSON strings")
	parseSpecial := fs.Bool("parse-special", false, "encode special-token text (<|start|>) as special tokens")
	printUsage := func(w io.Writer) {
		fmt.Fprint(w, tokenizeUsage)
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout)
			return 0
		}
		fmt.Fprintf(stderr, "orcd tokenize: %v\n", err)
		printUsage(stderr)
		return 2
	}
	sources := 0
	for _, s := range []string{*modelPath, *tokPath, *vocab} {
		if s != "" {
			sources++
		}
	}
	if sources == 0 || (*vocab != "" && sources > 1) || (*jsonl && (*decode || fs.NArg() > 0)) {
		fmt.Fprintf(stderr, "orcd tokenize: give --model and/or --tokenizer, or --vocab; --jsonl reads stdin only and excludes --decode\n")
		printUsage(stderr)
		return 2
	}
	tk, err := openTokenizer(*modelPath, *tokPath, *vocab)
	if err != nil {
		fmt.Fprintf(stderr, "orcd tokenize: %s\n", strings.ReplaceAll(err.Error(), "\n", `\n`))
		return 1
	}
	encode := tk.Encode
	if *parseSpecial {
		encode = tk.EncodeSpecial
	}
	out := bufio.NewWriter(stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false) // print <|start|>, not \u003c|start|\u003e

	switch {
	case *jsonl:
		err = eachLine(stdin, func(n int, line string) error {
			var text string
			if err := json.Unmarshal([]byte(line), &text); err != nil {
				return fmt.Errorf("stdin line %d: want a JSON string: %v", n, err)
			}
			return enc.Encode(encode(text))
		})
	case *decode:
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
		if fs.NArg() > 0 {
			for i, a := range fs.Args() {
				if err = decodeOne("argument "+strconv.Itoa(i+1), a); err != nil {
					break
				}
			}
		} else {
			err = eachLine(stdin, func(n int, line string) error {
				return decodeOne("stdin line "+strconv.Itoa(n), line)
			})
		}
	default:
		if fs.NArg() == 0 {
			fmt.Fprintf(stderr, "orcd tokenize: no TEXT to encode (or use --jsonl)\n")
			return 2
		}
		for _, text := range fs.Args() {
			ids := encode(text)
			if err = enc.Encode(ids); err != nil {
				break
			}
			for _, id := range ids {
				fmt.Fprintf(out, "%d\t%s\n", id, strconv.Quote(tk.TokenText(id)))
			}
		}
	}
	if err != nil {
		out.Flush()
		fmt.Fprintf(stderr, "orcd tokenize: %v\n", err)
		return 1
	}
	return 0
}

// openTokenizer loads the tokenizer the flags name.
func openTokenizer(modelPath, tokPath, vocab string) (*tokenizer.Tokenizer, error) {
	if vocab != "" {
		return tokenizer.Embedded(vocab)
	}
	var f *gguf.File
	if modelPath != "" {
		var err error
		if f, err = gguf.Open(modelPath); err != nil {
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
