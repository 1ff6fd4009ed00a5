package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// decodeJSON reads exactly one JSON object from r's body into v, rejecting
// unknown fields and trailing data. The error says what is wrong and where.
func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return describeDecodeError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return invalid("body: unexpected data after the JSON object")
	}
	return nil
}

func describeDecodeError(err error) error {
	var tooBig *http.MaxBytesError
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &tooBig):
		return apiError{http.StatusRequestEntityTooLarge, codeInvalidRequest,
			fmt.Sprintf("body: larger than the limit of %d bytes", tooBig.Limit), false}
	case errors.Is(err, io.EOF):
		return invalid("body: empty; expected a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return invalid("body: truncated JSON")
	case errors.As(err, &syntax):
		return invalid(fmt.Sprintf("body: malformed JSON at byte %d: %v", syntax.Offset, err))
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "body"
		}
		return invalid(fmt.Sprintf("%s: expected %s, got JSON %s", field, typ.Type, typ.Value))
	}
	// Unknown fields: encoding/json reports `json: unknown field "x"`.
	return invalid("body: " + err.Error())
}
