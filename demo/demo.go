// Package demo holds orcd's built-in model, the default of run, serve and
// the other model commands: kjv-demo, a small GPT-2 (17.7M parameters, GPT-2
// vocabulary, Q8_0) trained by tools/train_demo.py on the King James
// Version, so that a first command prints real words. README.md here has
// its provenance and how to rebuild it.
package demo

import (
	"errors"
	"fmt"
	"io/fs"

	"orcd/gguf"
	"orcd/tokenizer"
)

// Name is the model's name, which serve uses as its API id.
const Name = "kjv-demo"

// Vocab is the embedded vocabulary whose metadata the model carries, so
// that tokenize can use the model's tokenizer without loading the model.
const Vocab = tokenizer.VocabGPT2

// file is the model's path in files (embed.go). The directory pattern lets
// a source tree without it still build; Open then says what is missing.
const file = "model/" + Name + ".gguf"

// Open parses the built-in model, from a copy in memory.
func Open() (*gguf.File, error) {
	data, err := files.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("this orcd was built without its demo model (demo/%s missing, or the nodemo build tag; see demo/README.md); give --model FILE", file)
	}
	if err != nil {
		return nil, err
	}
	return gguf.Parse(Name+".gguf (built in)", data)
}
