package podstatus

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"unicode/utf8"
)

const (
	// DefaultTerminationMessagePath is the container's
	// terminationMessagePath when the Pod spec leaves it unset.
	DefaultTerminationMessagePath = "/dev/termination-log"
	// MaxTerminationMessageBytes is the most the kubelet keeps of a
	// container's termination message.
	MaxTerminationMessageBytes = 4096
)

// truncatedMark ends a message shortened to fit the termination message.
const truncatedMark = "…[truncated]"

// ErrTerminationMessageTooLong is returned by WriteTerminationMessage for a
// value whose JSON is longer than MaxTerminationMessageBytes and cannot be
// shortened.
var ErrTerminationMessageTooLong = errors.New("termination message too long")

// WriteTerminationMessage writes v as JSON to path, the container's
// termination message file (DefaultTerminationMessagePath when path is
// empty), where the kubelet reads it into the container status once the
// container ends.
//
// The kubelet keeps MaxTerminationMessageBytes at most and would cut the
// JSON anywhere. When v's JSON is longer, the string field "message" of the
// object (a failure's {"reason","message"}) is shortened, on a UTF-8
// boundary and marked "…[truncated]", so that the whole stays valid JSON;
// the object's keys then come out sorted. When there is no such field, or
// the rest of the object alone is too long, nothing is written and the error
// wraps ErrTerminationMessageTooLong.
func WriteTerminationMessage(path string, v any) error {
	if path == "" {
		path = DefaultTerminationMessagePath
	}
	b, err := terminationMessage(v, MaxTerminationMessageBytes)
	if err != nil {
		return fmt.Errorf("termination message %s: %w", path, err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("termination message: %w", err)
	}
	return nil
}

// terminationMessage returns the JSON of v in limit bytes at most,
// shortening its "message" field if need be.
func terminationMessage(v any, limit int) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if len(b) <= limit {
		return b, nil
	}
	var obj map[string]json.RawMessage
	var msg string
	if json.Unmarshal(b, &obj) != nil || obj["message"] == nil || json.Unmarshal(obj["message"], &msg) != nil {
		return nil, fmt.Errorf("%w: %d bytes, over %d, and no string \"message\" field to shorten", ErrTerminationMessageTooLong, len(b), limit)
	}
	// with returns the object with the first n bytes of msg, backed off to
	// a rune boundary (msg is valid UTF-8: json.Unmarshal replaced any
	// invalid byte). Its length never decreases as n grows.
	with := func(n int) []byte {
		for n > 0 && n < len(msg) && !utf8.RuneStart(msg[n]) {
			n--
		}
		m, _ := json.Marshal(msg[:n] + truncatedMark)
		obj["message"] = m
		out, _ := json.Marshal(obj)
		return out
	}
	// The longest prefix that fits: lo always fits, hi never does.
	if len(with(0)) > limit {
		return nil, fmt.Errorf("%w: %d bytes without the message, over %d", ErrTerminationMessageTooLong, len(with(0)), limit)
	}
	lo, hi := 0, len(msg)
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		if len(with(mid)) <= limit {
			lo = mid
		} else {
			hi = mid
		}
	}
	return with(lo), nil
}
