// Package grammar compiles JSON schemas into byte-level matchers (pushdown
// automata over bytes) and computes, over a tokenizer's vocabulary, which
// tokens a matcher allows next: the masks of constrained decoding.
//
// Output is canonical so that any walk through the matcher ends: no
// whitespace, object properties in schema order (every required one
// present, optional ones skippable), numbers of bounded length. From every
// state a shortest way to finish is known (Matcher.MinBytes), so a caller
// that runs low on tokens can switch to finishing masks, under which each
// byte brings the end one byte closer.
package grammar

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"orcd/internal/jsonorder"
)

// SchemaError is a schema the compiler cannot enforce: Keyword at Path
// (a JSON pointer into the schema, "" for the root).
type SchemaError struct {
	Path    string
	Keyword string
	Msg     string
}

func (e *SchemaError) Error() string {
	where := e.Path
	if where == "" {
		where = "the root"
	}
	if e.Keyword != "" {
		return fmt.Sprintf("schema keyword %q at %s: %s", e.Keyword, where, e.Msg)
	}
	return fmt.Sprintf("schema at %s: %s", where, e.Msg)
}

// Limits on what Compile accepts, so that hostile schemas cost little.
const (
	maxSchemaBytes = 1 << 20
	maxSchemaDepth = 64
	maxNodes       = 10000
	// maxDepth bounds the nesting of generated values.
	maxDepth = 128
	// Digits allowed in the parts of a number: enough for any float64 or
	// int64-ish value, few enough that every parser reads the result.
	maxIntDigits  = 15
	maxFracDigits = 15
	maxExpDigits  = 2
)

type kind uint8

const (
	kObject  kind = iota // fixed properties in schema order
	kMap                 // any object
	kArray               // items of one schema (any when items is nil)
	kString              // any string
	kNumber              // any number
	kInteger             // any integer
	kLiteral             // one of a set of byte strings
	kAnyOf               // one of several schemas
)

type prop struct {
	key      []byte // `"name":`
	value    *node
	required bool
}

type node struct {
	kind  kind
	id    int32
	props []prop
	// reqFrom[i] is the first required property at or after i
	// (len(props) if none); reqSum[i] and reqCnt[i] the bytes and count
	// of the required properties from i on.
	reqFrom, reqSum, reqCnt []int
	items                   *node
	lits                    [][]byte // sorted, so a prefix comes before its extensions
	alts                    []*node
	minLen                  int // shortest instance in bytes; inf when none
}

const inf = math.MaxInt32

// Grammar is a compiled schema. It is immutable and safe for concurrent use.
type Grammar struct {
	root  *node
	id    uint64
	nodes []*node
	// any is the node of an arbitrary JSON value.
	any *node
}

var (
	grammarIDs atomic.Uint64
	nodeIDs    atomic.Int32
)

// compiled caches grammars by the hash of their schema.
var compiled = struct {
	sync.Mutex
	m map[[32]byte]*Grammar
}{m: map[[32]byte]*Grammar{}}

// maxCached bounds the compiled-grammar cache.
const maxCached = 256

// Compile compiles a JSON schema, or returns a *SchemaError naming the
// keyword it cannot enforce. Grammars are cached by the schema's hash.
func Compile(schema []byte) (*Grammar, error) {
	h := sha256.Sum256(schema)
	compiled.Lock()
	g := compiled.m[h]
	compiled.Unlock()
	if g != nil {
		return g, nil
	}
	g, err := compile(schema)
	if err != nil {
		return nil, err
	}
	cache(h, g)
	return g, nil
}

func cache(h [32]byte, g *Grammar) {
	compiled.Lock()
	defer compiled.Unlock()
	if len(compiled.m) >= maxCached {
		for k := range compiled.m { // evict one, arbitrarily
			delete(compiled.m, k)
			break
		}
	}
	compiled.m[h] = g
}

// JSONObject is the grammar of any JSON object (response_format json_object).
var JSONObject = sync.OnceValue(func() *Grammar {
	c := newCompiler(nil)
	m := c.newNode(kMap)
	return c.finish(m)
})

