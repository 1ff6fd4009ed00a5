package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"orcd/backend"
	"orcd/backend/cpu"
	"orcd/chat"
	"orcd/demo"
	"orcd/gguf"
	"orcd/model"
	"orcd/tokenizer"
)

// modelFlags are the flags of every command that loads a model.
type modelFlags struct {
	model     string
	tokenizer string
	device    string
	gpu       int
	ctxSize   int
	maxBatch  int
	invariant bool
	threads   int
	precision string
}

// addModelFlags registers the model flags on fs; precision is the default
// of --cpu-precision (fast where speed matters, exact where the numbers are
// the point).
func addModelFlags(fs *flag.FlagSet, precision string) *modelFlags {
	mf := &modelFlags{}
	fs.StringVar(&mf.model, "model", "", "GGUF model `FILE` or Hugging Face checkpoint directory (default: the built-in "+demo.Name+", a small GPT-2 trained on the King James Version)")
	fs.StringVar(&mf.tokenizer, "tokenizer", "", "tokenizer.json `FILE` to use instead of the one beside the model or in its metadata")
	choiceVar(fs, &mf.device, "device", "auto", []string{"cpu", "cuda", "auto"}, "backend (auto: cuda if available, else cpu)")
	numVar(fs, &mf.gpu, "gpu-device", 0, 0, noMax, "CUDA device number")
	numVar(fs, &mf.ctxSize, "ctx-size", 4096, 0, noMax, "tokens per sequence (KV cache size); 0 means the model's context length")
	numVar(fs, &mf.maxBatch, "max-batch", 0, 0, noMax, "most tokens per forward step, decode tokens and prompt chunks together; longer prompts are split (0: 2048 on cuda, 512 on cpu)")
	fs.BoolVar(&mf.invariant, "batch-invariant", false, "on cuda, compute every sequence's tokens the same whatever else is in the batch (a seeded request gives the same tokens alone or under load; slower, see docs/PERFORMANCE.md); the cpu backend always does")
	numVar(fs, &mf.threads, "threads", 0, 0, noMax, "goroutines per op on cpu (0: all cores)")
	choiceVar(fs, &mf.precision, "cpu-precision", precision, []string{"exact", "fast"},
		"cpu arithmetic for Q8_0 weights: exact (float32 activations, the reference) or fast (activations quantized to two int8 digits per value, integer dot products; needs AVX-512 VNNI on amd64, else exact)")
	return mf
}

// loadedModel is a model ready to run, shared by run, logits, serve and
// bench.
type loadedModel struct {
	Path      string // the model file; "" for the built-in model
	Name      string // the file's name without .gguf, or the built-in model's name
	QuantKind string // the weight formats (see quantKind)
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

// loadModel opens the model file (or the built-in model), the backend, and
// uploads the weights, showing progress (see loadProgress); with
// withTokenizer it loads the tokenizer too (logits needs none).
func loadModel(mf *modelFlags, withTokenizer bool, log *slog.Logger, bar io.Writer) (*loadedModel, error) {
	path, name := mf.model, demo.Name
	var f *gguf.File
	var err error
	if path == "" {
		log.Info("no --model given; using the built-in model", "name", name)
		f, err = demo.Open()
	} else {
		name = strings.TrimSuffix(filepath.Base(path), ".gguf")
		f, err = model.Open(path)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()

	be, err := openBackend(mf, log)
	if err != nil {
		return nil, err
	}
	if c, ok := be.(*cpu.Backend); ok {
		log.Info("backend", "device", be.Name(), "threads", c.Threads(), "fast", c.Fast())
	} else {
		log.Info("backend", "device", be.Name())
	}
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
	m, err := model.Load(f, be, model.LoadOptions{MaxBatch: mf.maxBatch, Progress: loadProgress(f.Path, log, bar)})
	if err != nil {
		be.Close()
		return nil, err
	}
	cfg := m.Config()
	log.Info("model loaded", "path", f.Path, "arch", cfg.Arch, "layers", cfg.Layers, "hidden", cfg.Hidden,
		"vocab", cfg.VocabSize, "context", cfg.ContextLength, "backend_bytes", be.Allocated(),
		"seconds", time.Since(start).Seconds())

	lm := &loadedModel{Path: path, Name: name, QuantKind: quantKind(f), Backend: be, Model: m, CtxSize: mf.ctxSize}
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

// quantKind names the weight formats of the file, most bytes first, e.g.
// "MXFP4+BF16+F32".
func quantKind(f *gguf.File) string {
	bytesOf := map[string]int64{}
	for _, ti := range f.Tensors {
		bytesOf[ti.Type.String()] += ti.Size
	}
	names := make([]string, 0, len(bytesOf))
	for n := range bytesOf {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(cmp.Compare(bytesOf[b], bytesOf[a]), strings.Compare(a, b))
	})
	return strings.Join(names, "+")
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
