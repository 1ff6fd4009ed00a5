package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
)

// Flags that check their value when parsed, so that every command rejects
// an out-of-range value by the flag's name before it does any work, and
// shell completion can offer a choice flag's words.

// noMax is the upper bound of an int flag that has none.
const noMax = math.MaxInt

// numValue is a number flag limited to [lo, hi]; a float must be finite.
type numValue[T int | float64] struct {
	p      *T
	lo, hi T
}

// numVar defines a number flag stored in p whose value must lie in
// [lo, hi] (hi noMax or +Inf: no upper bound).
func numVar[T int | float64](fs *flag.FlagSet, p *T, name string, def, lo, hi T, usage string) {
	*p = def
	fs.Var(&numValue[T]{p, lo, hi}, name, usage)
}

// numFlag is numVar with a new variable.
func numFlag[T int | float64](fs *flag.FlagSet, name string, def, lo, hi T, usage string) *T {
	p := new(T)
	numVar(fs, p, name, def, lo, hi, usage)
	return p
}

func (v *numValue[T]) String() string {
	if v.p == nil {
		return ""
	}
	return fmt.Sprint(*v.p)
}

func (v *numValue[T]) Set(s string) error {
	var x T
	var err error
	switch p := any(&x).(type) {
	case *int:
		var n int64
		n, err = strconv.ParseInt(s, 10, strconv.IntSize)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			return errors.New("not an integer")
		}
		*p = int(n)
	case *float64:
		*p, err = strconv.ParseFloat(s, 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) || math.IsNaN(*p) {
			return errors.New("not a number")
		}
	}
	// An overflow (err is ErrRange) is out of range whatever the bounds.
	if err != nil || math.IsInf(float64(x), 0) || x < v.lo || x > v.hi {
		if float64(v.hi) >= noMax {
			return fmt.Errorf("must be at least %v", v.lo)
		}
		return fmt.Errorf("must be between %v and %v", v.lo, v.hi)
	}
	*v.p = x
	return nil
}

func (v *numValue[T]) argName() string {
	if _, ok := any(v.lo).(int); ok {
		return "N"
	}
	return "X"
}

// maxSeconds bounds the flags given in seconds: far beyond any real
// timeout, and well within what a time.Duration holds.
const maxSeconds = 1e9

// choiceValue is a string flag limited to a set of words.
type choiceValue struct {
	p       *string
	choices []string
}

// choiceVar defines a string flag stored in p whose value must be one of
// choices.
func choiceVar(fs *flag.FlagSet, p *string, name, def string, choices []string, usage string) {
	*p = def
	fs.Var(&choiceValue{p, choices}, name, usage)
}

// choiceFlag is choiceVar with a new variable.
func choiceFlag(fs *flag.FlagSet, name, def string, choices []string, usage string) *string {
	p := new(string)
	choiceVar(fs, p, name, def, choices, usage)
	return p
}

func (v *choiceValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

func (v *choiceValue) Set(s string) error {
	for _, c := range v.choices {
		if s == c {
			*v.p = s
			return nil
		}
	}
	return fmt.Errorf("want %s", orList(v.choices))
}

func (v *choiceValue) argName() string { return strings.Join(v.choices, "|") }

// words are what shell completion offers for the flag's value.
func (v *choiceValue) words() []string { return v.choices }

// orList joins words as "a, b or c".
func orList(words []string) string {
	if len(words) < 2 {
		return strings.Join(words, "")
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// logFlags are the flags of every command that logs.
type logFlags struct {
	level, format *string
}

// addLogFlags defines --log-level and --log-format (default format).
func addLogFlags(fs *flag.FlagSet, format string) *logFlags {
	return &logFlags{
		level:  choiceFlag(fs, "log-level", "info", []string{"debug", "info", "warn", "error"}, "least severe log messages to write"),
		format: choiceFlag(fs, "log-format", format, []string{"json", "text"}, "log format on stderr"),
	}
}

// logger returns a logger writing to w as the flags ask, with every float
// rounded to three significant digits (roundFloats).
func (lf *logFlags) logger(w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(*lf.level)) // the choices are slog's level names
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: roundFloats}
	if *lf.format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// roundFloats rounds float attributes to three significant digits:
// prefill_tokens_per_s=92.8, not 92.82166442796282. It is a ReplaceAttr, so
// it applies to every float logged, by orcd's packages too.
func roundFloats(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindFloat64 {
		a.Value = slog.Float64Value(round3(a.Value.Float64()))
	}
	return a
}

// round3 rounds x to three significant digits.
func round3(x float64) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return x
	}
	r, _ := strconv.ParseFloat(strconv.FormatFloat(x, 'g', 3, 64), 64)
	return r
}
