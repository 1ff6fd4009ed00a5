package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"math"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
)

// Every command answers --help (and -h, and `orcd help NAME`) on stdout
// with exit status 0: its summary, synopsis, each flag spelled --name (-x
// for one letter) and examples.
func TestEveryCommandHelp(t *testing.T) {
	if len(commands) < 9 {
		t.Fatalf("only %d commands registered", len(commands))
	}
	for _, name := range commandNames() {
		c := commands[name]
		code, out, errOut := runCmd(name, "--help")
		if code != 0 || errOut != "" {
			t.Errorf("%s --help: exit %d, stderr %q", name, code, errOut)
			continue
		}
		if !strings.HasPrefix(out, "orcd "+name+": "+c.summary+"\n\nUsage:\n  orcd "+name) {
			t.Errorf("%s --help does not start with the summary and synopsis:\n%s", name, out)
		}
		if c.summary == "" || strings.Contains(c.summary, "\n") || len(c.examples) == 0 {
			t.Errorf("%s: want a one-line summary and examples", name)
		}
		if !strings.Contains(out, "\nExamples:\n  orcd "+name) || strings.Contains(out, "Usage of") {
			t.Errorf("%s --help lacks examples or prints the flag package's usage:\n%s", name, out)
		}
		newFlagSet(c).VisitAll(func(f *flag.Flag) {
			if !strings.Contains(out, "\n  "+dashed(f.Name)+" ") && !strings.Contains(out, "\n  "+dashed(f.Name)+"\n") {
				t.Errorf("%s --help does not show %s:\n%s", name, dashed(f.Name), out)
			}
			if len(f.Name) > 1 && strings.Contains(out, "\n  -"+f.Name) {
				t.Errorf("%s --help shows -%s with one dash", name, f.Name)
			}
		})
		for _, args := range [][]string{{name, "-h"}, {"help", name}, {name, "--device", "cpu", "x", "--help"}} {
			if code, again, _ := runCmd(args...); code != 0 || again != out {
				t.Errorf("%v: exit %d, output differs from --help", args, code)
			}
		}
	}
	if code, _, errOut := runCmd("help", "nope"); code != 2 || !strings.Contains(errOut, `unknown command "nope"`) {
		t.Errorf("help nope: exit %d, stderr %q", code, errOut)
	}
	code, out, _ := runCmd("--help")
	for _, name := range commandNames() {
		if !strings.Contains(out, "\n  "+name+" ") {
			t.Errorf("orcd --help does not list %s", name)
		}
	}
	if code != 0 {
		t.Errorf("orcd --help: exit %d", code)
	}
}

// Each example in the help parses: the command exists, its flags are
// defined and in range, and it gives positional arguments only to a
// command that takes them.
func TestHelpExamplesParse(t *testing.T) {
	for _, name := range commandNames() {
		c := commands[name]
		for _, ex := range c.examples {
			words := shellWords(t, ex)
			if len(words) < 2 || words[0] != "orcd" || (words[1] != name && !strings.HasPrefix(words[1], "-")) {
				t.Errorf("%s: example %q does not run orcd %s", name, ex, name)
				continue
			}
			if strings.HasPrefix(words[1], "-") {
				continue // orcd --version
			}
			pos, err := parseArgs(newFlagSet(c), words[2:])
			if err != nil || c.args == "" && len(pos) > 0 {
				t.Errorf("%s: example %q: %v, arguments %q", name, ex, err, pos)
			}
		}
	}
}

