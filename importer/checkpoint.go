package importer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/diskimporter/diskimporter/importer/atomicfile"
	"github.com/diskimporter/diskimporter/importer/upload"
	"github.com/diskimporter/diskimporter/layer"
)

// checkpointVersion is the version of the checkpoint file's format.
const checkpointVersion = 1

// maxCheckpointFile bounds what is read of a checkpoint file.
const maxCheckpointFile = 64 << 10

// checkpointRecord is what a checkpoint file (Options.CheckpointFile)
// holds: what a new process needs to go on with the layer upload a killed
// one started, and what tells whether it is the same upload. It holds no
// credential: the upload location is written only when it carries none
// (upload.Checkpointable).
type checkpointRecord struct {
	Version int `json:"version"`
	// Repository is the destination's registry/repository.
	Repository string `json:"repository"`
	// Location is the upload's location in the registry.
	Location string `json:"location"`
	// Source and Validator name the source and the version of it that
	// was read.
	Source    string `json:"source"`
	Validator string `json:"validator"`
	// Layer is every setting that makes the layer's bytes.
	Layer layerIdentity `json:"layer"`
	// Checkpoints are the layer's last hash checkpoints.
	Checkpoints []layer.Checkpoint `json:"checkpoints"`
}

// layerIdentity is what makes the layer's bytes and its checkpoints.
type layerIdentity struct {
	DiskName  string `json:"disk_name"`
	DiskSize  int64  `json:"disk_size"`
	Size      int64  `json:"size"`
	HashDisk  bool   `json:"hash_disk"`
	Format    string `json:"format"`
	Converted bool   `json:"converted"`
}

// errCheckpointMismatch: a checkpoint file is of another upload.
var errCheckpointMismatch = errors.New("the checkpoint is of another upload")

// checkpointFile reads and writes a checkpoint file. Its methods are safe
// for concurrent use: the layer's producer adds checkpoints while the
// upload moves its location.
type checkpointFile struct {
	path string
	mu   sync.Mutex
	rec  checkpointRecord
	// off: no file is written (the upload's location holds a credential,
	// or the source cannot be told apart from another version).
	off bool
}

// load reads the checkpoint file and returns its record when it is of
// want (all but the location and checkpoints) and names an upload on
// registry, nil when there is none, or an error wrapping
// errCheckpointMismatch that says what differs. The file may have been
// planted: its location is held to the rules of one this process would
// write (upload.Checkpointable), so that the disk never goes to another
// host.
func (c *checkpointFile) load(want checkpointRecord, registry string) (*checkpointRecord, error) {
	f, err := os.Open(c.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCheckpointFile+1))
	if err != nil {
		return nil, err
	}
	var rec checkpointRecord
	if len(b) > maxCheckpointFile || json.Unmarshal(b, &rec) != nil {
		return nil, fmt.Errorf("%w: %s is damaged", errCheckpointMismatch, c.path)
	}
	switch {
	case rec.Version != checkpointVersion:
		return nil, fmt.Errorf("%w: version %d, want %d", errCheckpointMismatch, rec.Version, checkpointVersion)
	case rec.Repository != want.Repository:
		return nil, fmt.Errorf("%w: of repository %s, this is %s", errCheckpointMismatch, rec.Repository, want.Repository)
	case rec.Source != want.Source || rec.Validator != want.Validator:
		return nil, fmt.Errorf("%w: the source was %s (%s), it is %s (%s)", errCheckpointMismatch, rec.Source, rec.Validator, want.Source, want.Validator)
	case rec.Layer != want.Layer:
		return nil, fmt.Errorf("%w: the layer was %+v, it is %+v", errCheckpointMismatch, rec.Layer, want.Layer)
	case rec.Location == "":
		return nil, fmt.Errorf("%w: it names no upload", errCheckpointMismatch)
	}
	if err := upload.Checkpointable(rec.Location, registry); err != nil {
		return nil, fmt.Errorf("%w: %w", errCheckpointMismatch, err)
	}
	return &rec, nil
}

// set makes rec the file's record and writes it.
func (c *checkpointFile) set(rec checkpointRecord) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rec = rec
	return c.write()
}

// moved records the upload's new location.
func (c *checkpointFile) moved(location string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rec.Location = location
	return c.write()
}

// add records the layer's last checkpoints.
func (c *checkpointFile) add(kept []layer.Checkpoint) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rec.Checkpoints = kept
	return c.write()
}

// write replaces the file with the record, whole.
func (c *checkpointFile) write() error {
	if c.off {
		return nil
	}
	b, err := json.Marshal(c.rec)
	if err != nil {
		return err
	}
	return atomicfile.Write(c.path, append(b, '\n'))
}

// remove deletes the file, once the upload it describes is committed.
func (c *checkpointFile) remove() error { return atomicfile.Remove(c.path) }
