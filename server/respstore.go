package server

import (
	"container/list"
	"sync"
)

// storedResponse is what a stored response keeps: its conversation, for
// previous_response_id, and its object, for GET /v1/responses/{id}.
type storedResponse struct {
	messages []chatMessage
	response responseObject
}

// size is a bound on the bytes the response holds: its conversation's text
// counted once for the messages and once for the output items, plus a
// fixed cost per message.
func (r storedResponse) size() int64 {
	n := int64(1024)
	for _, m := range r.messages {
		n += 256 + int64(len(m.Content)+len(m.ReasoningContent))
		for _, tc := range m.ToolCalls {
			n += 128 + int64(len(tc.ID)+len(tc.Function.Name)+len(tc.Function.Arguments))
		}
	}
	return 2 * n
}

// responseStoreBytes bounds the memory of the stored responses, whatever
// their number: a conversation may hold up to the context's text
// (512 KiB at the default context), which 1000 times over would be too
// much for a worker.
const responseStoreBytes = 64 << 20

// responseStore keeps the most recently stored responses, at most max and
// at most maxBytes in all (by storedResponse.size), dropping the least
// recently used. A nil store keeps nothing.
type responseStore struct {
	mu              sync.Mutex
	max             int
	maxBytes, bytes int64
	order           *list.List // of *storeEntry, most recently used first
	byID            map[string]*list.Element
}

type storeEntry struct {
	id   string
	r    storedResponse
	size int64
}

// newResponseStore returns a store of max responses and maxBytes, or nil
// for max <= 0.
func newResponseStore(max int, maxBytes int64) *responseStore {
	if max <= 0 {
		return nil
	}
	return &responseStore{max: max, maxBytes: maxBytes, order: list.New(), byID: map[string]*list.Element{}}
}

// put stores r under id (a response larger than the whole budget is not
// stored).
func (s *responseStore) put(id string, r storedResponse) {
	size := r.size()
	if size > s.maxBytes {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byID[id] = s.order.PushFront(&storeEntry{id, r, size})
	s.bytes += size
	for s.order.Len() > s.max || s.bytes > s.maxBytes {
		s.drop(s.order.Back())
	}
}

func (s *responseStore) get(id string) (storedResponse, bool) {
	if s == nil {
		return storedResponse{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.byID[id]
	if !ok {
		return storedResponse{}, false
	}
	s.order.MoveToFront(e)
	return e.Value.(*storeEntry).r, true
}

// remove drops a response and reports whether it was stored.
func (s *responseStore) remove(id string) bool {
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.byID[id]
	if ok {
		s.drop(e)
	}
	return ok
}

func (s *responseStore) drop(e *list.Element) {
	entry := e.Value.(*storeEntry)
	s.order.Remove(e)
	delete(s.byID, entry.id)
	s.bytes -= entry.size
}
