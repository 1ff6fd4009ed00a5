package server

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// decodeJSON reads r's body and decodes it strictly into v, a pointer to a
// request struct (see decodeStrict). The error says what is wrong and where.
func decodeJSON(r *http.Request, v any) error {
	data, err := readBody(r)
	if err != nil {
		return err
	}
	return decodeStrict(data, v)
}

// readBody reads the whole body. The Handler has bounded its size
// (http.MaxBytesReader) and the time it may take (a read deadline).
func readBody(r *http.Request) ([]byte, error) {
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		// The Handler refused a declared length above the body limit.
		buf.Grow(int(r.ContentLength))
	}
	_, err := buf.ReadFrom(r.Body)
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
		return buf.Bytes(), nil
	case errors.As(err, &tooBig):
		return nil, bodyTooLarge(tooBig.Limit)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nil, apiError{http.StatusRequestTimeout, codeRequestTimeout, "body: not received within the read timeout", false}
	}
	return nil, invalid("body: " + err.Error())
}

func bodyTooLarge(limit int64) apiError {
	return apiError{http.StatusRequestEntityTooLarge, codeInvalidRequest,
		fmt.Sprintf("body: larger than the limit of %d bytes", limit), false}
}

// decodeStrict decodes data, one JSON object, into v, a pointer to a
// struct. Before encoding/json sees it, the body is walked against v's type
// so that, unlike encoding/json alone, it rejects keys that match a field
// only case-insensitively, duplicate keys (anywhere, free-form values
// included) and unknown fields, and so that every error names the API's
// path to the value (messages[0].tool_calls[1].function.name), not Go's.
func decodeStrict(data []byte, v any) error {
	return decodeWith(data, v, nil)
}

// decodeWith is decodeStrict, except that unknown fields go to unknown
// when it is set (see tolerance) instead of being rejected.
func decodeWith(data []byte, v any, unknown *tolerance) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return invalid("body: empty; expected a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	c := checker{dec: dec, unknown: unknown}
	if err := c.value(reflect.TypeOf(v).Elem(), ""); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return invalid("body: unexpected data after the JSON object")
	}
	if err := json.Unmarshal(data, v); err != nil {
		// The walk checks everything encoding/json does; this is a backstop.
		return invalid("body: " + err.Error())
	}
	return nil
}

// checker walks one JSON value with a json.Decoder's tokens.
type checker struct {
	dec *json.Decoder
	// unknown, when set, takes unknown fields instead of rejecting them.
	unknown *tolerance
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// value checks the next value against t; path is its API path ("" for the body).
func (c *checker) value(t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	// A struct is walked field by field even when it unmarshals itself
	// (to keep its raw JSON beside the fields, say); other types that do
	// are free-form.
	if reflect.PointerTo(t).Implements(unmarshalerType) && t.Kind() != reflect.Struct {
		return c.custom(t, path)
	}
	tok, err := c.dec.Token()
	if err != nil {
		return describeDecodeError(err)
	}
	if tok == nil {
		return nil // null leaves a field unset, as encoding/json does
	}
	switch t.Kind() {
	case reflect.Struct, reflect.Map:
		if tok != json.Delim('{') {
			return mismatch(path, "an object", tok)
		}
		if t.Kind() == reflect.Map {
			return c.object(path, func(_, at string) error { return c.value(t.Elem(), at) })
		}
		fields := fieldsOf(t)
		return c.object(path, func(key, at string) error {
			if fields[key] == nil {
				if _, wrongCase := caseMatch(key, fields); c.unknown == nil || wrongCase {
					return unknownField(at, key, fields)
				}
				raw, err := c.raw(at)
				if err != nil {
					return err
				}
				return c.unknown.field(at, raw)
			}
			return c.value(fields[key], at)
		})
	case reflect.Slice, reflect.Array:
		if tok != json.Delim('[') {
			return mismatch(path, "an array", tok)
		}
		return c.array(path, func(at string) error { return c.value(t.Elem(), at) })
	case reflect.String:
		if _, ok := tok.(string); !ok {
			return mismatch(path, "a string", tok)
		}
		return nil
	case reflect.Bool:
		if _, ok := tok.(bool); !ok {
			return mismatch(path, "true or false", tok)
		}
		return nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return number(path, tok, "an integer", func(s string) error { _, err := strconv.ParseInt(s, 10, t.Bits()); return err })
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return number(path, tok, "a non-negative integer", func(s string) error { _, err := strconv.ParseUint(s, 10, t.Bits()); return err })
	case reflect.Float32, reflect.Float64:
		return number(path, tok, "a number", func(s string) error { _, err := strconv.ParseFloat(s, t.Bits()); return err })
	case reflect.Interface:
		return c.anyRest(tok, path)
	}
	return fmt.Errorf("server: cannot check %s: no JSON rule for %s", at(path), t)
}

// object reads the members of an object whose '{' has been read, up to its
// '}': no key may repeat, and member checks each value.
func (c *checker) object(path string, member func(key, at string) error) error {
	seen := map[string]bool{}
	for c.dec.More() {
		k, err := c.dec.Token()
		if err != nil {
			return describeDecodeError(err)
		}
		key := k.(string)
		at := join(path, key)
		if seen[key] {
			return invalid(at + ": duplicate key")
		}
		seen[key] = true
		if err := member(key, at); err != nil {
			return err
		}
	}
	return c.closing()
}

// array reads the elements of an array whose '[' has been read, up to its
// ']', checking each with elem.
func (c *checker) array(path string, elem func(at string) error) error {
	for i := 0; c.dec.More(); i++ {
		if err := elem(fmt.Sprintf("%s[%d]", path, i)); err != nil {
			return err
		}
	}
	return c.closing()
}

// closing reads the delimiter that ends an object or array.
func (c *checker) closing() error {
	if _, err := c.dec.Token(); err != nil {
		return describeDecodeError(err)
	}
	return nil
}

// custom checks a value decoded by its own UnmarshalJSON (json.RawMessage,
// stringList): any JSON without duplicate keys, that the type accepts.
func (c *checker) custom(t reflect.Type, path string) error {
	raw, err := c.raw(path)
	if err != nil {
		return err
	}
	if t == reflect.TypeFor[json.RawMessage]() {
		return nil
	}
	if err := reflect.New(t).Interface().(json.Unmarshaler).UnmarshalJSON(raw); err != nil {
		return invalid(at(path) + ": " + err.Error())
	}
	return nil
}

// raw reads the next value, any JSON without duplicate keys, and returns
// it.
func (c *checker) raw(path string) (json.RawMessage, error) {
	var raw json.RawMessage
	if err := c.dec.Decode(&raw); err != nil {
		return nil, describeDecodeError(err)
	}
	sub := checker{dec: json.NewDecoder(bytes.NewReader(raw))}
	sub.dec.UseNumber()
	if err := sub.anyValue(path); err != nil {
		return nil, err
	}
	return raw, nil
}

// anyRest checks the rest of a free-form value whose first token is tok:
// objects must not repeat a key.
func (c *checker) anyRest(tok json.Token, path string) error {
	switch tok {
	case json.Delim('{'):
		return c.object(path, func(_, at string) error { return c.anyValue(at) })
	case json.Delim('['):
		return c.array(path, c.anyValue)
	}
	return nil
}

func (c *checker) anyValue(path string) error {
	tok, err := c.dec.Token()
	if err != nil {
		return describeDecodeError(err)
	}
	return c.anyRest(tok, path)
}

// fieldCache maps a struct type to its JSON keys and their types.
var fieldCache sync.Map

// fieldsOf returns the JSON keys of struct type t, with the fields of
// embedded structs promoted (an outer field wins over an embedded one of
// the same key), as encoding/json sees them.
func fieldsOf(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	var embedded []reflect.Type
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case name == "-":
		case f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct:
			embedded = append(embedded, f.Type)
		case f.IsExported():
			m[cmp.Or(name, f.Name)] = f.Type
		}
	}
	for _, et := range embedded {
		for k, ft := range fieldsOf(et) {
			if m[k] == nil {
				m[k] = ft
			}
		}
	}
	fieldCache.Store(t, m)
	return m
}

