//go:build nodemo

package demo

import "embed"

// files is empty: `go build -tags nodemo` leaves the model out of the
// binary (20 MB smaller; the GPU machine's trips carry at most 64 MiB), and
// Open reports it.
var files embed.FS
