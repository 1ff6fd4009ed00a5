package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"orcd/gguf"
	"orcd/model"
	"orcd/tensor"
)

func init() {
	register(command{
		name:     "inspect",
		summary:  "print a GGUF file's metadata, tensors and totals",
		synopsis: "orcd inspect [flags] FILE",
		details: `Prints a GGUF file's header, metadata (long arrays and strings shortened),
a table of tensors (name, type, shape in ggml order, bytes), totals per
tensor type, the parameter count and the file size. Strings from the file
are shown Go-quoted, so control bytes and invalid UTF-8 appear escaped
(\x1b, \xff), never raw. A malformed file gives a one-line error and exit
status 1.`,
		examples: []string{
			"orcd inspect model.gguf",
			"orcd inspect model.gguf --items 32",
			"orcd inspect --json model.gguf",
		},
		args:  "FILE",
		setup: setupInspect,
	})
}

func setupInspect(fs *flag.FlagSet) func(*env) int {
	asJSON := fs.Bool("json", false, "print the same report as JSON")
	items := numFlag(fs, "items", 8, 0, noMax, "array elements to show before summarizing")
	return func(e *env) int {
		if len(e.args) != 1 {
			return e.usageError("want one FILE, got %d arguments", len(e.args))
		}
		f, err := model.Open(e.args[0])
		if err != nil {
			return e.fail(err)
		}
		defer f.Close()
		r := newReport(f, *items)
		if *asJSON {
			enc := json.NewEncoder(e.stdout)
			enc.SetIndent("", "  ")
			err = enc.Encode(r)
		} else {
			err = r.writeText(e.stdout)
		}
		if err != nil {
			return e.fail(err)
		}
		return 0
	}
}

// report is what inspect prints, as text or as JSON.
type report struct {
	File       string        `json:"file"`
	Size       int64         `json:"size"`
	Version    uint32        `json:"version"`
	Alignment  int64         `json:"alignment"`
	DataOffset int64         `json:"data_offset"`
	Metadata   []metaEntry   `json:"metadata"`
	Tensors    []tensorEntry `json:"tensors"`
	Totals     []typeTotal   `json:"totals"`
	Parameters int64         `json:"parameters"`
	TensorSize int64         `json:"tensor_bytes"`
}

type metaEntry struct {
	Key  string `json:"key"`
	Type string `json:"type"`
	// For arrays: the element type, the length, and the first elements.
	ElemType string `json:"elem_type,omitempty"`
	Length   *int   `json:"length,omitempty"`
	// Value is the scalar value, or the first elements of an array.
	Value any `json:"value"`

	text string // the value as the text report shows it
}

type tensorEntry struct {
	Name     string  `json:"name"`
	Type     string  `json:"type"`
	Shape    []int64 `json:"shape"` // ggml order, innermost first
	Elements int64   `json:"elements"`
	Offset   int64   `json:"offset"`
	Bytes    int64   `json:"bytes"`
}

type typeTotal struct {
	Type     string `json:"type"`
	Tensors  int    `json:"tensors"`
	Elements int64  `json:"elements"`
	Bytes    int64  `json:"bytes"`
}

func newReport(f *gguf.File, items int) *report {
	r := &report{File: f.Path, Size: f.Size, Version: f.Version, Alignment: f.Alignment, DataOffset: f.DataOffset}
	for _, kv := range f.KV {
		e := metaEntry{Key: kv.Key, Type: kv.Value.Type().String(), Value: jsonValue(kv.Value, items)}
		if kv.Value.Type() == gguf.Array {
			n := kv.Value.Len()
			e.ElemType, e.Length = kv.Value.ElemType().String(), &n
		}
		e.text = textValue(kv.Value, items)
		r.Metadata = append(r.Metadata, e)
	}
	totals := map[tensor.Type]*typeTotal{}
	for i := range f.Tensors {
		ti := &f.Tensors[i]
		n := ti.Elements()
		r.Tensors = append(r.Tensors, tensorEntry{ti.Name, ti.Type.String(), ti.Dims, n, ti.Offset, ti.Size})
		t := totals[ti.Type]
		if t == nil {
			t = &typeTotal{Type: ti.Type.String()}
			totals[ti.Type] = t
		}
		t.Tensors++
		t.Elements += n
		t.Bytes += ti.Size
		r.Parameters += n
		r.TensorSize += ti.Size
	}
	for _, t := range tensor.Types() { // ggml order
		if tot, ok := totals[t]; ok {
			r.Totals = append(r.Totals, *tot)
		}
	}
	return r
}