// Literals is the grammar of exactly one of words, taken as raw bytes (not
// JSON), e.g. the names of the functions a model may call.
func Literals(words []string) (*Grammar, error) {
	if len(words) == 0 {
		return nil, errors.New("grammar: no words")
	}
	h := sha256.Sum256([]byte("\x00literals\x00" + strings.Join(words, "\x00")))
	compiled.Lock()
	g := compiled.m[h]
	compiled.Unlock()
	if g != nil {
		return g, nil
	}
	c := newCompiler(nil)
	n := c.newNode(kLiteral)
	for _, w := range words {
		n.lits = append(n.lits, []byte(w))
	}
	sortLits(n)
	g = c.finish(n)
	cache(h, g)
	return g, nil
}

// ToolCall is the grammar of {"name":NAME,"arguments":ARGS}, NAME one of
// names and ARGS an instance of that function's grammar in args: a call
// as tagged tool-call formats write it.
func ToolCall(names []string, args []*Grammar) (*Grammar, error) {
	if len(names) == 0 || len(names) != len(args) {
		return nil, errors.New("grammar: a tool call needs names and their argument grammars")
	}
	c := newCompiler(nil)
	n := c.newNode(kAnyOf)
	for i, name := range names {
		lit := c.newNode(kLiteral)
		lit.lits = [][]byte{encodeString(name)}
		obj := c.newNode(kObject)
		obj.props = []prop{
			{key: append(encodeString("name"), ':'), value: lit, required: true},
			{key: append(encodeString("arguments"), ':'), value: args[i].root, required: true},
		}
		n.alts = append(n.alts, obj)
	}
	return c.finish(n), nil
}

func compile(schema []byte) (*Grammar, error) {
	if len(schema) > maxSchemaBytes {
		return nil, &SchemaError{Msg: fmt.Sprintf("schema of %d bytes exceeds %d", len(schema), maxSchemaBytes)}
	}
	v, err := jsonorder.Parse(schema, 4*maxSchemaDepth)
	if err != nil {
		return nil, &SchemaError{Msg: "not valid JSON: " + err.Error()}
	}
	c := newCompiler(v)
	root, err := c.compile(v, "", 0)
	if err != nil {
		return nil, err
	}
	if err := c.resolve(); err != nil {
		return nil, err
	}
	g := c.finish(root)
	if root.minLen >= inf {
		return nil, &SchemaError{Msg: "no finite JSON value satisfies the schema"}
	}
	return g, nil
}

type compiler struct {
	root  any
	nodes []*node
	refs  map[string]*node
	err   error
	any   *node
}

func newCompiler(root any) *compiler {
	return &compiler{root: root, refs: map[string]*node{}}
}

func (c *compiler) newNode(k kind) *node {
	// Ids are unique across grammars: mask cache keys are built from them.
	n := &node{kind: k, id: nodeIDs.Add(1)}
	c.nodes = append(c.nodes, n)
	return n
}

// anyNode is the node of an arbitrary JSON value.
func (c *compiler) anyNode() *node {
	if c.any == nil {
		a := c.newNode(kAnyOf)
		c.any = a
		arr := c.newNode(kArray)
		arr.items = a
		lit := c.newNode(kLiteral)
		lit.lits = [][]byte{[]byte("false"), []byte("null"), []byte("true")}
		a.alts = []*node{c.newNode(kMap), arr, c.newNode(kString), c.newNode(kNumber), lit}
	}
	return c.any
}

// finish computes the shortest instances and the tables derived from them.
func (c *compiler) finish(root *node) *Grammar {
	c.anyNode()
	for _, n := range c.nodes {
		n.minLen = inf
	}
	for changed := true; changed; {
		changed = false
		for _, n := range c.nodes {
			if l := n.computeMin(); l < n.minLen {
				n.minLen, changed = l, true
			}
		}
	}
	for _, n := range c.nodes {
		if n.kind != kObject {
			continue
		}
		k := len(n.props)
		n.reqFrom, n.reqSum, n.reqCnt = make([]int, k+1), make([]int, k+1), make([]int, k+1)
		n.reqFrom[k] = k
		for i := k - 1; i >= 0; i-- {
			n.reqFrom[i], n.reqSum[i], n.reqCnt[i] = n.reqFrom[i+1], n.reqSum[i+1], n.reqCnt[i+1]
			if p := n.props[i]; p.required {
				n.reqFrom[i] = i
				n.reqSum[i] = addCap(n.reqSum[i], len(p.key)+p.value.minLen)
				n.reqCnt[i]++
			}
		}
	}
	return &Grammar{root: root, id: grammarIDs.Add(1), nodes: c.nodes, any: c.any}
}

