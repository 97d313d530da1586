package importer

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/diskimporter/diskimporter/importer/redact"
)

// CheckImageRead checks and completes the options that the commands
// reading an image out of a registry (export, warm) share, with one rule
// for all of them: r is validated, and read with the defaults
// defConnections and defChunkSize (ReadOptions.Validate); image,
// [docker://]REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:…, must be given
// and parse (as a plain http one when r.PlainHTTP), field naming it in
// errors; *transport, when nil, becomes RegistryReadTransport(*r,
// read.Connections). It returns the reference and its display name,
// docker://REF. Errors wrap ErrInvalidOptions.
func CheckImageRead(image, field string, r *RegistryOptions, read *ReadOptions, defConnections int, defChunkSize int64, transport *http.RoundTripper) (name.Reference, string, error) {
	if image == "" {
		return nil, "", fmt.Errorf("%w: no %s given", ErrInvalidOptions, field)
	}
	if err := r.Validate(); err != nil {
		return nil, "", err
	}
	if err := read.Validate(defConnections, defChunkSize); err != nil {
		return nil, "", err
	}
	var nameOpts []name.Option
	if r.PlainHTTP {
		nameOpts = append(nameOpts, name.Insecure)
	}
	src := "docker://" + strings.TrimPrefix(image, "docker://")
	if err := CheckSource(src); err != nil {
		return nil, "", err
	}
	ref, err := name.ParseReference(strings.TrimPrefix(src, "docker://"), nameOpts...)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %s %s: want REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:…", ErrInvalidOptions, field, redact.URL(src))
	}
	if *transport == nil {
		t, err := RegistryReadTransport(*r, read.Connections)
		if err != nil {
			return nil, "", err
		}
		*transport = t
	}
	return ref, "docker://" + ref.String(), nil
}

// ParsePlatform parses the Platform option p, os/arch[/variant], or def
// when p is empty. One without an OS or an architecture is refused with
// an error wrapping ErrInvalidOptions.
func ParsePlatform(p, def string) (v1.Platform, error) {
	if p == "" {
		p = def
	}
	pl, err := v1.ParsePlatform(p)
	if err != nil || pl.OS == "" || pl.Architecture == "" {
		return v1.Platform{}, fmt.Errorf("%w: Platform %q: want os/arch[/variant], such as linux/arm64", ErrInvalidOptions, p)
	}
	return *pl, nil
}
