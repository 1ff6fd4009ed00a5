package server

import (
	"fmt"
	"strings"
	"testing"
)

// The store drops the least recently used response past its count or its
// bytes.
func TestResponseStoreLRU(t *testing.T) {
	msg := func(n int) storedResponse {
		return storedResponse{messages: []chatMessage{textMessage("user", strings.Repeat("x", n))}}
	}
	s := newResponseStore(3, 1<<20)
	for i := range 3 {
		s.put(fmt.Sprint(i), msg(10))
	}
	s.get("0") // 0 is now the most recently used
	s.put("3", msg(10))
	for id, want := range map[string]bool{"0": true, "1": false, "2": true, "3": true} {
		if _, ok := s.get(id); ok != want {
			t.Errorf("by count: %s stored %v, want %v", id, ok, want)
		}
	}

	big := msg(300 << 10) // about 600 KiB by size: one fits in 1 MiB, two do not
	if sz := big.size(); sz < 600<<10 || sz > 700<<10 {
		t.Fatalf("size %d", sz)
	}
	s = newResponseStore(10, 1<<20)
	s.put("a", big)
	s.put("b", big)
	if _, ok := s.get("a"); ok {
		t.Error("by bytes: a still stored")
	}
	if _, ok := s.get("b"); !ok {
		t.Error("by bytes: b dropped")
	}
	s.put("huge", msg(1<<20))
	if _, ok := s.get("huge"); ok {
		t.Error("a response over the whole budget was stored")
	}
	if !s.remove("b") || s.remove("b") || s.bytes != 0 || s.order.Len() != 0 {
		t.Errorf("after remove: %d bytes, %d entries", s.bytes, s.order.Len())
	}
	if (*responseStore)(nil).remove("x") {
		t.Error("nil store removed")
	}
}