// unknownField reports a key the request type does not have, suggesting
// the field it matches but for case.
func unknownField(at, key string, fields map[string]reflect.Type) error {
	if name, ok := caseMatch(key, fields); ok {
		return invalid(fmt.Sprintf("%s: unknown field; keys are case-sensitive: did you mean %q?", at, name))
	}
	return invalid(at + ": unknown field")
}

// caseMatch returns the field that key matches but for case: such a key
// is a mistake, rejected even where unknown fields are tolerated.
func caseMatch(key string, fields map[string]reflect.Type) (string, bool) {
	for name := range fields {
		if strings.EqualFold(name, key) {
			return name, true
		}
	}
	return "", false
}

// number checks a number token with parse, which fails on a value outside
// the Go type (a fraction for an integer, an overflow).
func number(path string, tok json.Token, want string, parse func(string) error) error {
	n, ok := tok.(json.Number)
	if !ok {
		return mismatch(path, want, tok)
	}
	if err := parse(n.String()); err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return invalid(fmt.Sprintf("%s: %s is out of range", at(path), clip(n.String())))
		}
		return invalid(fmt.Sprintf("%s: expected %s, got %s", at(path), want, clip(n.String())))
	}
	return nil
}

func mismatch(path, want string, tok json.Token) error {
	got := "null"
	switch v := tok.(type) {
	case json.Delim:
		got = "an object"
		if v == '[' {
			got = "an array"
		}
	case string:
		got = "a string"
	case json.Number:
		got = "a number"
	case bool:
		got = "a boolean"
	}
	return invalid(fmt.Sprintf("%s: expected %s, got %s", at(path), want, got))
}

// at names a path in a message: "body" for the whole body.
func at(path string) string {
	if path == "" {
		return "body"
	}
	return path
}

// join extends path with an object key: .key for a plain key, ["key"] for
// any other (empty, or with spaces, dots, brackets...). Long keys are
// clipped so that an error message stays short.
func join(path, key string) string {
	plain := key != "" && !strings.ContainsFunc(key, func(r rune) bool {
		return !(r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
	})
	switch {
	case !plain:
		return fmt.Sprintf("%s[%q]", path, clip(key))
	case path == "":
		return clip(key)
	}
	return path + "." + clip(key)
}

// clip shortens s for an error message.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return strings.ToValidUTF8(s[:max], "") + "…"
}

// describeDecodeError turns a JSON syntax error into an API error. The
// body is not empty, so an end of input is a truncation.
func describeDecodeError(err error) error {
	var syntax *json.SyntaxError
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return invalid("body: truncated JSON")
	case errors.As(err, &syntax):
		return invalid(fmt.Sprintf("body: malformed JSON at byte %d: %v", syntax.Offset, err))
	}
	return invalid("body: " + err.Error())
}
