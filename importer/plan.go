package importer

import (
	"fmt"

	"github.com/diskimporter/diskimporter/importer/detect"
)

// readPlan is how an import reads a disk, decided from what is known
// before its bytes. openDisk acts on it and Inspect reports it, so that
// what inspect says is what an import does.
type readPlan struct {
	// sizeFrom is how the disk's size is known up front (SizeFromLength,
	// SizeFromXZIndex, SizeFromZstdHeader), or "" when it is counted while
	// spooling.
	sizeFrom string
	// convert is how --convert raw reads a qcow2: ConvertRandomAccess,
	// ConvertSpool, or "" when nothing is converted.
	convert string
	// spool: the disk is written to the scratch directory first.
	spool bool
}

// planInput is what planRead decides from.
type planInput struct {
	display     string
	compression detect.Compression
	format      detect.Format
	// size is the disk's size and sizeFrom how it is known (knownSize);
	// sizeFrom is "" when it is not.
	size     int64
	sizeFrom string
	maxSize  int64
	// convertRaw: a qcow2 is to be turned into its raw disk.
	convertRaw bool
	// randomAccess: the source can be read at random (a file, or Range
	// requests); inOrder: something (an expected checksum) needs the
	// download read whole, in order.
	randomAccess, inOrder bool
}

// planRead decides how an import reads the disk in, or refuses it: an
// empty disk (wrapping ErrUnsupportedFormat) or one over maxSize (wrapping
// ErrTooLarge), when the size is known up front.
func planRead(in planInput) (readPlan, error) {
	p := readPlan{sizeFrom: in.sizeFrom}
	if in.sizeFrom != "" && in.size == 0 {
		return p, emptyError(in.display, " by its "+in.sizeFrom)
	}
	if in.sizeFrom != "" && in.size > in.maxSize {
		return p, fmt.Errorf("%w: %s holds %d bytes, more than MaxSize %d", ErrTooLarge, in.display, in.size, in.maxSize)
	}
	if in.convertRaw && in.format == detect.QCOW2 {
		// A qcow2 is converted by reading it at random: through Range
		// requests of an uncompressed source when nothing needs the
		// download read in order, otherwise from a spool.
		p.convert = ConvertSpool
		if in.compression == detect.None && in.randomAccess && !in.inOrder {
			p.convert = ConvertRandomAccess
		}
	}
	p.spool = p.convert == ConvertSpool || in.sizeFrom == ""
	return p, nil
}