func addCap(a, b int) int {
	if a >= inf || b >= inf || a+b >= inf {
		return inf
	}
	return a + b
}

// computeMin is the shortest instance given the children's current bounds.
func (n *node) computeMin() int {
	switch n.kind {
	case kObject:
		l, cnt := 2, 0
		for _, p := range n.props {
			if p.required {
				l = addCap(l, len(p.key)+p.value.minLen)
				cnt++
			}
		}
		return addCap(l, max(0, cnt-1))
	case kMap, kArray, kString:
		return 2
	case kNumber, kInteger:
		return 1
	case kLiteral:
		l := inf
		for _, s := range n.lits {
			l = min(l, len(s))
		}
		return l
	case kAnyOf:
		l := inf
		for _, a := range n.alts {
			l = min(l, a.minLen)
		}
		return l
	}
	return inf
}

// annotations are keywords that do not constrain instances.
var annotations = map[string]bool{
	"title": true, "description": true, "default": true, "examples": true, "$schema": true,
	"$id": true, "$comment": true, "$defs": true, "definitions": true, "deprecated": true,
	"readOnly": true, "writeOnly": true, "strict": true,
}

func (c *compiler) compile(v any, path string, depth int) (*node, error) {
	if depth > maxSchemaDepth {
		return nil, &SchemaError{Path: path, Msg: fmt.Sprintf("nested deeper than %d", maxSchemaDepth)}
	}
	if len(c.nodes) > maxNodes {
		return nil, &SchemaError{Path: path, Msg: fmt.Sprintf("more than %d subschemas", maxNodes)}
	}
	switch v := v.(type) {
	case bool:
		if v {
			return c.anyNode(), nil
		}
		return nil, &SchemaError{Path: path, Msg: "the schema false allows nothing"}
	case *object:
		return c.compileObject(v, path, depth)
	}
	return nil, &SchemaError{Path: path, Msg: "a schema must be an object or a boolean"}
}

func (c *compiler) compileObject(s *object, path string, depth int) (*node, error) {
	for _, k := range s.Keys {
		switch k {
		case "type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf", "$ref":
		default:
			if !annotations[k] {
				return nil, &SchemaError{Path: path, Keyword: k, Msg: "not supported"}
			}
		}
	}
	if ref, ok := s.Get("$ref"); ok {
		for _, k := range s.Keys {
			if k != "$ref" && !annotations[k] {
				return nil, &SchemaError{Path: path, Keyword: k, Msg: "not supported next to $ref"}
			}
		}
		r, ok := ref.(string)
		if !ok {
			return nil, &SchemaError{Path: path, Keyword: "$ref", Msg: "must be a string"}
		}
		return c.refNode(r), nil
	}
	if e, ok := s.Get("enum"); ok {
		arr, ok := e.([]any)
		if !ok {
			return nil, &SchemaError{Path: path, Keyword: "enum", Msg: "must be an array"}
		}
		return c.literals(s, arr, path, "enum")
	}
	if e, ok := s.Get("const"); ok {
		return c.literals(s, []any{e}, path, "const")
	}
	if a, ok := s.Get("anyOf"); ok {
		if _, ok := s.Get("type"); ok {
			return nil, &SchemaError{Path: path, Keyword: "type", Msg: "not supported next to anyOf"}
		}
		arr, ok := a.([]any)
		if !ok || len(arr) == 0 {
			return nil, &SchemaError{Path: path, Keyword: "anyOf", Msg: "must be a non-empty array"}
		}
		n := c.newNode(kAnyOf)
		for i, alt := range arr {
			an, err := c.compile(alt, fmt.Sprintf("%s/anyOf/%d", path, i), depth+1)
			if err != nil {
				return nil, err
			}
			n.alts = append(n.alts, an)
		}
		return n, nil
	}
	t, hasType := s.Get("type")
	if !hasType {
		for _, k := range []string{"properties", "required", "additionalProperties", "items"} {
			if _, ok := s.Get(k); ok {
				return nil, &SchemaError{Path: path, Keyword: k, Msg: "needs a type"}
			}
		}
		return c.anyNode(), nil
	}
	switch t := t.(type) {
	case string:
		return c.typed(s, t, path, depth)
	case []any:
		if len(t) == 0 {
			return nil, &SchemaError{Path: path, Keyword: "type", Msg: "empty list of types"}
		}
		n := c.newNode(kAnyOf)
		for _, ti := range t {
			name, ok := ti.(string)
			if !ok {
				return nil, &SchemaError{Path: path, Keyword: "type", Msg: "types must be strings"}
			}
			an, err := c.typed(s, name, path, depth)
			if err != nil {
				return nil, err
			}
			n.alts = append(n.alts, an)
		}
		return n, nil
	}
	return nil, &SchemaError{Path: path, Keyword: "type", Msg: "must be a string or an array of strings"}
}

