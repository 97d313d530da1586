package qcow2

// BackingFile reports whether the qcow2 header in head names a backing
// file (a non-zero backing_file_offset or backing_file_size), and the name
// when it lies within head, cut to 256 bytes as in Inspect's errors; the
// name is empty when it lies past head. It is for a caller that reports
// an image Inspect refused with ErrBackingFile.
//
// The name is the image's own bytes, unchecked: quote it (%q) before
// showing it. BackingFile never fails: a head that is not a qcow2 header,
// or is truncated before its backing file fields, names none.
func BackingFile(head []byte) (name string, named bool) {
	h, err := parseHeader(head)
	if err != nil || h.backingFileOffset == 0 && h.backingFileSize == 0 {
		return "", false
	}
	if h.backingFileOffset != 0 && h.backingFileOffset < uint64(len(head)) && h.backingFileSize > 0 {
		b := head[h.backingFileOffset:]
		return string(b[:min(len(b), int(min(h.backingFileSize, maxBackingNameShown)))]), true
	}
	return "", true
}
