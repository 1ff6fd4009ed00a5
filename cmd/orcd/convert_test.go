package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"orcd/gguf"
)

// TestConvert checks convert's errors, then converts the tiny gpt-oss
// checkpoint of the HF fixtures and checks the file.
func TestConvert(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"convert", dir}, 2, "want one DIR and -o FILE"},
		{[]string{"convert", dir, "-o", filepath.Join(dir, "x.gguf")}, 1, "not a checkpoint directory"},
		{[]string{"convert", "--outtype", "q4_k", dir, "-o", filepath.Join(dir, "x.gguf")}, 2, `invalid value "q4_k" for --outtype`},
	} {
		code, _, stderr := runCmd(c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d mentioning %q", c.args, code, stderr, c.code, c.want)
		}
	}
	src := filepath.Join(hfFixtureDir, "tiny_gptoss")
	if _, err := os.Stat(src); err != nil {
		t.Fatalf("model/testdata/hf is missing (tools/hf_arch_fixtures.py makes it): %v", err)
	}
	out := filepath.Join(dir, "gptoss.gguf")
	if code, stdout, stderr := runCmd("convert", src, "-o", out); code != 0 || !strings.Contains(stdout, "wrote "+out) {
		t.Fatalf("exit %d: %s %s", code, stdout, stderr)
	}
	f, err := gguf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	arch, _ := f.GetString("general.architecture")
	ti, ok := f.Tensor("blk.0.ffn_gate_exps.weight")
	if arch != "gpt-oss" || !ok || ti.Type.String() != "MXFP4" || !f.Has("tokenizer.ggml.tokens") {
		t.Errorf("arch %q, experts %v, tokenizer %v", arch, ti, f.Has("tokenizer.ggml.tokens"))
	}
}