func (r *report) writeText(out io.Writer) error {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "file:\t%s\n", printable(r.File))
	fmt.Fprintf(w, "size:\t%d bytes (%s)\n", r.Size, humanBytes(r.Size))
	fmt.Fprintf(w, "version:\t%d\n", r.Version)
	fmt.Fprintf(w, "alignment:\t%d\n", r.Alignment)
	fmt.Fprintf(w, "data offset:\t%d\n", r.DataOffset)
	fmt.Fprintf(w, "\nmetadata (%d keys):\n", len(r.Metadata))
	for _, m := range r.Metadata {
		typ := m.Type
		if m.Length != nil {
			typ = fmt.Sprintf("[%d]%s", *m.Length, m.ElemType)
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\n", printable(m.Key), typ, m.text)
	}
	fmt.Fprintf(w, "\ntensors (%d):\n", len(r.Tensors))
	if len(r.Tensors) > 0 {
		fmt.Fprintf(w, "  NAME\tTYPE\tSHAPE (ggml order)\tELEMENTS\tBYTES\n")
	}
	for _, t := range r.Tensors {
		shape := make([]string, len(t.Shape))
		for i, d := range t.Shape {
			shape[i] = strconv.FormatInt(d, 10)
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\t%d\t%d\n", printable(t.Name), t.Type, strings.Join(shape, " x "), t.Elements, t.Bytes)
	}
	fmt.Fprintf(w, "\ntotals by type:\n")
	if len(r.Totals) > 0 {
		fmt.Fprintf(w, "  TYPE\tTENSORS\tELEMENTS\tBYTES\n")
	}
	for _, t := range r.Totals {
		fmt.Fprintf(w, "  %s\t%d\t%d\t%d (%s)\n", t.Type, t.Tensors, t.Elements, t.Bytes, humanBytes(t.Bytes))
	}
	fmt.Fprintf(w, "\nparameters:\t%d%s\n", r.Parameters, humanCount(r.Parameters))
	fmt.Fprintf(w, "tensor data:\t%d bytes (%s)\n", r.TensorSize, humanBytes(r.TensorSize))
	fmt.Fprintf(w, "file size:\t%d bytes (%s)\n", r.Size, humanBytes(r.Size))
	return w.Flush()
}

// maxStringShown is how many bytes of a string value the text report shows
// (chat templates run to kilobytes).
const maxStringShown = 80

// textValue formats a value for the text report: arrays show their first
// items elements, long strings their first maxStringShown bytes.
func textValue(v gguf.Value, items int) string {
	switch v.Type() {
	case gguf.String:
		s, _ := v.AsString()
		if len(s) <= maxStringShown {
			return strconv.Quote(s)
		}
		cut := maxStringShown
		for cut > 0 && !utf8.RuneStart(s[cut]) { // do not split a UTF-8 sequence
			cut--
		}
		return fmt.Sprintf("%s... (%d bytes)", strconv.Quote(s[:cut]), len(s))
	case gguf.Array:
		var b strings.Builder
		b.WriteByte('[')
		n := min(v.Len(), items)
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(textValue(v.Index(i), items))
		}
		if n < v.Len() {
			if n > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "... (%d more)", v.Len()-n)
		}
		b.WriteByte(']')
		return b.String()
	}
	return v.String()
}

// jsonValue converts a value for the JSON report: scalars as JSON scalars
// (non-finite floats as the strings "NaN", "+Inf", "-Inf"), arrays as the
// list of their first items elements.
func jsonValue(v gguf.Value, items int) any {
	switch v.Type() {
	case gguf.String:
		s, _ := v.AsString()
		return s
	case gguf.Bool:
		b, _ := v.AsBool()
		return b
	case gguf.Float32, gguf.Float64:
		x, _ := v.AsFloat64()
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return v.String()
		}
		return json.Number(v.String())
	case gguf.Array:
		n := min(v.Len(), items)
		out := make([]any, n)
		for i := range out {
			out[i] = jsonValue(v.Index(i), items)
		}
		return out
	}
	return json.Number(v.String()) // integers, exactly
}

// printable returns s, or s quoted if it holds bytes that would act on a
// terminal or break the report's lines or columns (control characters,
// invalid UTF-8).
func printable(s string) string {
	if terminalSafe(s) != s {
		return strconv.Quote(s)
	}
	return s
}

func humanBytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	x, i := float64(n), 0
	for x >= 1024 && i < len(units)-1 {
		x /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.2f %s", x, units[i])
}

// humanCount returns " (1.23M)" for counts of a thousand and more, else "".
func humanCount(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf(" (%.2fB)", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf(" (%.2fM)", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf(" (%.2fK)", float64(n)/1e3)
	}
	return ""
}
