package engine

// EncodePrompt tokenizes a text prompt as Submit does for Request.Prompt:
// PromptPrefix, then the text's tokens; nil when the text has none. A caller
// that tokenizes ahead of Submit (to bound how many prompts are tokenized
// at once) passes the result as Request.Tokens.
func (e *Engine) EncodePrompt(text string) []int32 {
	ids := e.cfg.Tokenizer.Encode(text)
	if len(ids) == 0 {
		return nil
	}
	return append(append(make([]int32, 0, len(e.cfg.PromptPrefix)+len(ids)), e.cfg.PromptPrefix...), ids...)
}

// PrefixTokens is the number of tokens EncodePrompt puts before a text
// prompt's own (Config.PromptPrefix).
func (e *Engine) PrefixTokens() int { return len(e.cfg.PromptPrefix) }
