package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"orcd/backend"
	"orcd/chat"
	"orcd/gguf"
	"orcd/model"
	"orcd/tokenizer"
)

// The model used when --model is not given: a tiny random gpt-oss,
// synthesized once into the user cache directory.
const (
	defaultPreset = "tiny-gpt-oss"
	defaultSeed   = 1
)

// modelFlags are the flags of every command that loads a model.
type modelFlags struct {
	model     string
	tokenizer string
	device    string
	gpu       int
	ctxSize   int
	maxBatch  int
}

// addModelFlags registers the model flags on fs.
func addModelFlags(fs *flag.FlagSet) *modelFlags {
	mf := &modelFlags{}
	fs.StringVar(&mf.model, "model", "", "GGUF model `FILE` or Hugging Face checkpoint directory (default: a tiny random gpt-oss, synthesized into the user cache dir)")
	fs.StringVar(&mf.tokenizer, "tokenizer", "", "tokenizer.json `FILE` to use instead of the one beside the model or in its metadata")
	choiceVar(fs, &mf.device, "device", "auto", []string{"cpu", "cuda", "auto"}, "backend (auto: cuda if available, else cpu)")
	numVar(fs, &mf.gpu, "gpu-device", 0, 0, noMax, "CUDA device number")
	numVar(fs, &mf.ctxSize, "ctx-size", 4096, 0, noMax, "tokens per sequence (KV cache size); 0 means the model's context length")
	numVar(fs, &mf.maxBatch, "max-batch", 0, 0, noMax, "most tokens per forward step, decode tokens and prompt chunks together; longer prompts are split (0: 2048 on cuda, 512 on cpu)")
	return mf
}

// loadedModel is a model ready to run, shared by run, logits, serve and
// bench.
type loadedModel struct {
	Path      string
	Backend   backend.Backend
	Model     model.Model
	Tokenizer *tokenizer.Tokenizer // nil unless asked for
	CtxSize   int                  // tokens per sequence: --ctx-size within the model's context
	// Chat is how chat prompts are written: the architecture's format, or
	// plain text when it is a template the model does not carry.
	Chat model.ChatFormat
	// Template is the model's chat template when Chat is model.ChatTemplate.
	Template *chat.Template
}

// Close frees the model and the backend.
func (lm *loadedModel) Close() error {
	return errors.Join(lm.Model.Close(), lm.Backend.Close())
}

// loadModel opens the model file (or the default model), the backend, and
// uploads the weights, showing progress (see loadProgress); with
// withTokenizer it loads the tokenizer too (logits needs none).
func loadModel(mf *modelFlags, withTokenizer bool, log *slog.Logger, bar io.Writer) (*loadedModel, error) {
	path := mf.model
	if path == "" {
		var err error
		if path, err = defaultModel(log); err != nil {
			return nil, err
		}
	}
	f, err := model.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	be, err := openBackend(mf.device, mf.gpu)
	if err != nil {
		return nil, err
	}
	log.Info("backend", "device", be.Name())
	if mf.maxBatch == 0 {
		// A GPU step of 2048 tokens keeps the tensor cores busy; on the CPU a
		// smaller step gives other sequences their turn sooner.
		mf.maxBatch = model.DefaultMaxBatch
		if be.Name() == "cuda" {
			mf.maxBatch = 2048
		}
	}
	// VRAM pre-check (cuda backend owner; see vram.go): refuse before
	// uploading anything when the GPU cannot hold the model.
	if err := checkVRAM(f, be, mf); err != nil {
		be.Close()
		return nil, err
	}

	start := time.Now()
	m, err := model.Load(f, be, model.LoadOptions{MaxBatch: mf.maxBatch, Progress: loadProgress(path, log, bar)})
	if err != nil {
		be.Close()
		return nil, err
	}
	cfg := m.Config()
	log.Info("model loaded", "path", path, "arch", cfg.Arch, "layers", cfg.Layers, "hidden", cfg.Hidden,
		"vocab", cfg.VocabSize, "context", cfg.ContextLength, "backend_bytes", be.Allocated(),
		"seconds", time.Since(start).Seconds())

	lm := &loadedModel{Path: path, Backend: be, Model: m, CtxSize: mf.ctxSize}
	if lm.CtxSize == 0 || lm.CtxSize > cfg.ContextLength {
		if lm.CtxSize > cfg.ContextLength {
			log.Info("--ctx-size exceeds the model's context; using the model's", "ctx_size", mf.ctxSize, "context", cfg.ContextLength)
		}
		lm.CtxSize = cfg.ContextLength
	}
	if withTokenizer {
		if lm.Tokenizer, err = tokenizer.Load(path, mf.tokenizer, f); err != nil {
			lm.Close()
			return nil, err
		}
		if lm.Chat, lm.Template, err = chatFormat(f, cfg.Chat, lm.Tokenizer, log); err != nil {
			lm.Close()
			return nil, err
		}
		if n := lm.Tokenizer.VocabSize(); n > cfg.VocabSize {
			lm.Close()
			return nil, fmt.Errorf("the tokenizer has %d tokens but the model only %d", n, cfg.VocabSize)
		}
	}
	return lm, nil
}

