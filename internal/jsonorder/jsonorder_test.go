package jsonorder

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	v, err := Parse([]byte(`{"b":1,"a":[true,null,"x",{"z":{},"y":2.5e3}]}`), 8)
	if err != nil {
		t.Fatal(err)
	}
	want := &Object{Keys: []string{"b", "a"}, Vals: []any{json.Number("1"), []any{true, nil, "x",
		&Object{Keys: []string{"z", "y"}, Vals: []any{&Object{}, json.Number("2.5e3")}}}}}
	if !reflect.DeepEqual(v, want) {
		t.Errorf("got %#v", v)
	}
	if x, ok := want.Get("a"); !ok || len(x.([]any)) != 4 {
		t.Errorf("Get(a) = %v, %v", x, ok)
	}
	if _, ok := want.Get("c"); ok {
		t.Error("Get(c) found a value")
	}
	for _, c := range []struct {
		in    string
		depth int
		err   string
	}{
		{`{"a":1,"a":2}`, 8, "duplicate key"},
		{`[[[[1]]]]`, 2, "nesting deeper than 2"},
		{`{} {}`, 8, "data after"},
		{`{"a":`, 8, "EOF"},
		{`[1,]`, 8, "invalid"},
	} {
		if _, err := Parse([]byte(c.in), c.depth); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("Parse(%s): error %v, want one with %q", c.in, err, c.err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"type":"object","properties":{"a":{"type":"string"}}}`))
	f.Add([]byte(`[1,{"a":[]}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := Parse(data, 16)
		if err == nil && !json.Valid(data) {
			t.Errorf("accepted invalid JSON %q as %v", data, v)
		}
	})
}
