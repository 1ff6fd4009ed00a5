package tokenizer

import (
	"errors"
	"fmt"

	"orcd/gguf"
)

// GGUF metadata keys of the tokenizer, as llama.cpp names them.
const (
	keyModel  = "tokenizer.ggml.model"
	keyPre    = "tokenizer.ggml.pre"
	keyTokens = "tokenizer.ggml.tokens"
	keyTypes  = "tokenizer.ggml.token_type"
	keyMerges = "tokenizer.ggml.merges"
	keyBOS    = "tokenizer.ggml.bos_token_id"
	keyEOS    = "tokenizer.ggml.eos_token_id"
	keyPAD    = "tokenizer.ggml.padding_token_id"
	keyEOT    = "tokenizer.ggml.eot_token_id"
	keyEOM    = "tokenizer.ggml.eom_token_id"
	keyAddBOS = "tokenizer.ggml.add_bos_token"
	keyAddEOS = "tokenizer.ggml.add_eos_token"
)

// FromGGUF loads the tokenizer from a model file's tokenizer.ggml.* metadata.
func FromGGUF(f *gguf.File) (*Tokenizer, error) {
	v, err := ReadGGUFVocab(f)
	if err != nil {
		return nil, err
	}
	return FromVocab(v)
}

// ReadGGUFVocab reads the tokenizer.ggml.* metadata. Token types default to
// normal when absent; special token ids default to -1.
func ReadGGUFVocab(f *gguf.File) (*GGUFVocab, error) {
	v := &GGUFVocab{}
	var err error
	if v.Model, err = f.GetString(keyModel); err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if v.Model != "gpt2" {
		return nil, fmt.Errorf("tokenizer: %s %q is not supported (only \"gpt2\", byte-level BPE)", keyModel, v.Model)
	}
	if v.Pre, err = f.GetString(keyPre); err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if v.Tokens, err = f.GetStrings(keyTokens); err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if f.Has(keyTypes) {
		if v.TokenTypes, err = f.GetInt32s(keyTypes); err != nil {
			return nil, fmt.Errorf("tokenizer: %w", err)
		}
	} else {
		v.TokenTypes = make([]int32, len(v.Tokens))
		for i := range v.TokenTypes {
			v.TokenTypes[i] = TypeNormal
		}
	}
	if v.Merges, err = f.GetStrings(keyMerges); err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	v.BOS, v.EOS, v.PAD, v.EOT, v.EOM = -1, -1, -1, -1, -1
	if err := readSpecialIDs(f, &v.BOS, &v.EOS, &v.PAD, &v.EOT, &v.EOM); err != nil {
		return nil, err
	}
	for _, k := range []struct {
		key string
		dst *bool
	}{{keyAddBOS, &v.AddBOS}, {keyAddEOS, &v.AddEOS}} {
		b, err := f.GetBool(k.key)
		if err != nil && !errors.Is(err, gguf.ErrMissingKey) {
			return nil, fmt.Errorf("tokenizer: %w", err)
		}
		*k.dst = b
	}
	return v, nil
}

// readSpecialIDs sets each special token id whose key f has; an absent
// key leaves its id as it is.
func readSpecialIDs(f *gguf.File, bos, eos, pad, eot, eom *int32) error {
	for _, k := range []struct {
		key string
		dst *int32
	}{{keyBOS, bos}, {keyEOS, eos}, {keyPAD, pad}, {keyEOT, eot}, {keyEOM, eom}} {
		id, err := optionalID(f, k.key)
		if err != nil {
			return err
		}
		if id >= 0 {
			*k.dst = id
		}
	}
	return nil
}

// optionalID reads a token id key, -1 if absent.
func optionalID(f *gguf.File, key string) (int32, error) {
	id, err := f.GetUint32(key)
	if errors.Is(err, gguf.ErrMissingKey) {
		return -1, nil
	}
	if err != nil {
		return -1, fmt.Errorf("tokenizer: %w", err)
	}
	if id > 1<<31-1 {
		return -1, fmt.Errorf("tokenizer: %s = %d is not a token id", key, id)
	}
	return int32(id), nil
}

// SetOn writes the vocabulary as tokenizer.ggml.* metadata. Ids of -1 are
// left out.
func (v *GGUFVocab) SetOn(w *gguf.Writer) {
	w.SetString(keyModel, v.Model)
	w.SetString(keyPre, v.Pre)
	w.SetStrings(keyTokens, v.Tokens)
	w.SetInt32s(keyTypes, v.TokenTypes)
	w.SetStrings(keyMerges, v.Merges)
	for _, k := range []struct {
		key string
		id  int32
	}{{keyBOS, v.BOS}, {keyEOS, v.EOS}, {keyPAD, v.PAD}, {keyEOT, v.EOT}, {keyEOM, v.EOM}} {
		if k.id >= 0 {
			w.SetUint32(k.key, uint32(k.id))
		}
	}
	w.SetBool(keyAddBOS, v.AddBOS)
	w.SetBool(keyAddEOS, v.AddEOS)
}
