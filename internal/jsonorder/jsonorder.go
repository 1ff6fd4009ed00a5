// Package jsonorder parses JSON keeping the order of object keys, which
// encoding/json's maps lose: a JSON schema's property order is the order
// in which orcd generates (grammar) and renders (harmony) the properties.
package jsonorder

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Object is a JSON object with its keys in document order.
type Object struct {
	Keys []string
	Vals []any
}

// Get returns the value of key k.
func (o *Object) Get(k string) (any, bool) {
	for i, key := range o.Keys {
		if key == k {
			return o.Vals[i], true
		}
	}
	return nil, false
}

// Parse parses one JSON value: objects become *Object, arrays []any,
// numbers json.Number, and strings, booleans and null their Go values.
// A repeated key (which makes a schema ambiguous), nesting deeper than
// maxDepth (so hostile input cannot exhaust the stack) and data after the
// value are errors.
func Parse(data []byte, maxDepth int) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := parseValue(dec, 0, maxDepth)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON value")
	}
	return v, nil
}

func parseValue(dec *json.Decoder, depth, maxDepth int) (any, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("nesting deeper than %d", maxDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch tok {
	case json.Delim('{'):
		o := &Object{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, err
			}
			k, _ := kt.(string)
			v, err := parseValue(dec, depth+1, maxDepth)
			if err != nil {
				return nil, err
			}
			if _, dup := o.Get(k); dup {
				return nil, fmt.Errorf("duplicate key %q", clip(k))
			}
			o.Keys, o.Vals = append(o.Keys, k), append(o.Vals, v)
		}
		_, err := dec.Token() // '}'
		return o, err
	case json.Delim('['):
		arr := []any{}
		for dec.More() {
			v, err := parseValue(dec, depth+1, maxDepth)
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
		}
		_, err := dec.Token() // ']'
		return arr, err
	}
	return tok, nil
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
