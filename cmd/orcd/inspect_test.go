package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"orcd/gguf"
	"orcd/tensor"
)

// The fixtures come from tools/gguf_write_reference.py, an independent
// Python writer; their sidecars say what the script put in them.
const fixtureDir = "../../gguf/testdata"

type fixtureSidecar struct {
	Version   uint32 `json:"version"`
	Alignment int64  `json:"alignment"`
	Size      int64  `json:"size"`
	KV        []struct {
		Key string `json:"key"`
	} `json:"kv"`
	Tensors []struct {
		Name   string  `json:"name"`
		Type   string  `json:"type"`
		Dims   []int64 `json:"dims"`
		Offset int64   `json:"offset"`
		Size   int64   `json:"size"`
	} `json:"tensors"`
}

func loadSidecar(t *testing.T, gguf string) fixtureSidecar {
	t.Helper()
	b, err := os.ReadFile(strings.TrimSuffix(gguf, ".gguf") + ".json")
	if err != nil {
		t.Fatal(err)
	}
	var s fixtureSidecar
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func runCmd(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = runMain(args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestInspectJSONMatchesReference(t *testing.T) {
	paths, _ := filepath.Glob(filepath.Join(fixtureDir, "ref_*.gguf"))
	if len(paths) < 4 {
		t.Fatalf("reference fixtures missing: %v", paths)
	}
	for _, path := range paths {
		want := loadSidecar(t, path)
		code, out, errOut := runCmd("inspect", path, "--json")
		if code != 0 || errOut != "" {
			t.Fatalf("%s: exit %d, stderr %q", path, code, errOut)
		}
		var got report
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("%s: output is not JSON: %v\n%s", path, err, out)
		}
		if got.Version != want.Version || got.Alignment != want.Alignment || got.Size != want.Size || len(got.Metadata) != len(want.KV) || len(got.Tensors) != len(want.Tensors) {
			t.Errorf("%s: version %d alignment %d size %d, %d keys, %d tensors; want %d %d %d, %d, %d", path,
				got.Version, got.Alignment, got.Size, len(got.Metadata), len(got.Tensors),
				want.Version, want.Alignment, want.Size, len(want.KV), len(want.Tensors))
			continue
		}
		for i, k := range want.KV {
			if got.Metadata[i].Key != k.Key {
				t.Errorf("%s: key %d is %q, want %q", path, i, got.Metadata[i].Key, k.Key)
			}
		}
		var params, size int64
		perType := map[string]int64{}
		for i, w := range want.Tensors {
			g := got.Tensors[i]
			if g.Name != w.Name || g.Type != w.Type || !slices.Equal(g.Shape, w.Dims) || g.Offset != w.Offset || g.Bytes != w.Size {
				t.Errorf("%s: tensor %d = %+v, want %+v", path, i, g, w)
			}
			n := int64(1)
			for _, d := range w.Dims {
				n *= d
			}
			params += n
			size += w.Size
			perType[w.Type] += w.Size
		}
		if got.Parameters != params || got.TensorSize != size {
			t.Errorf("%s: %d parameters, %d tensor bytes; want %d, %d", path, got.Parameters, got.TensorSize, params, size)
		}
		for _, tot := range got.Totals {
			if perType[tot.Type] != tot.Bytes {
				t.Errorf("%s: total for %s is %d bytes, want %d", path, tot.Type, tot.Bytes, perType[tot.Type])
			}
			delete(perType, tot.Type)
		}
		if len(perType) != 0 {
			t.Errorf("%s: no totals for %v", path, perType)
		}
	}
}

func TestInspectText(t *testing.T) {
	path := filepath.Join(fixtureDir, "ref_v3_all_types.gguf")
	code, out, errOut := runCmd("inspect", path)
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	for _, want := range []string{
		"version:      3",
		`general.architecture               string        "gpt2"`,
		// Long arrays are summarized: 1000 elements, the first 8 shown.
		"[1000]uint16  [0, 1, 2, 3, 4, 5, 6, 7, ... (992 more)]",
		`[4]array      [[1, 2, 3], ["a", "b"], [[1.5], []], []]`,
		"blk.0.ffn_up.weight  Q8_0  64 x 2              128       136",
		"F32   2        35        140 (140 B)",
		"parameters:   227\n",
		"file size:    4736 bytes (4.62 KiB)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// --items changes how much of each array is shown; flags may come first.
	_, out, _ = runCmd("inspect", "--items", "2", path)
	if !strings.Contains(out, "[0, 1, ... (998 more)]") {
		t.Errorf("--items 2 not honoured:\n%s", out)
	}
}

func TestInspectLongString(t *testing.T) {
	if got := textValue(gguf.StringValue(strings.Repeat("é", 100)), 8); got != `"`+strings.Repeat("é", 40)+`"... (200 bytes)` {
		t.Errorf("long string shown as %q", got)
	}
}

func TestInspectErrors(t *testing.T) {
	dir := t.TempDir()
	good, err := os.ReadFile(filepath.Join(fixtureDir, "ref_v2_small.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(dir, "truncated.gguf")
	os.WriteFile(truncated, good[:len(good)-20], 0o644)
	// A key with a newline in it and then a bad value type: the error must
	// still be one line.
	newline := filepath.Join(dir, "newline.gguf")
	os.WriteFile(newline, []byte("GGUF\x03\x00\x00\x00"+"\x00\x00\x00\x00\x00\x00\x00\x00"+"\x01\x00\x00\x00\x00\x00\x00\x00"+
		"\x03\x00\x00\x00\x00\x00\x00\x00a\nb"+"\x63\x00\x00\x00"+"\x00\x00\x00\x00\x00\x00\x00\x00"), 0o644)
	// The same with an invalid UTF-8 byte in the key: escaped, not raw.
	invalid := filepath.Join(dir, "invalid.gguf")
	os.WriteFile(invalid, []byte("GGUF\x03\x00\x00\x00"+"\x00\x00\x00\x00\x00\x00\x00\x00"+"\x01\x00\x00\x00\x00\x00\x00\x00"+
		"\x03\x00\x00\x00\x00\x00\x00\x00a\xffb"+"\x63\x00\x00\x00"+"\x00\x00\x00\x00\x00\x00\x00\x00"), 0o644)
	for _, c := range []struct{ path, want string }{
		{truncated, "blk.0.attn_norm.weight"},
		{newline, `"a\nb"`},
		{invalid, `a\xffb`},
		{filepath.Join(dir, "missing.gguf"), "no such file"},
		{dir, "not a regular file"},
	} {
		for _, args := range [][]string{{"inspect", c.path}, {"inspect", "--json", c.path}} {
			code, out, errOut := runCmd(args...)
			if code != 1 || out != "" {
				t.Errorf("%v: exit %d, stdout %q; want 1 and nothing", args, code, out)
			}
			if strings.Count(errOut, "\n") != 1 || !strings.HasSuffix(errOut, "\n") || !strings.Contains(errOut, c.want) || !utf8.ValidString(errOut) {
				t.Errorf("%v: stderr %q, want one line containing %q", args, errOut, c.want)
			}
		}
	}
}

func TestInspectUsage(t *testing.T) {
	code, out, _ := runCmd("inspect", "--help")
	if code != 0 || !strings.Contains(out, "Usage:\n  orcd inspect [flags] FILE") || !strings.Contains(out, "  --json\n") {
		t.Errorf("--help: exit %d, stdout %q", code, out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"inspect"}, "want one FILE, got 0 arguments"},
		{[]string{"inspect", "a", "b"}, "want one FILE, got 2 arguments"},
		{[]string{"inspect", "--bogus", "a"}, `unknown flag "--bogus"`},
		{[]string{"inspect", "a", "--items", "-1"}, `invalid value "-1" for --items: must be at least 0`},
	} {
		code, _, errOut := runCmd(c.args...)
		if code != 2 || !strings.HasPrefix(errOut, "orcd inspect: "+c.want) || !strings.Contains(errOut, "Usage:\n  orcd inspect [flags] FILE\n") {
			t.Errorf("%v: exit %d, stderr %q; want 2, %q and the synopsis", c.args, code, errOut, c.want)
		}
	}
}

// TestInspectEscapesHostileStrings writes a file whose key, string values,
// string array and tensor name hold control bytes and invalid UTF-8: the
// text report shows them escaped as Go's %q does (so nothing reaches the
// terminal raw), and the JSON report stays valid JSON.
func TestInspectEscapesHostileStrings(t *testing.T) {
	w := gguf.NewWriter()
	w.SetString("general.architecture", "gpt2")
	w.SetString("bad\xffkey", "clear\x1b[2Jscreen\xfe")
	w.SetString("ok.key", "tab\there, bell\x07, newline\n, nul\x00")
	w.SetStrings("list", []string{"a\u009b", "\xc3"}) // U+009B is a C1 control (CSI)
	if err := w.AddTensor("t\xff\x1bname", tensor.F32, []int64{2}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "hostile.gguf")
	if err := gguf.WriteFile(path, w, map[string][]byte{"t\xff\x1bname": make([]byte, 8)}); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := runCmd("inspect", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !utf8.ValidString(out) {
		t.Errorf("the text report is not valid UTF-8:\n%q", out)
	}
	if i := strings.IndexFunc(out, func(r rune) bool { return r < 0x20 && r != '\n' || r >= 0x7f && r < 0xa0 }); i >= 0 {
		t.Errorf("the text report holds a raw control character at byte %d:\n%q", i, out)
	}
	// The escapes are those of Go's %q (strconv.Quote).
	for _, want := range []string{
		`"bad\xffkey"`,
		`"clear\x1b[2Jscreen\xfe"`,
		`"tab\there, bell\a, newline\n, nul\x00"`,
		`["a\u009b", "\xc3"]`,
		`"t\xff\x1bname"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the text report lacks %s:\n%s", want, out)
		}
	}

	code, out, errOut = runCmd("inspect", "--json", path)
	if code != 0 || !json.Valid([]byte(out)) {
		t.Fatalf("--json: exit %d, valid %v: %s%s", code, json.Valid([]byte(out)), out, errOut)
	}
	var r report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	// JSON escapes control characters; invalid UTF-8 becomes U+FFFD.
	if got := r.Metadata[2].Value; got != "tab\there, bell\x07, newline\n, nul\x00" {
		t.Errorf("JSON value %q", got)
	}
	if got := r.Metadata[1].Value; got != "clear\x1b[2Jscreen\ufffd" {
		t.Errorf("JSON value %q", got)
	}
}
