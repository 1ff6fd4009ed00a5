package cuda

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// profile times every kernel launch when ORCD_CUDA_PROFILE is set: the
// stream is synchronized before and after each launch, so the numbers are
// per-kernel wall times (each including a few µs of launch latency) and the
// run is slower than a normal one. Graphs are off while profiling.
type profile struct {
	total map[string]time.Duration
	count map[string]int
}

func newProfile() *profile {
	return &profile{total: map[string]time.Duration{}, count: map[string]int{}}
}

// time syncs, starts a clock for kernel name and returns the function that
// syncs again and records the elapsed time.
func (p *profile) time(b *Backend, name string) func() {
	b.syncStream()
	start := time.Now()
	return func() {
		b.syncStream()
		p.total[name] += time.Since(start)
		p.count[name]++
	}
}

// ProfileReport lists the kernels by total time (empty unless profiling)
// and clears the counts.
func (b *Backend) ProfileReport() string {
	p := b.prof
	if p == nil || len(p.total) == 0 {
		return ""
	}
	names := make([]string, 0, len(p.total))
	var all time.Duration
	for n, d := range p.total {
		names = append(names, n)
		all += d
	}
	sort.Slice(names, func(i, j int) bool { return p.total[names[i]] > p.total[names[j]] })
	var sb strings.Builder
	fmt.Fprintf(&sb, "%-36s %10s %8s %10s %6s\n", "kernel", "total ms", "calls", "µs/call", "share")
	for _, n := range names {
		d := p.total[n]
		fmt.Fprintf(&sb, "%-36s %10.2f %8d %10.1f %5.1f%%\n", n, d.Seconds()*1e3, p.count[n],
			d.Seconds()*1e6/float64(p.count[n]), 100*d.Seconds()/all.Seconds())
	}
	p.total, p.count = map[string]time.Duration{}, map[string]int{}
	return sb.String()
}
