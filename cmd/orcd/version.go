package main

import (
	"flag"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

func init() {
	register(command{
		name:     "version",
		summary:  "print orcd's version, commit and Go version",
		synopsis: "orcd version\norcd --version",
		details: `The version is the one given at build time with
-ldflags "-X main.version=v1.2.3", else the module version the Go toolchain
recorded (a pseudo-version from the git commit, "+dirty" for uncommitted
changes). The commit, its time and whether the tree was modified come from
the build's VCS stamp when there is one.`,
		examples: []string{"orcd version", "orcd --version"},
		setup: func(fs *flag.FlagSet) func(*env) int {
			return func(e *env) int {
				fmt.Fprintln(e.stdout, versionString())
				return 0
			}
		},
	})
}

// version, when set with -ldflags "-X main.version=...", overrides the
// module version recorded in the binary.
var version string

// versionString describes this binary on one line, e.g.
// "orcd v1.2.3 (commit 0123456789ab, 2026-01-02T03:04:05Z, modified) go1.26.8 linux/amd64".
func versionString() string {
	info, _ := debug.ReadBuildInfo()
	return formatVersion(version, info)
}

// formatVersion is versionString with the build info as an argument (nil
// when the binary has none).
func formatVersion(override string, info *debug.BuildInfo) string {
	v := override
	var stamp []string
	if info != nil {
		if v == "" {
			v = info.Main.Version
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				stamp = append(stamp, "commit "+s.Value[:min(12, len(s.Value))])
			case "vcs.time":
				stamp = append(stamp, s.Value)
			case "vcs.modified":
				if s.Value == "true" {
					stamp = append(stamp, "modified")
				}
			}
		}
	}
	if v == "" {
		v = "(devel)"
	}
	s := "orcd " + v
	if len(stamp) > 0 {
		s += " (" + strings.Join(stamp, ", ") + ")"
	}
	return s + " " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
}
