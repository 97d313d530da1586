package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/diskimporter/diskimporter/e2e/registry"
)

// The other tools a disk can be pushed with, built with go install on
// first use and cached next to the registry binary.
const (
	craneModule  = "github.com/google/go-containerregistry/cmd/crane"
	craneVersion = "v0.22.1"
	orasModule   = "oras.land/oras/cmd/oras"
	orasVersion  = "v1.3.6"

	// orasMediaType is the media type oras gives the disk: it pushes the
	// file's bytes as they are, not a tar.
	orasMediaType = "application/vnd.diskimporter.disk.v1.raw"
)

// craneClient pushes the disk with crane append: a tar of disk/disk.img
// (the layer diskimporter makes, written before the row, untimed) appended
// to an empty base. crane reads only a local file, and for a regular file
// gzips the tar twice: once for the layer's digest, once for the upload.
// Credentials come from a Docker config, the CA from SSL_CERT_FILE.
func (s *setup) craneClient(ctx context.Context, repo string) (*client, error) {
	bin, err := registry.Tool(ctx, "crane", craneModule, craneVersion)
	if err != nil {
		return nil, err
	}
	tarball, err := s.sourceFile("crane")
	if err != nil {
		return nil, err
	}
	return &client{
		argv: []string{bin, "append", "--oci-empty-base", "-f", tarball, "-t", repo},
		dir:  s.dir,
		env:  []string{"DOCKER_CONFIG=" + filepath.Dir(s.dockerConfig), "SSL_CERT_FILE=" + s.reg.CAFile},
		note: "crane append --oci-empty-base -f " + tarball + " -t REF; a local tar of disk/disk.img (made untimed), gzipped by crane twice",
	}, nil
}

// orasClient pushes the disk with oras push: the file itself as the one
// layer of an artifact. oras reads only a local file; credentials come
// from the same Docker config, the CA from --ca-file.
func (s *setup) orasClient(ctx context.Context, repo string) (*client, error) {
	bin, err := registry.Tool(ctx, "oras", orasModule, orasVersion)
	if err != nil {
		return nil, err
	}
	file := "disk.img:" + orasMediaType
	return &client{
		argv: []string{bin, "push", "--no-tty", "--ca-file", s.reg.CAFile, "--registry-config", s.dockerConfig, repo, file},
		dir:  s.dir,
		note: "oras push REF " + file + "; a local file",
	}, nil
}

// writeDockerConfig writes a Docker config.json holding the registry's
// credentials into its own directory under s.dir, and records its path.
func (s *setup) writeDockerConfig() error {
	path, err := s.dockerConfigFile("docker", s.reg)
	s.dockerConfig = path
	return err
}

// dockerConfigFile writes, into s.dir/name/config.json, a Docker config
// giving reg's credentials for reg, and returns its path.
func (s *setup) dockerConfigFile(name string, reg *registry.Registry) (string, error) {
	dir := filepath.Join(s.dir, name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", err
	}
	type auth struct {
		Auth string `json:"auth"`
	}
	auths := map[string]auth{
		reg.Addr: {base64.StdEncoding.EncodeToString([]byte(reg.Username + ":" + reg.Password))},
	}
	b, err := json.Marshal(struct {
		Auths map[string]auth `json:"auths"`
	}{auths})
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", fmt.Errorf("writing docker config: %w", err)
	}
	return path, nil
}
