package main

import (
	"io"
	"net"
	"sync"
)

// pacer stands where the throttled S3 registry's presigned URLs point
// (its redirectendpoint) and forwards each connection to the store as it
// is, TLS and all: the store sees the Host the client sends, which is the
// one the URL was signed for, and this process does no TLS. What the
// store sends back reaches the client paced to rate bytes per second per
// connection (throttledListener), as a store whose bandwidth is per
// connection.
type pacer struct {
	ln  net.Listener
	url string // https://ln's address: the registry's redirectendpoint
}

// newPacer listens on loopback for a pacer of each connection to rate,
// closed by s's cleanup. Nothing is accepted before serve.
func (s *setup) newPacer(rate float64) (*pacer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.stops = append(s.stops, func() { ln.Close() })
	return &pacer{ln: throttledListener{Listener: ln, rate: rate}, url: "https://" + ln.Addr().String()}, nil
}

// serve forwards every connection to store (host:port) until the
// listener is closed.
func (p *pacer) serve(store string) {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go forward(c, store)
	}
}

// forward copies between c and a new connection to store, both ways,
// until either side is done.
func forward(c net.Conn, store string) {
	defer c.Close()
	up, err := net.Dial("tcp", store)
	if err != nil {
		return
	}
	defer up.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(up, c)
		up.(*net.TCPConn).CloseWrite()
	}()
	io.CopyBuffer(c, up, make([]byte, throttleChunk))
	c.Close()
	wg.Wait()
}
