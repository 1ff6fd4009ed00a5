// Package schematest holds the JSON-schema helpers that the tests of
// structured output share: the independent validator
// (santhosh-tekuri/jsonschema, a test-only dependency) and the shared set
// of schemas in grammar/testdata.
package schematest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

var compiled sync.Map // schema text -> *jsonschema.Schema

// Check fails t unless out parses with encoding/json and validates
// against schema.
func Check(t testing.TB, schema, out string) {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("output %q does not parse: %v", out, err)
	}
	s, ok := compiled.Load(schema)
	if !ok {
		doc, err := jsonschema.UnmarshalJSON(strings.NewReader(schema))
		if err != nil {
			t.Fatal(err)
		}
		c := jsonschema.NewCompiler()
		if err := c.AddResource("schema.json", doc); err != nil {
			t.Fatal(err)
		}
		sch, err := c.Compile("schema.json")
		if err != nil {
			t.Fatalf("the validator refuses %s: %v", schema, err)
		}
		s, _ = compiled.LoadOrStore(schema, sch)
	}
	inst, err := jsonschema.UnmarshalJSON(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.(*jsonschema.Schema).Validate(inst); err != nil {
		t.Fatalf("output %q does not validate against %s: %v", out, schema, err)
	}
}

// Schemas returns the shared test schemas (grammar/testdata/schemas.json).
func Schemas() []string {
	_, file, _, _ := runtime.Caller(0)
	data, err := os.ReadFile(filepath.Join(filepath.Dir(file), "../../grammar/testdata/schemas.json"))
	if err != nil {
		panic(err)
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		panic(err)
	}
	out := make([]string, len(raw))
	for i, r := range raw {
		out[i] = string(r)
	}
	return out
}
