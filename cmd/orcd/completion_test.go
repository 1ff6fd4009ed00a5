package main

import (
	"flag"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// completionCases are command lines (a trailing space starts a new word)
// and the words completion must offer for them in a directory holding
// a.gguf and b.txt.
func completionCases() map[string][]string {
	flagsOf := func(name string) []string {
		var names []string
		newFlagSet(commands[name]).VisitAll(func(f *flag.Flag) { names = append(names, dashed(f.Name)) })
		return append(names, "--help")
	}
	files := []string{"a.gguf", "b.txt"}
	return map[string][]string{
		"orcd ":                   append(commandNames(), "help"),
		"orcd ru":                 {"run"},
		"orcd run --dev":          {"--device"},
		"orcd run --device ":      {"auto", "cpu", "cuda"},
		"orcd run --device c":     {"cpu", "cuda"},
		"orcd run --model ":       files,
		"orcd run --max-tokens ":  nil,
		"orcd run ":               flagsOf("run"),
		"orcd bench -":            flagsOf("bench"),
		"orcd tokenize --vo":      {"--vocab"},
		"orcd tokenize --vocab ":  {"gpt2", "o200k_harmony"},
		"orcd serve --log-level ": {"debug", "error", "info", "warn"},
		"orcd synth --preset ":    presetNames(),
		"orcd synth -o ":          files,
		"orcd inspect ":           files,
		"orcd inspect --json a":   {"a.gguf"},
		"orcd completion ":        {"bash", "zsh"},
		"orcd help ":              commandNames(),
		"orcd help se":            {"serve"},
	}
}

// runCompletion runs a driver that prints "=== LINE" and then one match
// per line for each command line, and returns the matches by line.
func runCompletion(t *testing.T, cmd *exec.Cmd) map[string][]string {
	t.Helper()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
	}
	got := map[string][]string{}
	var line string
	for _, l := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(l, "=== "); ok {
			line = rest
			got[line] = nil
		} else if l != "" {
			got[line] = append(got[line], l)
		}
	}
	return got
}

// checkCompletion compares what a shell offered with completionCases.
func checkCompletion(t *testing.T, shell string, got map[string][]string) {
	t.Helper()
	for line, want := range completionCases() {
		g := slices.Sorted(slices.Values(got[line]))
		w := slices.Sorted(slices.Values(want))
		if shell == "bash" && line == "orcd " {
			w = slices.Sorted(slices.Values(append(w, "--help", "--version")))
		}
		if !slices.Equal(g, w) {
			t.Errorf("%s: %q offers %q, want %q", shell, line, g, w)
		}
	}
}

// completionDir writes the script of shell and the files the cases
// expect into a new directory.
func completionDir(t *testing.T, shell string) (dir, script string) {
	dir = t.TempDir()
	for _, f := range []string{"a.gguf", "b.txt"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	code, out, errOut := runCmd("completion", shell)
	if code != 0 {
		t.Fatalf("completion %s: exit %d: %s", shell, code, errOut)
	}
	script = filepath.Join(t.TempDir(), "orcd."+shell)
	if err := os.WriteFile(script, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, script
}

// TestBashCompletion sources the bash script and calls its completion
// function as bash's programmable completion would.
func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash on this machine")
	}
	dir, script := completionDir(t, "bash")
	driver := `source "$1"; shift
for line; do
	read -ra COMP_WORDS <<< "$line"
	[[ $line == *" " ]] && COMP_WORDS+=("")
	COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
	COMPREPLY=()
	_orcd
	echo "=== $line"
	((${#COMPREPLY[@]})) && printf '%s\n' "${COMPREPLY[@]}"
done`
	lines := slices.Sorted(maps.Keys(completionCases()))
	cmd := exec.Command(bash, append([]string{"--norc", "--noprofile", "-c", driver, "bash", script}, lines...)...)
	cmd.Dir = dir
	checkCompletion(t, "bash", runCompletion(t, cmd))
}

// TestZshCompletion loads the zsh script into an interactive zsh with
// compinit, in a pseudo-terminal, and presses TAB after each line
// (testdata/zsh_complete.zsh). It needs zsh, which CI's machine may lack.
func TestZshCompletion(t *testing.T) {
	zsh, err := exec.LookPath("zsh")
	if err != nil {
		t.Skip("no zsh on this machine: the zsh completion script is not exercised")
	}
	dir, script := completionDir(t, "zsh")
	if out, err := exec.Command(zsh, "-n", script).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n: %v\n%s", err, out)
	}
	driver, err := filepath.Abs(filepath.Join("testdata", "zsh_complete.zsh"))
	if err != nil {
		t.Fatal(err)
	}
	lines := slices.Sorted(maps.Keys(completionCases()))
	cmd := exec.Command(zsh, append([]string{"-f", driver, script, dir}, lines...)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir()) // no user's .zcompdump
	checkCompletion(t, "zsh", runCompletion(t, cmd))
}