// typed compiles s as an instance of type t.
func (c *compiler) typed(s *object, t, path string, depth int) (*node, error) {
	onlyFor := func(kw, typ string) error {
		if _, ok := s.Get(kw); ok && t != typ {
			return &SchemaError{Path: path, Keyword: kw, Msg: "applies only to type " + typ}
		}
		return nil
	}
	for _, kw := range []string{"properties", "required", "additionalProperties"} {
		if err := onlyFor(kw, "object"); err != nil {
			return nil, err
		}
	}
	if err := onlyFor("items", "array"); err != nil {
		return nil, err
	}
	switch t {
	case "object":
		return c.object(s, path, depth)
	case "array":
		n := c.newNode(kArray)
		if it, ok := s.Get("items"); ok {
			in, err := c.compile(it, path+"/items", depth+1)
			if err != nil {
				return nil, err
			}
			n.items = in
		} else {
			n.items = c.anyNode()
		}
		return n, nil
	case "string":
		return c.newNode(kString), nil
	case "number":
		return c.newNode(kNumber), nil
	case "integer":
		return c.newNode(kInteger), nil
	case "boolean":
		n := c.newNode(kLiteral)
		n.lits = [][]byte{[]byte("false"), []byte("true")}
		return n, nil
	case "null":
		n := c.newNode(kLiteral)
		n.lits = [][]byte{[]byte("null")}
		return n, nil
	}
	return nil, &SchemaError{Path: path, Keyword: "type", Msg: fmt.Sprintf("unknown type %q", clip(t))}
}

func (c *compiler) object(s *object, path string, depth int) (*node, error) {
	props, hasProps := s.Get("properties")
	if ap, ok := s.Get("additionalProperties"); ok {
		switch ap := ap.(type) {
		case bool:
		case *object:
			if len(ap.Keys) != 0 {
				return nil, &SchemaError{Path: path, Keyword: "additionalProperties", Msg: "only true or false is supported"}
			}
		default:
			return nil, &SchemaError{Path: path, Keyword: "additionalProperties", Msg: "must be a boolean or a schema"}
		}
	}
	required := map[string]bool{}
	if r, ok := s.Get("required"); ok {
		arr, ok := r.([]any)
		if !ok {
			return nil, &SchemaError{Path: path, Keyword: "required", Msg: "must be an array of strings"}
		}
		for _, x := range arr {
			name, ok := x.(string)
			if !ok {
				return nil, &SchemaError{Path: path, Keyword: "required", Msg: "must be an array of strings"}
			}
			required[name] = true
		}
	}
	if !hasProps {
		if len(required) > 0 {
			return nil, &SchemaError{Path: path, Keyword: "required", Msg: "names properties the schema does not define"}
		}
		return c.newNode(kMap), nil
	}
	po, ok := props.(*object)
	if !ok {
		return nil, &SchemaError{Path: path, Keyword: "properties", Msg: "must be an object"}
	}
	n := c.newNode(kObject)
	for i, name := range po.Keys {
		vn, err := c.compile(po.Vals[i], path+"/properties/"+escapePointer(name), depth+1)
		if err != nil {
			return nil, err
		}
		n.props = append(n.props, prop{key: append(encodeString(name), ':'), value: vn, required: required[name]})
		delete(required, name)
	}
	for name := range required {
		return nil, &SchemaError{Path: path, Keyword: "required", Msg: fmt.Sprintf("names %q, which properties does not define", clip(name))}
	}
	return n, nil
}

