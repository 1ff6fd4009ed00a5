package tokenizer

import (
	"encoding/json"
	"fmt"
	"slices"
)

// KeyChatTemplate is the GGUF metadata key of a model's Jinja chat template.
const KeyChatTemplate = "tokenizer.chat_template"

// HFVocab converts a Hugging Face tokenizer (tokenizer.json, and where
// present tokenizer_config.json and generation_config.json) into the GGUF
// vocabulary llama.cpp's converter writes: tokens in their byte-level
// spelling, added tokens as control (special) or user-defined tokens, the
// merges, the pre-tokenizer's name, the special token ids and add_bos. It
// also returns the chat template of tokenizer_config.json ("" if none).
func HFVocab(tokenizerJSON, tokenizerConfig, generationConfig []byte) (*GGUFVocab, string, error) {
	sp, err := hfSpec(tokenizerJSON) // validates everything the tokenizer uses
	if err != nil {
		return nil, "", err
	}
	var h hfJSON
	if err := json.Unmarshal(tokenizerJSON, &h); err != nil {
		return nil, "", fmt.Errorf("tokenizer.json: %w", err)
	}
	var pre hfPreTokenizer
	var r preResolver
	if err := json.Unmarshal(h.PreTokenizer, &pre); err != nil {
		return nil, "", fmt.Errorf("tokenizer.json: pre_tokenizer: %w", err)
	}
	if err := r.add(&pre); err != nil {
		return nil, "", fmt.Errorf("tokenizer.json: pre_tokenizer: %w", err)
	}
	n := len(sp.pieces)
	v := &GGUFVocab{
		Model: "gpt2", Pre: r.pre,
		Tokens: make([]string, n), TokenTypes: slices.Clone(sp.types),
		BOS: -1, EOS: -1, PAD: -1, EOT: -1, EOM: -1,
	}
	for tok, id := range h.Model.Vocab {
		v.Tokens[id] = tok
	}
	for _, a := range h.AddedTokens {
		v.Tokens[a.ID] = a.Content
	}
	v.Merges = make([]string, len(sp.merges))
	for i, m := range sp.merges {
		v.Merges[i] = v.Tokens[m.left] + " " + v.Tokens[m.right]
	}
	idOf := func(text string) int32 {
		if i := slices.Index(v.Tokens, text); i >= 0 {
			return int32(i)
		}
		return -1
	}
	c, err := readHFConfig(tokenizerJSON, tokenizerConfig, generationConfig, idOf, n)
	if err != nil {
		return nil, "", err
	}
	v.BOS, v.EOS, v.PAD, v.EOT = c.bos, c.eos, c.pad, c.eot
	v.AddBOS, v.AddEOS = c.addBOS, c.addEOS
	return v, c.template, nil
}

// hfConfig is what tokenizer_config.json, generation_config.json and the
// post-processor of tokenizer.json say about special tokens: ids are -1
// where they say nothing.
type hfConfig struct {
	bos, eos, pad, eot int32
	addBOS, addEOS     bool
	template           string
}

// readHFConfig reads the special tokens of a Hugging Face tokenizer's
// companion files (either may be nil); idOf finds a token's id by its text
// (-1 if none) among n tokens.
func readHFConfig(tokenizerJSON, tokenizerConfig, generationConfig []byte, idOf func(string) int32, n int) (hfConfig, error) {
	c := hfConfig{bos: -1, eos: -1, pad: -1, eot: -1}
	var post struct {
		PostProcessor struct {
			Type   string `json:"type"`
			Single []struct {
				SpecialToken *struct{ ID string } `json:"SpecialToken"`
			} `json:"single"`
		} `json:"post_processor"`
	}
	json.Unmarshal(tokenizerJSON, &post) // optional: any shape it does not know means no BOS
	var cfg map[string]json.RawMessage
	if tokenizerConfig != nil {
		if err := json.Unmarshal(tokenizerConfig, &cfg); err != nil {
			return c, fmt.Errorf("tokenizer_config.json: %w", err)
		}
	}
	flag := func(key string) (set, value bool, err error) {
		if isJSONNull(cfg[key]) {
			return false, false, nil
		}
		if err := json.Unmarshal(cfg[key], &value); err != nil {
			return false, false, fmt.Errorf("tokenizer_config.json: %s: %w", key, err)
		}
		return true, value, nil
	}
	bosText := ""
	for _, s := range []struct {
		raw json.RawMessage
		id  *int32
		key string
	}{{cfg["bos_token"], &c.bos, "bos_token"}, {cfg["eos_token"], &c.eos, "eos_token"}, {cfg["pad_token"], &c.pad, "pad_token"}} {
		text, err := tokenText(s.raw)
		if err != nil {
			return c, fmt.Errorf("tokenizer_config.json: %s: %w", s.key, err)
		}
		if text == "" {
			continue
		}
		if *s.id = idOf(text); *s.id < 0 {
			return c, fmt.Errorf("tokenizer_config.json: %s %q is not in the vocabulary", s.key, text)
		}
		if s.id == &c.bos {
			bosText = text
		}
	}
	setBOS, addBOS, err := flag("add_bos_token")
	if err != nil {
		return c, err
	}
	c.addBOS = addBOS
	if !setBOS && post.PostProcessor.Type == "TemplateProcessing" && len(post.PostProcessor.Single) > 0 {
		// Llama 3 adds BOS through its post-processor.
		if st := post.PostProcessor.Single[0].SpecialToken; st != nil && bosText != "" && st.ID == bosText {
			c.addBOS = true
		}
	}
	if _, c.addEOS, err = flag("add_eos_token"); err != nil {
		return c, err
	}
	if generationConfig != nil {
		var g struct {
			EOS json.RawMessage `json:"eos_token_id"`
		}
		if err := json.Unmarshal(generationConfig, &g); err != nil {
			return c, fmt.Errorf("generation_config.json: %w", err)
		}
		// The first end-of-sequence id that is not EOS ends a turn.
		var ids []int32
		if json.Unmarshal(g.EOS, &ids) != nil {
			var one int32
			if json.Unmarshal(g.EOS, &one) == nil {
				ids = []int32{one}
			}
		}
		for _, id := range ids {
			if id >= 0 && int(id) < n && id != c.eos {
				c.eot = id
				break
			}
		}
	}
	if c.template, err = chatTemplate(cfg["chat_template"]); err != nil {
		return c, fmt.Errorf("tokenizer_config.json: chat_template: %w", err)
	}
	return c, nil
}

// tokenText reads a special token of tokenizer_config.json: a string, an
// AddedToken object with "content", or null.
func tokenText(raw json.RawMessage) (string, error) {
	if isJSONNull(raw) {
		return "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var obj struct {
		Content string `json:"content"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil {
		return "", fmt.Errorf("neither a string nor an AddedToken")
	}
	return obj.Content, nil
}

// chatTemplate reads chat_template: a string, or a list of named templates
// of which "default" is the chat template.
func chatTemplate(raw json.RawMessage) (string, error) {
	if isJSONNull(raw) {
		return "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var named []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &named); err != nil {
		return "", fmt.Errorf("neither a string nor a list of named templates")
	}
	for _, t := range named {
		if t.Name == "default" {
			return t.Template, nil
		}
	}
	return "", fmt.Errorf("no template named \"default\"")
}
