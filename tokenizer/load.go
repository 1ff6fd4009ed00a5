package tokenizer

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"orcd/gguf"
)

// Load resolves the tokenizer for a model: tokenizerPath (a tokenizer.json)
// if given, else tokenizer.json beside modelPath (in it, for a checkpoint
// directory), else the GGUF's own
// metadata (f may be nil). The error lists every source tried. When both a
// tokenizer.json and the GGUF's vocabulary are present and their sizes
// differ, Load logs a warning; the GGUF's special token ids and add_bos
// flag, where it has them, override what the tokenizer.json implies; without
// them, tokenizer_config.json and generation_config.json beside the
// tokenizer.json supply those, as they do for Hugging Face.
func Load(modelPath, tokenizerPath string, f *gguf.File) (*Tokenizer, error) {
	var tried []string
	jsonPath := tokenizerPath
	if jsonPath == "" && modelPath != "" {
		dir := filepath.Dir(modelPath)
		if st, err := os.Stat(modelPath); err == nil && st.IsDir() {
			dir = modelPath // a checkpoint directory holds its tokenizer
		}
		candidate := filepath.Join(dir, "tokenizer.json")
		if _, err := os.Stat(candidate); err == nil {
			jsonPath = candidate
		} else if errors.Is(err, fs.ErrNotExist) {
			tried = append(tried, candidate+" (not found)")
		} else {
			return nil, fmt.Errorf("tokenizer: %w", err)
		}
	}
	if jsonPath != "" {
		return loadJSONWithGGUF(jsonPath, f)
	}
	if f != nil && f.Has(keyModel) {
		t, err := FromGGUF(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", modelPath, err)
		}
		return t, nil
	}
	if f == nil {
		tried = append(tried, "GGUF metadata (no model file given)")
	} else {
		tried = append(tried, modelPath+" (GGUF has no "+keyModel+")")
	}
	return nil, fmt.Errorf("tokenizer: none found; tried %s", strings.Join(tried, ", "))
}

func loadJSONWithGGUF(path string, f *gguf.File) (*Tokenizer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	sp, err := hfSpec(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if f == nil || !f.Has(keyTokens) {
		// Without a GGUF vocabulary, the tokenizer's companion files beside it
		// say which tokens are BOS, EOS and PAD and whether BOS is added.
		if err := applyHFConfigFiles(sp, data, filepath.Dir(path)); err != nil {
			return nil, err
		}
	}
	if f != nil && f.Has(keyTokens) {
		if toks, err := f.GetStrings(keyTokens); err == nil && len(toks) != len(sp.pieces) {
			slog.Warn("tokenizer: vocabulary sizes differ", "tokenizer_json", path, "tokenizer_json_vocab", len(sp.pieces), "gguf_vocab", len(toks))
		}
		if err := readSpecialIDs(f, &sp.bos, &sp.eos, &sp.pad, &sp.eot, &sp.eom); err != nil {
			return nil, err
		}
		if b, err := f.GetBool(keyAddBOS); err == nil {
			sp.addBOS = b
		}
	}
	t, err := newTokenizer(sp)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// applyHFConfigFiles reads tokenizer_config.json and generation_config.json
// in dir, where present, into sp's special ids and add_bos.
func applyHFConfigFiles(sp *spec, tokenizerJSON []byte, dir string) error {
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("tokenizer: %w", err)
		}
		return b, nil
	}
	tc, err := read("tokenizer_config.json")
	if err != nil {
		return err
	}
	gc, err := read("generation_config.json")
	if err != nil {
		return err
	}
	if tc == nil && gc == nil {
		return nil
	}
	idOf := func(text string) int32 {
		for id, p := range sp.pieces {
			if string(p) == text {
				return int32(id)
			}
		}
		return -1
	}
	c, err := readHFConfig(tokenizerJSON, tc, gc, idOf, len(sp.pieces))
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	for _, s := range []struct{ from, to *int32 }{{&c.bos, &sp.bos}, {&c.eos, &sp.eos}, {&c.pad, &sp.pad}, {&c.eot, &sp.eot}} {
		if *s.from >= 0 {
			*s.to = *s.from
		}
	}
	sp.addBOS = c.addBOS
	return nil
}
