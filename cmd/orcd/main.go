// Command orcd is a GPU inference worker for GPT-family language models.
//
// Each subcommand lives in its own file and registers itself in init with
// everything the CLI shows about it: a one-line summary, the synopsis,
// examples, and a setup function that defines its flags and returns the
// function that runs it. This file parses the flags (before or after the
// positional arguments), prints --help and usage errors, and completion.go
// writes shell completion from the same registry, so a new command needs
// nothing outside its own file:
//
//	func init() {
//		register(command{
//			name:     "hello",
//			summary:  "print a greeting",
//			synopsis: "orcd hello [flags]",
//			examples: []string{"orcd hello --times 3"},
//			setup: func(fs *flag.FlagSet) func(*env) int {
//				times := numFlag(fs, "times", 1, 1, 100, "how many greetings")
//				return func(e *env) int {
//					for range *times {
//						fmt.Fprintln(e.stdout, "hello")
//					}
//					return 0
//				}
//			},
//		})
//	}
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// command is one orcd subcommand.
type command struct {
	name string
	// summary is one line: what the command does.
	summary string
	// synopsis is the usage line(s), starting with "orcd NAME".
	synopsis string
	// details, optional, is shown after the synopsis in --help.
	details string
	// examples are command lines, each starting with "orcd NAME"; a
	// trailing "# ..." comments one. TestHelpExamplesParse parses them.
	examples []string
	// args names the positional arguments as the synopsis does ("FILE",
	// "[TEXT...]"). Empty means the command takes none: any is an error.
	args string
	// argWords, when set, are the words shell completion offers for the
	// positional arguments; otherwise it offers file names.
	argWords []string
	// setup defines the command's flags on fs and returns the function
	// that runs the command once they are parsed; it returns the exit
	// status.
	setup func(fs *flag.FlagSet) func(*env) int
}

// env is what a running command gets: its positional arguments and its
// standard streams.
type env struct {
	cmd    *command
	args   []string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// usageError reports a wrong invocation (exit status 2): the message, the
// synopsis, and where to find more.
func (e *env) usageError(format string, a ...any) int {
	fmt.Fprintf(e.stderr, "orcd %s: %s\n", e.cmd.name, terminalSafe(fmt.Sprintf(format, a...)))
	printSynopsis(e.stderr, e.cmd)
	return 2
}

// fail reports a failure of the command itself (exit status 1) on one
// line, whatever bytes a file or a request put into err.
func (e *env) fail(err error) int {
	fmt.Fprintf(e.stderr, "orcd %s: %s\n", e.cmd.name, terminalSafe(err.Error()))
	return 1
}

var commands = map[string]*command{}

// register adds a command; each command file calls it from init.
func register(c command) {
	if _, dup := commands[c.name]; dup {
		panic("orcd: command registered twice: " + c.name)
	}
	commands[c.name] = &c
}

// commandNames returns the registered names, sorted.
func commandNames() []string {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "orcd: a GPU inference worker for GPT-family language models\n\nUsage: orcd <command> [flags] [arguments]\n\nCommands:\n")
	for _, n := range commandNames() {
		fmt.Fprintf(w, "  %-11s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(w, "\nRun 'orcd <command> --help' (or 'orcd help <command>') for a command's flags and examples,\n'orcd --version' for the version.\n")
}

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func runMain(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		if len(args) > 1 {
			if c, ok := commands[args[1]]; ok {
				printHelp(stdout, c, newFlagSet(c))
				return 0
			}
			fmt.Fprintf(stderr, "orcd: unknown command %q\n\n", args[1])
			usage(stderr)
			return 2
		}
		usage(stdout)
		return 0
	case "-version", "--version":
		fmt.Fprintln(stdout, versionString())
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "orcd: unknown command %s\n\n", strconv.Quote(args[0]))
		usage(stderr)
		return 2
	}
	return c.execute(args[1:], stdin, stdout, stderr)
}

// flagSet defines c's flags on a new FlagSet and returns it with the
// function that runs c once the flags are parsed.
func (c *command) flagSet() (*flag.FlagSet, func(*env) int) {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // parseArgs and printHelp do the talking
	return fs, c.setup(fs)
}

// newFlagSet returns c's flags, defined but not parsed.
func newFlagSet(c *command) *flag.FlagSet {
	fs, _ := c.flagSet()
	return fs
}

