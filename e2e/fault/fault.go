// Package fault makes request bodies that end part-way, as a connection
// the network cuts, for the e2e tests and the benchmark's fault proxy.
package fault

import (
	"errors"
	"io"
	"sync/atomic"
)

// ErrCut is the failure a Body ends with.
var ErrCut = errors.New("connection cut on purpose")

// Body passes on Left bytes of RC (all of them when Left < 0), adding each
// to Count, then fails with ErrCut: at once, or, when Reached is set,
// after a send on Reached that does not wait and after reading and
// dropping the client's bytes until the client goes away (a server
// notices a client gone only through a body it reads).
type Body struct {
	RC      io.ReadCloser
	Left    int64
	Reached chan<- struct{}
	Count   *atomic.Int64
}

func (b *Body) Read(p []byte) (int, error) {
	if b.Left == 0 {
		if b.Reached != nil {
			select {
			case b.Reached <- struct{}{}:
			default:
			}
			for {
				if _, err := b.RC.Read(p); err != nil {
					return 0, ErrCut
				}
			}
		}
		return 0, ErrCut
	}
	if b.Left > 0 && int64(len(p)) > b.Left {
		p = p[:b.Left]
	}
	n, err := b.RC.Read(p)
	if b.Left > 0 {
		b.Left -= int64(n)
	}
	b.Count.Add(int64(n))
	return n, err
}

// Close closes RC.
func (b *Body) Close() error { return b.RC.Close() }
