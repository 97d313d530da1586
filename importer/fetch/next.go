package fetch

import "io"

// Nexter is a reader that can hand out its bytes without copying them.
// Next returns the next bytes, at least one and at most n (n ≥ 1), or an
// error; bytes that come with an error come before it. The slice is the
// reader's: it holds those bytes until the next call of Next, Read or
// Close, and must not be written to.
type Nexter interface {
	io.Reader
	Next(n int) ([]byte, error)
}

// Borrow returns r as a Nexter: r itself when it is one, otherwise a
// Nexter that reads r into a buffer of its own, filling it as far as n
// before it returns, so that a slow source still gives large slices.
func Borrow(r io.Reader) Nexter {
	if nx, ok := r.(Nexter); ok {
		return nx
	}
	return &copying{r: r}
}

// copying is the Nexter of a plain reader.
type copying struct {
	r   io.Reader
	buf []byte
}

func (c *copying) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *copying) Next(n int) ([]byte, error) {
	if cap(c.buf) < n {
		c.buf = make([]byte, n)
	}
	b := c.buf[:n]
	k, empty := 0, 0
	for k < n {
		m, err := c.r.Read(b[k:])
		k += m
		if err != nil {
			return b[:k], err
		}
		if m > 0 {
			empty = 0
		} else if empty++; empty == maxEmptyReads {
			return b[:k], io.ErrNoProgress
		}
	}
	return b, nil
}

// maxEmptyReads is how many reads in a row may give nothing, and no
// error, before Next gives up (bufio's bound).
const maxEmptyReads = 100
