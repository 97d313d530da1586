package podstatus

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

type failure struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

func readFailure(t *testing.T, path string) (failure, []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > MaxTerminationMessageBytes {
		t.Fatalf("termination message is %d bytes, over %d", len(b), MaxTerminationMessageBytes)
	}
	var f failure
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("termination message is not a failure object: %v\n%s", err, b)
	}
	return f, b
}

func TestWriteTerminationMessageSmall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "termination-log")
	want := failure{Reason: "SourceNotFound", Message: "GET https://cloud.example/fedora.raw: 404"}
	if err := WriteTerminationMessage(path, want); err != nil {
		t.Fatal(err)
	}
	got, raw := readFailure(t, path)
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if exp, _ := json.Marshal(want); string(raw) != string(exp) {
		t.Errorf("a message that fits is not written as is:\n got %s\nwant %s", raw, exp)
	}
}

func TestWriteTerminationMessageTruncated(t *testing.T) {
	for _, tc := range []struct{ name, unit string }{
		{"ascii", "x"},
		{"escaped", `<"&>` + "\n"},  // each byte grows on encoding
		{"multibyte", "é€😀"},        // cuts must fall on rune boundaries
		{"mixed", "abc\u00e9<\x01"}, // control character escaped as \u0001
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "termination-log")
			msg := strings.Repeat(tc.unit, 10<<10/len(tc.unit)+1) // 10 KiB or more
			if err := WriteTerminationMessage(path, failure{Reason: "SourceUnavailable", Message: msg}); err != nil {
				t.Fatal(err)
			}
			got, raw := readFailure(t, path)
			if got.Reason != "SourceUnavailable" {
				t.Errorf("reason %q, want SourceUnavailable", got.Reason)
			}
			if !utf8.ValidString(got.Message) || strings.ContainsRune(got.Message, utf8.RuneError) {
				t.Errorf("message cut inside a rune")
			}
			prefix, ok := strings.CutSuffix(got.Message, truncatedMark)
			if !ok || !strings.HasPrefix(msg, prefix) {
				t.Fatalf("message is not a prefix of the original marked %q: %.80q…", truncatedMark, got.Message)
			}
			// As long as possible: one more rune of the message would not fit.
			if len(raw) < MaxTerminationMessageBytes-32 {
				t.Errorf("message shortened to %d bytes, well under %d", len(raw), MaxTerminationMessageBytes)
			}
			_, size := utf8.DecodeRuneInString(msg[len(prefix):])
			longer, _ := json.Marshal(map[string]string{"reason": got.Reason, "message": msg[:len(prefix)+size] + truncatedMark})
			if len(longer) <= MaxTerminationMessageBytes {
				t.Errorf("one more rune would still fit (%d bytes)", len(longer))
			}
		})
	}
}

func TestWriteTerminationMessageCannotShorten(t *testing.T) {
	dir := t.TempDir()
	for name, v := range map[string]any{
		"no message":        map[string]string{"reason": strings.Repeat("r", 5000)},
		"message not text":  map[string]any{"message": strings.Split(strings.Repeat("a,", 3000), ",")},
		"rest too long":     failure{Reason: strings.Repeat("r", 5000), Message: "m"},
		"not an object":     strings.Repeat("s", 5000),
		"unmarshalable val": func() {},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		err := WriteTerminationMessage(path, v)
		if err == nil {
			t.Errorf("%s: no error", name)
		} else if name != "unmarshalable val" && !errors.Is(err, ErrTerminationMessageTooLong) {
			t.Errorf("%s: error %v, want ErrTerminationMessageTooLong", name, err)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: something was written (%v)", name, err)
		}
	}
}

func TestWriteTerminationMessageDefaultPath(t *testing.T) {
	if DefaultTerminationMessagePath != "/dev/termination-log" {
		t.Fatalf("DefaultTerminationMessagePath = %q", DefaultTerminationMessagePath)
	}
	if err := WriteTerminationMessage(filepath.Join(t.TempDir(), "missing", "log"), failure{}); err == nil {
		t.Error("writing into a missing directory: no error")
	}
}
