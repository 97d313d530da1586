package fetch_test

import (
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/importer/fetch"
)

// randomRounds is how many rounds TestRandomAnswers runs.
const randomRounds = 300

// TestRandomAnswers reads objects from a server whose every answer is
// drawn at random (issue 13, "Must show"): a correct 206, a capped shorter
// range, a body longer than its Content-Range, a Content-Length that
// differs from it, multipart/byteranges, a wrong start, a wrong total, 200
// instead of 206, a connection dropped in the middle of the body, 503, a
// changed ETag. In every round the read gives the exact bytes or fails; it
// never succeeds with other bytes. A round whose faults are all
// recoverable within Retries (capped ranges any number of times, at most
// one dropped connection and one 503) succeeds.
//
// Each round is a subtest named by its seed; to replay one, run
// FETCH_RANDOM_SEED=N go test -run 'TestRandomAnswers/seed=N$'. A round
// draws each answer from the seed, the Range asked for and how many times
// it was asked, so a replay draws the same answers to the same requests.
func TestRandomAnswers(t *testing.T) {
	t.Parallel()
	base := uint64(time.Now().UnixNano())
	if v := os.Getenv("FETCH_RANDOM_SEED"); v != "" {
		var err error
		if base, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("FETCH_RANDOM_SEED=%q: %v", v, err)
		}
	}
	t.Logf("seeds %d to %d", base, base+randomRounds-1)
	for i := range uint64(randomRounds) {
		seed := base + i
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Parallel()
			randomRound(t, seed)
		})
	}
}

// hostileAnswers are what a round that is not recoverable draws from; OK
// twice, so that some such rounds get through.
var hostileAnswers = []answer{answerOK, answerOK, answerCapped, answerLongCL, answerLongChunked, answerShortCL,
	answerMultipart, answerWrongStart, answerWrongTotal, answerEndPast, answer200, answerDrop, answer503,
	answerChanged, answerChangedIgnored}

func randomRound(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0))
	size := 1 + rng.IntN(320<<10)
	mode := readModes[rng.IntN(len(readModes))]
	recoverable := rng.IntN(2) == 0
	retries := 2 + rng.IntN(2)
	var drops, fails atomic.Int32 // the one drop and the one 503 a recoverable round may have
	var mu sync.Mutex
	asked := map[string]uint64{}
	s := newRangeServer(size, func(n int, rangeHeader string) answer {
		mu.Lock()
		asked[rangeHeader]++
		r := rand.New(rand.NewPCG(seed, hash(rangeHeader)+asked[rangeHeader]))
		mu.Unlock()
		if !recoverable {
			return hostileAnswers[r.IntN(len(hostileAnswers))]
		}
		switch a := r.IntN(10); {
		case a < 5:
			return answerOK
		case a < 8:
			return answerCapped
		case a == 8 && drops.Add(1) == 1:
			return answerDrop
		case a == 9 && fails.Add(1) == 1:
			return answer503
		}
		return answerOK
	})
	ts := httptest.NewServer(s)
	defer ts.Close()
	got, err := readWith(t, ts.URL, mode, fetch.Options{ChunkSize: chunk, Retries: retries,
		StallTimeout: 10 * time.Second, RetryWait: time.Millisecond})
	s.mu.Lock()
	seen := s.seen
	s.mu.Unlock()
	desc := fmt.Sprintf("seed %d: %d bytes, %s, recoverable %v, retries %d; answers %q", seed, size, mode.name, recoverable, retries, seen)
	switch {
	case err == nil && string(got) != string(s.data):
		t.Fatalf("read %d bytes and no error, but not the bytes served: %s", len(got), desc)
	case err != nil && recoverable:
		t.Fatalf("read failed: %v; %s", err, desc)
	}
}

// hash is FNV-1a of s.
func hash(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := range len(s) {
		h = (h ^ uint64(s[i])) * 1099511628211
	}
	return h
}
