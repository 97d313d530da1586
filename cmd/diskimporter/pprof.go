package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/diskimporter/diskimporter/importer/reason"
)

// servePprof serves pprof on --pprof-address, when set, and returns a
// function that stops it.
func (s *session) servePprof() (stop func(), err error) {
	if s.common.pprofAddress == "" {
		return func() {}, nil
	}
	stop, _, err = servePprof(s.common.pprofAddress, s.logger)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", reason.ErrInvalidOptions, err)
	}
	return stop, nil
}

// servePprof serves net/http/pprof on addr with a mux of its own, never
// the default mux, and returns a function that stops it and the address it
// listens on. The command line
// (/debug/pprof/cmdline) is not served: it holds passwords and header
// values given as flags.
func servePprof(addr string, logger *slog.Logger) (stop func(), bound string, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("--pprof-address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("pprof server stopped", "error", err)
		}
	}()
	logger.Info("serving pprof", "address", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, ln.Addr().String(), nil
}
