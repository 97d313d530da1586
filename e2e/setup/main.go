// Command setup builds, once, the real parts the end-to-end tests and the
// benchmark start and Go builds, and caches them in .cache/bin: the CNCF
// distribution registry, the MinIO S3 server behind it, and the
// kube-apiserver e2e/kube runs against (about 15 minutes on 2 cores the
// first time, seconds after that).
//
//	go run ./e2e/setup
//
// A test that finds one missing builds the registry or MinIO itself; the
// API server tests skip and say so.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/diskimporter/diskimporter/e2e/kube"
	"github.com/diskimporter/diskimporter/e2e/registry"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, build := range []func() (string, error){
		func() (string, error) { return registry.Binary(ctx) },
		func() (string, error) {
			return registry.Tool(ctx, "minio", registry.MinIOModule, registry.MinIOVersion)
		},
		func() (string, error) { return kube.Build(ctx, os.Stderr) },
	} {
		bin, err := build()
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(bin)
	}
}