// literals compiles enum or const values, keeping those of the schema's
// type when it has one.
func (c *compiler) literals(s *object, vals []any, path, kw string) (*node, error) {
	for _, k := range s.Keys {
		if k != kw && k != "type" && !annotations[k] {
			return nil, &SchemaError{Path: path, Keyword: k, Msg: "not supported next to " + kw}
		}
	}
	var types []string
	if t, ok := s.Get("type"); ok {
		switch t := t.(type) {
		case string:
			types = []string{t}
		case []any:
			for _, x := range t {
				if name, ok := x.(string); ok {
					types = append(types, name)
				}
			}
		}
	}
	n := c.newNode(kLiteral)
	seen := map[string]bool{}
	for _, v := range vals {
		if types != nil && !hasType(v, types) {
			continue
		}
		var b bytes.Buffer
		encodeValue(&b, v)
		if !seen[b.String()] {
			seen[b.String()] = true
			n.lits = append(n.lits, b.Bytes())
		}
	}
	if len(n.lits) == 0 {
		return nil, &SchemaError{Path: path, Keyword: kw, Msg: "allows no value"}
	}
	sortLits(n)
	return n, nil
}

func sortLits(n *node) {
	sort.Slice(n.lits, func(i, j int) bool { return bytes.Compare(n.lits[i], n.lits[j]) < 0 })
}

// hasType reports whether v is an instance of one of types.
func hasType(v any, types []string) bool {
	for _, t := range types {
		switch v := v.(type) {
		case nil:
			if t == "null" {
				return true
			}
		case bool:
			if t == "boolean" {
				return true
			}
		case string:
			if t == "string" {
				return true
			}
		case json.Number:
			if t == "number" {
				return true
			}
			if f, err := v.Float64(); t == "integer" && err == nil && f == math.Trunc(f) {
				return true
			}
		case []any:
			if t == "array" {
				return true
			}
		case *object:
			if t == "object" {
				return true
			}
		}
	}
	return false
}

// refNode returns the node of a $ref to the root ("#") or to a schema in
// $defs (or definitions); recursion is allowed.
func (c *compiler) refNode(ref string) *node {
	if n, ok := c.refs[ref]; ok {
		return n
	}
	n := c.newNode(kAnyOf) // filled in by resolve
	c.refs[ref] = n
	return n
}

// resolve compiles the targets of the $refs met, including those the
// targets themselves use.
func (c *compiler) resolve() error {
	done := map[string]bool{}
	for {
		var todo []string
		for r := range c.refs {
			if !done[r] {
				todo = append(todo, r)
			}
		}
		if len(todo) == 0 {
			return nil
		}
		sort.Strings(todo)
		for _, r := range todo {
			done[r] = true
			target, path, err := c.lookup(r)
			if err != nil {
				return err
			}
			tn, err := c.compile(target, path, 1)
			if err != nil {
				return err
			}
			c.refs[r].alts = []*node{tn}
		}
	}
}

func (c *compiler) lookup(ref string) (any, string, error) {
	if ref == "#" {
		return c.root, "", nil
	}
	for _, defs := range []string{"#/$defs/", "#/definitions/"} {
		name, ok := strings.CutPrefix(ref, defs)
		if !ok || strings.Contains(name, "/") {
			continue
		}
		name = strings.ReplaceAll(strings.ReplaceAll(name, "~1", "/"), "~0", "~")
		root, _ := c.root.(*object)
		if root == nil {
			break
		}
		d, ok := root.Get(defs[2 : len(defs)-1])
		if !ok {
			break
		}
		do, ok := d.(*object)
		if !ok {
			break
		}
		if t, ok := do.Get(name); ok {
			return t, defs[1:] + escapePointer(name), nil
		}
	}
	return nil, "", &SchemaError{Keyword: "$ref", Msg: fmt.Sprintf("%q does not name a schema in #/$defs", clip(ref))}
}

func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// object is a JSON object with its keys in document order.
type object = jsonorder.Object

// encodeValue writes v as compact JSON, object keys in document order.
func encodeValue(b *bytes.Buffer, v any) {
	switch v := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		b.WriteString(strconv.FormatBool(v))
	case json.Number:
		b.WriteString(v.String())
	case string:
		b.Write(encodeString(v))
	case []any:
		b.WriteByte('[')
		for i, x := range v {
			if i > 0 {
				b.WriteByte(',')
			}
			encodeValue(b, x)
		}
		b.WriteByte(']')
	case *object:
		b.WriteByte('{')
		for i, k := range v.Keys {
			if i > 0 {
				b.WriteByte(',')
			}
			b.Write(encodeString(k))
			b.WriteByte(':')
			encodeValue(b, v.Vals[i])
		}
		b.WriteByte('}')
	}
}

// encodeString is s as a JSON string, without HTML escaping.
func encodeString(s string) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}
