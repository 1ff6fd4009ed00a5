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

// responseStore keeps the most recently stored responses, at most max,
// dropping the least recently used. A nil store keeps nothing.
type responseStore struct {
	mu    sync.Mutex
	max   int
	order *list.List // of *storeEntry, most recently used first
	byID  map[string]*list.Element
}

type storeEntry struct {
	id string
	r  storedResponse
}

// newResponseStore returns a store of max responses, or nil for max <= 0.
func newResponseStore(max int) *responseStore {
	if max <= 0 {
		return nil
	}
	return &responseStore{max: max, order: list.New(), byID: map[string]*list.Element{}}
}

func (s *responseStore) put(id string, r storedResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byID[id] = s.order.PushFront(&storeEntry{id, r})
	for s.order.Len() > s.max {
		e := s.order.Back()
		s.order.Remove(e)
		delete(s.byID, e.Value.(*storeEntry).id)
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
		s.order.Remove(e)
		delete(s.byID, id)
	}
	return ok
}