// execute parses args and runs c.
func (c *command) execute(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs, run := c.flagSet()
	e := &env{cmd: c, stdin: stdin, stdout: stdout, stderr: stderr}
	positional, err := parseArgs(fs, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		printHelp(stdout, c, fs)
		return 0
	case err != nil:
		return e.usageError("%v", err)
	case c.args == "" && len(positional) > 0:
		return e.usageError("unexpected argument %s: %s takes only flags", strconv.Quote(positional[0]), c.name)
	}
	e.args = positional
	return run(e)
}

// boolFlag is a flag that needs no value (the flag package's own
// interface is unexported).
type boolFlag interface {
	flag.Value
	IsBoolFlag() bool
}

// parseArgs sets the flags in args on fs and returns the other arguments.
// Unlike fs.Parse, flags may follow positional arguments; "--" ends the
// flags. A flag takes one or two dashes and its value as "--name value" or
// "--name=value". -h or --help anywhere before "--" returns flag.ErrHelp.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	// Help wins wherever it is, even after a mistake.
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "-help" || a == "--help" {
			return nil, flag.ErrHelp
		}
	}
	var positional []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(positional, args[i+1:]...), nil
		}
		if len(a) < 2 || a[0] != '-' {
			positional = append(positional, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a[1:], "-"), "=")
		f := fs.Lookup(name)
		if f == nil || name == "" {
			return nil, fmt.Errorf("unknown flag %s (an argument that begins with a dash goes after --)", strconv.Quote(a))
		}
		if bf, ok := f.Value.(boolFlag); ok && bf.IsBoolFlag() {
			if !hasValue {
				value = "true"
			}
		} else if !hasValue {
			if i+1 == len(args) {
				return nil, fmt.Errorf("flag %s needs a value", dashed(name))
			}
			i++
			value = args[i]
		}
		if err := fs.Set(name, value); err != nil {
			return nil, fmt.Errorf("invalid value %s for %s: %v", strconv.Quote(value), dashed(name), err)
		}
	}
	return positional, nil
}

// dashed spells a flag as help shows it: -o for one letter, --model for
// longer names (both forms are accepted).
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// printSynopsis writes c's usage lines and a pointer to --help.
func printSynopsis(w io.Writer, c *command) {
	fmt.Fprintf(w, "Usage:\n")
	for _, line := range strings.Split(c.synopsis, "\n") {
		fmt.Fprintf(w, "  %s\n", line)
	}
	fmt.Fprintf(w, "Run 'orcd %s --help' for the flags and examples.\n", c.name)
}

// printHelp writes c's --help: summary, synopsis, details, flags, examples.
func printHelp(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "orcd %s: %s\n\nUsage:\n", c.name, c.summary)
	for _, line := range strings.Split(c.synopsis, "\n") {
		fmt.Fprintf(w, "  %s\n", line)
	}
	if c.details != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.details))
	}
	fmt.Fprintf(w, "\nFlags:\n")
	fs.VisitAll(func(f *flag.Flag) {
		arg, text := flagArg(f)
		fmt.Fprintf(w, "  %s", dashed(f.Name))
		if arg != "" {
			fmt.Fprintf(w, " %s", arg)
		}
		if showDefault(f) {
			text += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "\n      %s\n", strings.ReplaceAll(text, "\n", "\n      "))
	})
	fmt.Fprintf(w, "  -h, --help\n      show this help\n")
	if len(c.examples) > 0 {
		fmt.Fprintf(w, "\nExamples:\n")
		for _, ex := range c.examples {
			fmt.Fprintf(w, "  %s\n", ex)
		}
	}
}

// flagArg returns the name of f's value as help shows it ("" for a
// boolean flag) and f's usage text. A `quoted` word in the usage names the
// value, as with flag.PrintDefaults.
func flagArg(f *flag.Flag) (arg, text string) {
	arg, text = flag.UnquoteUsage(f)
	if strings.Contains(f.Usage, "`") {
		return arg, text
	}
	if n, ok := f.Value.(interface{ argName() string }); ok {
		return n.argName(), text
	}
	switch arg {
	case "int", "uint":
		arg = "N"
	case "float":
		arg = "X"
	case "string", "value":
		arg = strings.ToUpper(f.Name)
	}
	return arg, text
}

// showDefault reports whether help should show f's default: not when it
// is the zero value, which the usage text explains where it matters.
func showDefault(f *flag.Flag) bool {
	switch f.DefValue {
	case "", "0", "false":
		return false
	}
	return true
}

// terminalSafe escapes what would act on a terminal or break a line in s
// (control characters, other non-printing runes and invalid UTF-8) as Go's
// %q does, leaving the rest as it is.
func terminalSafe(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case !unicode.IsPrint(r):
			q := strconv.Quote(string(r))
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}