// defaultModel returns the path of the default model in the user cache
// directory, synthesizing it first if it is missing or unreadable.
func defaultModel(log *slog.Logger) (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no --model given and no user cache dir for the default model: %w", err)
	}
	dir = filepath.Join(dir, "orcd")
	path := filepath.Join(dir, fmt.Sprintf("%s-seed%d.gguf", defaultPreset, defaultSeed))
	if f, err := model.Open(path); err == nil {
		arch, archErr := f.GetString("general.architecture")
		f.Close()
		_, want, _ := model.LookupPreset(defaultPreset)
		if archErr == nil && arch == want.Name {
			log.Info("no --model given; using the default model", "path", path)
			return path, nil
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	log.Info("no --model given; synthesizing the default model", "preset", defaultPreset, "seed", defaultSeed, "path", path)
	start := time.Now()
	if err := synthesize(context.Background(), path, synthOptions{preset: defaultPreset, seed: defaultSeed}); err != nil {
		return "", fmt.Errorf("synthesizing the default model: %w", err)
	}
	log.Info("default model written", "path", path, "seconds", time.Since(start).Seconds())
	return path, nil
}

// loadProgress reports weight-upload progress: a bar redrawn in place when
// bar is a terminal (a person watching the CLI), else log lines as a
// progressGate allows (a daemon's logs). Both on one terminal would break
// the bar's line.
func loadProgress(path string, log *slog.Logger, bar io.Writer) func(done, total int64) {
	return loadProgressAt(path, log, bar, time.Now)
}

// loadProgressAt is loadProgress on the clock now.
func loadProgressAt(path string, log *slog.Logger, bar io.Writer, now func() time.Time) func(done, total int64) {
	if isTerminal(bar) {
		return progressLine(bar, "loading "+filepath.Base(path))
	}
	gate := newProgressGate(now)
	return func(done, total int64) {
		if gate.due(done, total) {
			log.Info("loading weights", "percent", 100*done/max(total, 1), "bytes", done, "total", total)
		}
	}
}

// chatFormat compiles the model's chat template (GGUF
// tokenizer.chat_template, which a checkpoint directory's
// tokenizer_config.json fills in) when the architecture chats through one;
// a model without a template chats in plain text.
func chatFormat(f *gguf.File, format model.ChatFormat, tok *tokenizer.Tokenizer, log *slog.Logger) (model.ChatFormat, *chat.Template, error) {
	if format != model.ChatTemplate {
		return format, nil, nil
	}
	src, err := f.GetString(tokenizer.KeyChatTemplate)
	if err != nil {
		log.Warn("the model has no chat template; chat uses plain text", "key", tokenizer.KeyChatTemplate)
		return model.ChatPlain, nil, nil
	}
	tmpl, err := chat.Compile(src, tok.TokenText(tok.BOS()), tok.TokenText(tok.EOS()))
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", f.Path, err)
	}
	return format, tmpl, nil
}
