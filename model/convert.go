package model

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"orcd/gguf"
	"orcd/tensor"
)

// OutTypes are the storage types WriteGGUF can give a file's float
// matrices, by llama.cpp's converter's --outtype names, and "keep".
var OutTypes = []string{"auto", "keep", "f32", "f16", "bf16", "q8_0"}

// llama.cpp's general.file_type of each output type.
var fileTypes = map[tensor.Type]uint32{tensor.F32: 0, tensor.F16: 1, tensor.Q8_0: 7, tensor.BF16: 32}

// mostlyMXFP4 is llama.cpp's file type of gpt-oss with MXFP4 experts.
const mostlyMXFP4 = 38

// ConvertOptions configure WriteGGUF.
type ConvertOptions struct {
	// OutType is one of OutTypes: the type of the float matrices. "auto"
	// is llama.cpp's: F16 when the first float matrix is F16, else BF16;
	// "keep" keeps every tensor's type. "" means keep.
	OutType string
	// Progress, if set, is called after each tensor with the bytes
	// written so far and the total.
	Progress func(done, total int64)
}

// outTarget resolves opts.OutType for f: the type of its float matrices,
// and whether they change at all (tensor.F32 is the zero Type, so it cannot
// also mean "keep").
func outTarget(f *gguf.File, outType string) (target tensor.Type, convert bool, err error) {
	switch outType {
	case "", "keep":
		return 0, false, nil
	case "auto":
		for i := range f.Tensors {
			ti := &f.Tensors[i]
			if len(ti.Dims) >= 2 && isFloat(ti.Type) {
				if ti.Type == tensor.F16 {
					return tensor.F16, true, nil
				}
				return tensor.BF16, true, nil
			}
		}
		return 0, false, nil
	}
	t, err := tensor.ParseType(outType)
	if err != nil || !tensor.CanQuantize(t) || t == tensor.MXFP4 {
		return 0, false, fmt.Errorf("model: output type %q is not one of %s", outType, strings.Join(OutTypes, ", "))
	}
	return t, true, nil
}

func isFloat(t tensor.Type) bool { return t == tensor.F32 || t == tensor.F16 || t == tensor.BF16 }

// storedAs is the type tensor ti is written as when float matrices become
// target, by llama.cpp's converter's rules: vectors (norms, biases, sinks,
// rope factors), norms, biases (gpt-oss's experts' too) and the MoE router
// stay F32, quantized tensors (gpt-oss's MXFP4 experts) keep their format,
// and rows that Q8_0 blocks do not divide fall back to F16.
func storedAs(ti *gguf.TensorInfo, target tensor.Type) tensor.Type {
	switch {
	case !isFloat(ti.Type):
		return ti.Type
	case len(ti.Dims) == 1 || strings.HasSuffix(ti.Name, ".bias") || strings.HasSuffix(ti.Name, "_norm.weight") ||
		strings.HasSuffix(ti.Name, "ffn_gate_inp.weight"):
		return tensor.F32
	case target == tensor.Q8_0 && ti.Dims[0]%32 != 0:
		return tensor.F16
	}
	return target
}

// WriteGGUF writes f (a GGUF file, or a checkpoint read by OpenHF) as a
// GGUF file at path, converting its float matrices as opts says and
// streaming the tensor data. The file appears under its name only when
// complete.
func WriteGGUF(path string, f *gguf.File, opts ConvertOptions) error {
	target, convert, err := outTarget(f, opts.OutType)
	if err != nil {
		return err
	}
	w := gguf.NewWriter()
	for _, kv := range f.KV {
		w.Set(kv.Key, kv.Value)
	}
	types := make([]tensor.Type, len(f.Tensors))
	var total int64
	mxfp4 := false
	for i := range f.Tensors {
		ti := &f.Tensors[i]
		types[i] = ti.Type
		if convert {
			types[i] = storedAs(ti, target)
		}
		mxfp4 = mxfp4 || ti.Type == tensor.MXFP4
		if err := w.AddTensor(ti.Name, types[i], ti.Dims); err != nil {
			return err
		}
		size, _ := types[i].RowSize(ti.Elements())
		total += size
	}
	if ft, ok := fileTypes[target]; ok && convert {
		if mxfp4 {
			ft = mostlyMXFP4
		}
		w.SetUint32("general.file_type", ft)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if tmp != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 8<<20)
	tw, err := w.Begin(bw)
	if err != nil {
		return err
	}
	var done int64
	for i := range f.Tensors {
		ti := &f.Tensors[i]
		data := f.TensorData(ti)
		if int64(len(data)) != ti.Size {
			return fmt.Errorf("model: %s: tensor %s: %d bytes of data, want %d", f.Path, ti.Name, len(data), ti.Size)
		}
		if types[i] != ti.Type {
			vals := make([]float32, ti.Elements())
			if err := tensor.Dequantize(ti.Type, data, vals); err != nil {
				return fmt.Errorf("model: tensor %s: %w", ti.Name, err)
			}
			if data, err = tensor.Quantize(types[i], vals); err != nil {
				return fmt.Errorf("model: tensor %s: %w", ti.Name, err)
			}
		}
		if err := tw.WriteTensor(ti.Name, data); err != nil {
			return err
		}
		done += int64(len(data))
		if opts.Progress != nil {
			opts.Progress(done, total)
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	name := tmp.Name()
	if err := tmp.Close(); err != nil {
		return err
	}
	tmp = nil
	return os.Rename(name, path)
}
