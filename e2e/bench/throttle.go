package main

import (
	"fmt"
	"net"
	"sync"
	"time"
)

const (
	// throttleChunk is the most a throttled connection writes at once: a
	// larger write is paced in pieces of this size.
	throttleChunk = 64 << 10
	// throttleBurst is how many bytes a connection may send at once after
	// falling behind its rate, by a late wake-up or a pause between
	// requests: without it, every late wake-up would lower the rate.
	throttleBurst = 256 << 10
)

// throttledListener paces the writes of every connection it accepts to
// rate bytes per second, each connection on its own: a source whose
// bandwidth is per connection, as behind many CDNs and object stores. A
// paced connection cannot sendfile, which does not matter at such rates.
type throttledListener struct {
	net.Listener
	rate float64 // bytes per second, per connection
}

// Accept wraps the next connection in a throttledConn.
func (l throttledListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &throttledConn{Conn: c, rate: l.rate}, nil
}

// throttledConn is a connection whose writes keep to rate bytes per
// second, a token bucket of throttleBurst bytes: a piece is written no
// earlier than the time at which the bytes written before it would have
// been sent at that rate, and time a connection spends idle or blocked is
// saved up for at most throttleBurst bytes.
type throttledConn struct {
	net.Conn
	rate float64

	mu   sync.Mutex
	next time.Time // when the next piece may be written
}

// Write writes p in pieces of at most throttleChunk bytes, each at its
// time.
func (c *throttledConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	written := 0
	for len(p) > 0 {
		burst := time.Duration(throttleBurst / c.rate * float64(time.Second))
		if earliest := time.Now().Add(-burst); c.next.Before(earliest) {
			c.next = earliest
		}
		time.Sleep(time.Until(c.next))
		n, err := c.Conn.Write(p[:min(len(p), throttleChunk)])
		written += n
		c.next = c.next.Add(time.Duration(float64(n) / c.rate * float64(time.Second)))
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// rateString formats a rate in bytes per second as MB/s (10^6 bytes).
func rateString(rate float64) string { return fmt.Sprintf("%g MB/s", rate/1e6) }
