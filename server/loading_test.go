package server

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Before the model is loaded, /health says "loading" with 503 and every
// other endpoint gives a retriable 503 LOADING error in its API's shape.
func TestLoadingHandler(t *testing.T) {
	hs := httptest.NewServer(Loading())
	defer hs.Close()

	resp, err := http.Get(hs.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	var health map[string]any
	json.NewDecoder(resp.Body).Decode(&health)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || health["status"] != "loading" || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("health: %d %v", resp.StatusCode, health)
	}

	for _, path := range []string{"/execute", "/cancel", "/shutdown", "/metrics", "/nope"} {
		resp, err := http.Post(hs.URL+path, "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		if e := wantError(t, resp, http.StatusServiceUnavailable, "LOADING"); !e.Retriable {
			t.Errorf("%s: LOADING is not retriable", path)
		}
	}

	for _, path := range []string{"/v1/models", "/v1/chat/completions"} {
		resp, err := http.Post(hs.URL+path, "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		var body openAIError
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || body.Error.Code == nil || *body.Error.Code != "loading" ||
			body.Error.Type != "server_error" || body.Error.Message == "" {
			t.Errorf("%s: %d %+v", path, resp.StatusCode, body.Error)
		}
	}
}
