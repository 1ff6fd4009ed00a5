package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"orcd/model"
)

func init() {
	register(command{
		name:     "convert",
		summary:  "write a Hugging Face checkpoint directory as a GGUF file",
		synopsis: "orcd convert [flags] DIR -o FILE",
		details: `Reads a Hugging Face checkpoint directory (config.json, *.safetensors,
sharded with model.safetensors.index.json or not, and the tokenizer files)
as --model does, and writes it as one GGUF file with llama.cpp's metadata
keys, tensor names and types: float matrices become --outtype (llama.cpp's
names and its "auto" rule), norms, biases and the MoE router F32, gpt-oss's
experts stay MXFP4, Llama's Q and K rows are permuted for llama.cpp's RoPE,
and the tokenizer and chat template go into tokenizer.* metadata. The file appears under its name only
when complete.`,
		examples: []string{
			"orcd convert ./Qwen2.5-0.5B-Instruct -o qwen2.5-0.5b.gguf",
			"orcd convert ./gpt-oss-20b -o gpt-oss-20b-mxfp4.gguf",
			"orcd convert --outtype q8_0 ./Llama-3.2-1B-Instruct -o llama-3.2-1b-q8_0.gguf",
		},
		args:  "DIR",
		setup: setupConvert,
	})
}

func setupConvert(fs *flag.FlagSet) func(*env) int {
	out := fs.String("o", "", "output GGUF `FILE`")
	outType := choiceFlag(fs, "outtype", "auto", model.OutTypes, "type of the float weight matrices (auto: llama.cpp's choice, F16 for an F16 checkpoint, else BF16; keep: as stored)")
	return func(e *env) int {
		if len(e.args) != 1 || *out == "" {
			return e.usageError("want one DIR and -o FILE")
		}
		if !model.IsHFDir(e.args[0]) {
			return e.fail(fmt.Errorf("%s: not a checkpoint directory (no config.json)", e.args[0]))
		}
		start := time.Now()
		f, err := model.OpenHF(e.args[0])
		if err != nil {
			return e.fail(err)
		}
		defer f.Close()
		opts := model.ConvertOptions{OutType: *outType, Progress: progressLine(e.stderr, "convert "+filepath.Base(e.args[0]))}
		if err := model.WriteGGUF(*out, f, opts); err != nil {
			return e.fail(err)
		}
		st, err := os.Stat(*out)
		if err != nil {
			return e.fail(err)
		}
		fmt.Fprintf(e.stdout, "wrote %s: %d tensors, %s in %.1f s\n", *out, len(f.Tensors), humanBytes(st.Size()), time.Since(start).Seconds())
		return 0
	}
}
