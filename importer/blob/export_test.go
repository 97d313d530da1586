package blob

import (
	"bytes"
	"io"

	"github.com/diskimporter/diskimporter/importer/detect"
)

// LocateInBlob finds the disk in blob, an uncompressed layer, as Open
// does, and returns its path, its size and a reader of its bytes as the
// ranged path reads them (the data at its offset, through the sparse map);
// found is false when the layer holds no disk.
func LocateInBlob(blob []byte) (path string, size int64, r io.Reader, found bool, err error) {
	e, err := locate(bytes.NewReader(blob), detect.None)
	if err != nil || e == nil {
		return "", 0, nil, false, err
	}
	if e.offset > int64(len(blob)) {
		return "", 0, nil, false, io.ErrUnexpectedEOF
	}
	data := io.Reader(bytes.NewReader(blob[e.offset:]))
	if e.sparse != nil {
		return e.path, e.size, &sparseReader{m: e.sparse, r: data}, true, nil
	}
	return e.path, e.size, io.LimitReader(data, e.size), true, nil
}
