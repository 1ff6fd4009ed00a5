package cuda

import (
	"fmt"
	"unsafe"
)

// CUDA graphs: Graph records the ops of fn the first time it sees a key
// (stream capture), instantiates the recording, and replays it on later
// calls with one cuGraphLaunch instead of one launch per op. The kernels
// take every value that changes between steps (positions, lengths, slots)
// from device tensors, so a replay computes the current step.

// graph is an instantiated recording and the tensors it uses.
type graph struct {
	exec    uintptr
	tensors map[*Tensor]bool
}

// capture is the state of a recording in progress.
type capture struct {
	tensors map[*Tensor]bool
	retired []uintptr // workspace outgrown during the capture, freed after it
}

// Graph runs fn, recording it under key on first sight and replaying the
// recording afterwards. See backend.Backend.Graph.
func (b *Backend) Graph(key string, fn func()) {
	if b.noGraphs || b.cap != nil || b.failed() {
		fn()
		return
	}
	defer b.bind()()
	if g := b.graphs[key]; g != nil {
		if err := b.d.call("cuGraphLaunch", g.exec, b.stream); err != nil {
			b.fail(fmt.Errorf("graph %q: %w", key, err))
		}
		return
	}
	if err := b.d.call("cuStreamBeginCapture_v2", b.stream, cuStreamCaptureModeRelaxed); err != nil {
		b.fail(fmt.Errorf("graph %q: %w", key, err))
		return
	}
	c := &capture{tensors: map[*Tensor]bool{}}
	b.cap = c
	fn()
	b.cap = nil
	var raw uintptr
	if err := b.d.call("cuStreamEndCapture", b.stream, uintptr(unsafe.Pointer(&raw))); err != nil {
		b.fail(fmt.Errorf("graph %q: %w", key, err))
	}
	defer b.freeRetired(c)
	if raw == 0 {
		return
	}
	defer b.d.call("cuGraphDestroy", raw)
	if b.failed() {
		// An op failed while recording; the recording is incomplete and
		// nothing it holds has run.
		return
	}
	var exec uintptr
	if err := b.d.call("cuGraphInstantiateWithFlags", uintptr(unsafe.Pointer(&exec)), raw, 0); err != nil {
		b.fail(fmt.Errorf("graph %q: %w", key, err))
		return
	}
	if err := b.d.call("cuGraphLaunch", exec, b.stream); err != nil {
		b.fail(fmt.Errorf("graph %q: %w", key, err))
	}
	if len(c.retired) > 0 {
		// The recording mixes an outgrown workspace buffer with its
		// successor: run it this once, then forget it.
		b.syncStream()
		b.d.call("cuGraphExecDestroy", exec)
		return
	}
	b.graphs[key] = &graph{exec: exec, tensors: c.tensors}
}

// freeRetired frees the workspace buffers a capture outgrew, once the work
// using them is done.
func (b *Backend) freeRetired(c *capture) {
	if len(c.retired) == 0 {
		return
	}
	b.syncStream()
	b.dropAllGraphs()
	for _, p := range c.retired {
		if err := b.mem.free(p); err != nil {
			b.fail(err)
		}
	}
}

// uses notes that the capture in progress, if any, uses t.
func (b *Backend) uses(t *Tensor) {
	if t.base != nil {
		t = t.base // freeing the allocation drops the graphs that use its views
	}
	if b.cap != nil {
		b.cap.tensors[t] = true
	}
}

func (b *Backend) dropGraph(key string) {
	if g := b.graphs[key]; g != nil {
		b.d.call("cuGraphExecDestroy", g.exec)
		delete(b.graphs, key)
	}
}

func (b *Backend) dropAllGraphs() {
	for k := range b.graphs {
		b.dropGraph(k)
	}
}

// dropGraphsUsing forgets the recordings that use t, which is being freed.
func (b *Backend) dropGraphsUsing(t *Tensor) {
	for k, g := range b.graphs {
		if g.tensors[t] {
			b.dropGraph(k)
		}
	}
}