// shellWords splits a command line as sh would for the quoting the
// examples use ('...', "...", a trailing # comment).
func shellWords(t *testing.T, line string) []string {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote byte
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case quote != 0 && ch == quote:
			quote = 0
		case quote != 0:
			cur.WriteByte(ch)
		case ch == '\'' || ch == '"':
			quote, inWord = ch, true
		case ch == '#' && !inWord:
			i = len(line)
		case ch == ' ':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	if quote != 0 {
		t.Fatalf("unbalanced quote in %q", line)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

func TestParseArgs(t *testing.T) {
	newFS := func() (*flag.FlagSet, *int, *string, *bool) {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		n := numFlag(fs, "n-max", 1, 1, 10, "")
		s := fs.String("s", "", "")
		b := fs.Bool("json", false, "")
		return fs, n, s, b
	}
	cases := []struct {
		args []string
		n    int
		s    string
		b    bool
		pos  []string
		err  string
	}{
		{args: []string{"a", "--n-max", "3", "b", "-s", "x", "--json"}, n: 3, s: "x", b: true, pos: []string{"a", "b"}},
		{args: []string{"-n-max=4", "--s=y=z", "--json=false", "c"}, n: 4, s: "y=z", pos: []string{"c"}},
		{args: []string{"--s", "--json", "--", "--n-max", "-"}, n: 1, s: "--json", pos: []string{"--n-max", "-"}},
		{args: []string{"a", "--n-max"}, err: "flag --n-max needs a value"},
		{args: []string{"--n-max", "0"}, err: `invalid value "0" for --n-max: must be between 1 and 10`},
		{args: []string{"--n-max", "1.5"}, err: `invalid value "1.5" for --n-max: not an integer`},
		{args: []string{"--json=maybe"}, err: `invalid value "maybe" for --json`},
		{args: []string{"x", "--nope"}, err: `unknown flag "--nope"`},
		{args: []string{"-5"}, err: `unknown flag "-5" (an argument that begins with a dash goes after --)`},
		{args: []string{"a", "--help", "--nope"}, err: "flag: help requested"},
	}
	for _, c := range cases {
		fs, n, s, b := newFS()
		pos, err := parseArgs(fs, c.args)
		if c.err != "" {
			if err == nil || !strings.HasPrefix(err.Error(), c.err) {
				t.Errorf("%q: error %v, want %q", c.args, err, c.err)
			}
			continue
		}
		if err != nil || *n != c.n || *s != c.s || *b != c.b || !slices.Equal(pos, c.pos) {
			t.Errorf("%q: n %d s %q b %v args %q err %v; want %d %q %v %q", c.args, *n, *s, *b, pos, err, c.n, c.s, c.b, c.pos)
		}
	}
}

func TestRangedFlags(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	i := numFlag(fs, "i", 5, 0, noMax, "")
	x := numFlag[float64](fs, "x", 1, 0, 2, "")
	secs := numFlag[float64](fs, "secs", 30, 0, maxSeconds, "")
	c := choiceFlag(fs, "c", "a", []string{"a", "b", "c"}, "")
	if *i != 5 || *x != 1 || *c != "a" || fs.Lookup("x").DefValue != "1" {
		t.Fatalf("defaults %d %v %q", *i, *x, *c)
	}
	for _, tc := range []struct{ flag, value, err string }{
		{"i", "0", ""},
		{"i", "-1", "must be at least 0"},
		{"i", "99999999999999999999", "must be at least 0"},
		{"i", "0x10", "not an integer"},
		{"i", "", "not an integer"},
		{"x", "2", ""},
		{"x", "2.0001", "must be between 0 and 2"},
		{"x", "NaN", "not a number"},
		{"x", "-Inf", "must be between 0 and 2"},
		{"x", "1e400", "must be between 0 and 2"},
		{"x", "abc", "not a number"},
		{"secs", "1e300", "must be between 0 and 1e+09"},
		{"c", "b", ""},
		{"c", "d", "want a, b or c"},
		{"c", "", "want a, b or c"},
	} {
		err := fs.Set(tc.flag, tc.value)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || err.Error() != tc.err) {
			t.Errorf("-%s %q: error %v, want %q", tc.flag, tc.value, err, tc.err)
		}
	}
	if *i != 0 || *x != 2 || *c != "b" || *secs != 30 {
		t.Errorf("after the sets: %d %v %q %v", *i, *x, *c, *secs)
	}
}

// Each command rejects out-of-range flags before doing any work, with a
// message naming the flag, and exit status 2.
func TestCommandsValidateRanges(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--prompt", "a", "--max-tokens", "0"}, `invalid value "0" for --max-tokens: must be at least 1`},
		{[]string{"run", "--prompt", "a", "--top-p", "1.5"}, `invalid value "1.5" for --top-p: must be between 0 and 1`},
		{[]string{"run", "--prompt", "a", "--top-k", "-1"}, `invalid value "-1" for --top-k: must be at least 0`},
		{[]string{"run", "--prompt", "a", "--temperature", "NaN"}, `invalid value "NaN" for --temperature: not a number`},
		{[]string{"run", "--prompt", "a", "--ctx-size", "-1"}, `invalid value "-1" for --ctx-size: must be at least 0`},
		{[]string{"run", "--prompt", "a", "--max-batch", "-1"}, `invalid value "-1" for --max-batch: must be at least 0`},
		{[]string{"run", "--prompt", "a", "--gpu-device", "-1"}, `invalid value "-1" for --gpu-device: must be at least 0`},
		{[]string{"run", "--prompt", "a", "--threads", "-1"}, `invalid value "-1" for --threads: must be at least 0`},
		{[]string{"bench", "--cpu-precision", "half"}, `invalid value "half" for --cpu-precision: want exact or fast`},
		{[]string{"run", "--prompt", "a", "--log-level", "verbose"}, `invalid value "verbose" for --log-level: want debug, info, warn or error`},
		{[]string{"run", "--prompt", "a", "--seed", "-1"}, `invalid value "-1" for --seed`},
		{[]string{"logits"}, "need --ids 1,2,3"},
		{[]string{"logits", "--ids", "1,-2"}, `--ids: item 2 ("-2") is not a token id`},
		{[]string{"bench", "--reps", "0"}, `invalid value "0" for --reps: must be at least 1`},
		{[]string{"bench", "-n", "-1"}, `invalid value "-1" for -n: must be at least 0`},
		{[]string{"bench", "-p", "512,0"}, `-p "512,0": "0" is not a positive number`},
		{[]string{"bench", "-p", "", "-n", "0"}, "nothing to measure"},
		{[]string{"serve", "--port", "70000"}, `invalid value "70000" for --port: must be between 0 and 65535`},
		{[]string{"serve", "--max-tokens-out", "4096"}, `invalid value "4096" for --max-tokens-out: must be between 1 and 2048`},
		{[]string{"serve", "--inference-timeout-sec", "-1"}, `invalid value "-1" for --inference-timeout-sec: must be between 0 and 1e+09`},
		{[]string{"serve", "--shutdown-timeout-sec", "Inf"}, `invalid value "Inf" for --shutdown-timeout-sec: must be between 0 and 1e+09`},
		{[]string{"serve", "--max-active", "-1"}, `invalid value "-1" for --max-active: must be at least 0`},
		{[]string{"serve", "--kv-block-size", "0"}, `invalid value "0" for --kv-block-size: must be between 1 and 1024`},
		{[]string{"serve", "--kv-blocks", "-1"}, `invalid value "-1" for --kv-blocks: must be at least 0`},
		{[]string{"serve", "--max-queue", "-1"}, `invalid value "-1" for --max-queue: must be at least 0`},
		{[]string{"serve", "--max-body-bytes", "0"}, `invalid value "0" for --max-body-bytes: must be at least 1`},
		{[]string{"serve", "--responses-store", "-1"}, `invalid value "-1" for --responses-store: must be between 0 and 1048576`},
		{[]string{"serve", "--log-format", "xml"}, `invalid value "xml" for --log-format: want json or text`},
		{[]string{"serve", "--callback-url", "ftp://x/ready"}, `--callback-url "ftp://x/ready" is not an http:// or https:// URL`},
		{[]string{"serve", "--advertise-url", "localhost:8080"}, `--advertise-url "localhost:8080" is not an http:// or https:// URL`},
		{[]string{"serve", "extra"}, `unexpected argument "extra": serve takes only flags`},
		{[]string{"synth", "--preset", "tiny-gpt2"}, "need --preset and -o"},
		{[]string{"inspect", "--items", "x", "f.gguf"}, `invalid value "x" for --items: not an integer`},
		{[]string{"completion", "fish"}, `unknown shell "fish": want bash or zsh`},
		{[]string{"completion"}, "want one shell: bash or zsh"},
		{[]string{"version", "--short"}, `unknown flag "--short"`},
	} {
		code, out, errOut := runCmd(c.args...)
		if code != 2 || out != "" || !strings.HasPrefix(errOut, "orcd "+c.args[0]+": "+c.want) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 and %q", c.args, code, out, errOut, c.want)
		}
	}
	if code, _, errOut := runCmd("nope"); code != 2 || !strings.HasPrefix(errOut, `orcd: unknown command "nope"`) {
		t.Errorf("unknown command: exit %d, stderr %q", code, errOut)
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		code, out, _ := runCmd(args...)
		if code != 0 || out != versionString()+"\n" || !strings.HasPrefix(out, "orcd ") || !strings.Contains(out, runtime.Version()) {
			t.Errorf("%v: exit %d, %q", args, code, out)
		}
	}
	info := &debug.BuildInfo{
		Main: debug.Module{Path: "orcd", Version: "v0.0.0-20260102030405-0123456789ab+dirty"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.time", Value: "2026-01-02T03:04:05Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	tail := " " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
	for _, c := range []struct {
		override string
		info     *debug.BuildInfo
		want     string
	}{
		{"", info, "orcd v0.0.0-20260102030405-0123456789ab+dirty (commit 0123456789ab, 2026-01-02T03:04:05Z, modified)" + tail},
		{"v1.2.3", info, "orcd v1.2.3 (commit 0123456789ab, 2026-01-02T03:04:05Z, modified)" + tail},
		{"", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "orcd (devel)" + tail},
		{"", nil, "orcd (devel)" + tail},
	} {
		if got := formatVersion(c.override, c.info); got != c.want {
			t.Errorf("formatVersion(%q, ...) = %q, want %q", c.override, got, c.want)
		}
	}
}

// Logged floats carry three significant digits, in both formats, and
// --log-level filters.
func TestLogger(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		lf := addLogFlags(fs, format)
		if _, err := parseArgs(fs, []string{"--log-level", "info"}); err != nil {
			t.Fatal(err)
		}
		log := lf.logger(&buf)
		log.Debug("hidden")
		log.With("g", 1.23456).WithGroup("grp").Info("rates", "tps", 92.82166442796282, "big", 1234567.0, "small", 0.000123456,
			"f32", float32(2.5), "n", 123456789, "neg", -0.99951)
		out := buf.String()
		if strings.Contains(out, "hidden") {
			t.Errorf("%s: a debug line at --log-level info: %s", format, out)
		}
		if format == "text" {
			want := "msg=rates g=1.23 grp.tps=92.8 grp.big=1.23e+06 grp.small=0.000123 grp.f32=2.5 grp.n=123456789 grp.neg=-1\n"
			if !strings.HasSuffix(out, want) {
				t.Errorf("text: %q, want it to end %q", out, want)
			}
			continue
		}
		var line struct {
			G   float64 `json:"g"`
			Grp struct {
				TPS, Big, Small, F32, Neg float64
				N                         int
			} `json:"grp"`
		}
		if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
			t.Fatalf("json: %v in %s", err, out)
		}
		g := line.Grp
		if line.G != 1.23 || g.TPS != 92.8 || g.Big != 1230000 || g.Small != 0.000123 || g.F32 != 2.5 || g.N != 123456789 || g.Neg != -1 {
			t.Errorf("json: %s", out)
		}
	}

	if !math.IsNaN(round3(math.NaN())) || !math.IsInf(round3(math.Inf(-1)), -1) || round3(0) != 0 {
		t.Error("round3 changes NaN, -Inf or 0")
	}

	var buf bytes.Buffer
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	lf := addLogFlags(fs, "text")
	parseArgs(fs, []string{"--log-level", "warn"})
	log := lf.logger(&buf)
	log.Info("quiet")
	log.Warn("loud")
	if out := buf.String(); strings.Contains(out, "quiet") || !strings.Contains(out, "loud") {
		t.Errorf("--log-level warn: %q", out)
	}
}

func TestTerminalSafe(t *testing.T) {
	for in, want := range map[string]string{
		"plain text, ünïcode 日本":   "plain text, ünïcode 日本",
		"a\nb\tc\x1b[31m\x00":      `a\nb\tc\x1b[31m\x00`,
		"bad \xff\xfe byte":        `bad \xff\xfe byte`,
		"c1 \u009b and \u2028 sep": `c1 \u009b and \u2028 sep`,
	} {
		if got := terminalSafe(in); got != want {
			t.Errorf("terminalSafe(%q) = %q, want %q", in, got, want)
		}
	}
}
