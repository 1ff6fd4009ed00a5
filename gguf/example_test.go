package gguf_test

import (
	"bytes"
	"fmt"

	"orcd/gguf"
	"orcd/tensor"
)

// A file is declared first (metadata, then tensor names, types and shapes),
// then streamed: Begin writes everything before the data, and each tensor's
// bytes follow in order, in as many chunks as convenient.
func ExampleWriter() {
	w := gguf.NewWriter()
	w.SetString("general.architecture", "gpt2")
	w.SetUint32("gpt2.block_count", 1)
	w.SetStrings("tokenizer.ggml.tokens", []string{"a", "b"})
	if err := w.AddTensor("output_norm.weight", tensor.F32, []int64{4}); err != nil {
		panic(err)
	}
	var out bytes.Buffer
	tw, err := w.Begin(&out)
	if err != nil {
		panic(err)
	}
	data := make([]byte, 16) // 4 float32 zeros
	if err := tw.WriteTensor("output_norm.weight", data[:8]); err != nil {
		panic(err)
	}
	if err := tw.WriteTensor("output_norm.weight", data[8:]); err != nil {
		panic(err)
	}
	if err := tw.Close(); err != nil {
		panic(err)
	}

	f, err := gguf.Parse("example.gguf", out.Bytes())
	if err != nil {
		panic(err)
	}
	n, _ := f.GetUint32("gpt2.block_count")
	ti, _ := f.Tensor("output_norm.weight")
	fmt.Println(n, ti.Type, ti.Dims, ti.Size, len(f.TensorData(ti)))
	_, err = f.GetUint32("gpt2.context_length")
	fmt.Println(err)
	// Output:
	// 1 F32 [4] 16 16
	// gguf: example.gguf: key "gpt2.context_length": key not found
}
