// Package reason names why a diskimporter command failed: one typed,
// machine-readable Reason per class of failure, the sentinel errors that
// every stage wraps its failures with, and Of, the one classifier that
// maps an error to its Reason. It imports no other package of the
// project, so that every stage (fetch, blob, export, the importer) can
// wrap its errors with the same sentinels.
package reason

import (
	"context"
	"errors"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Reason is a short machine-readable reason a controller reads from the
// result, the termination message and the metrics.
type Reason string

// The reasons, one per class of failure.
const (
	Cancelled           Reason = "Cancelled"
	Timeout             Reason = "Timeout"
	InvalidOptions      Reason = "InvalidOptions"
	InvalidDestination  Reason = "InvalidDestination"
	SourceNotFound      Reason = "SourceNotFound"
	SourceUnauthorized  Reason = "SourceUnauthorized"
	SourceChanged       Reason = "SourceChanged"
	SourceTruncated     Reason = "SourceTruncated"
	SourceUnavailable   Reason = "SourceUnavailable"
	UnsupportedFormat   Reason = "UnsupportedFormat"
	TooLarge            Reason = "TooLarge"
	CorruptSource       Reason = "CorruptSource"
	BackingFileRejected Reason = "BackingFileRejected"
	FormatMismatch      Reason = "FormatMismatch"
	ChecksumMismatch    Reason = "ChecksumMismatch"
	ScratchSpace        Reason = "ScratchSpace"
	OutputError         Reason = "OutputError"
	Unauthorized        Reason = "Unauthorized"
	RegistryTLS         Reason = "RegistryTLS"
	RegistryError       Reason = "RegistryError"
	ContainerdError     Reason = "ContainerdError"
	// Failed is any other failure.
	Failed Reason = "Failed"
)

// Errors that stages wrap their failures with, one per Reason. Test them
// with errors.Is.
var (
	// ErrInvalidOptions: an option is missing, malformed or conflicts with
	// another.
	ErrInvalidOptions = errors.New("invalid options")
	// ErrInvalidDestination: the destination is not a REGISTRY/REPO:TAG
	// reference.
	ErrInvalidDestination = errors.New("invalid destination")
	// ErrSourceNotFound: the source does not exist (HTTP 404 or 410, no
	// such file, no such image or platform).
	ErrSourceNotFound = errors.New("source not found")
	// ErrSourceUnauthorized: the source refused access (HTTP 401 or 403,
	// file permissions).
	ErrSourceUnauthorized = errors.New("source refused access")
	// ErrSourceChanged: the source answered with another length or
	// validator when it was read again.
	ErrSourceChanged = errors.New("source changed while it was read")
	// ErrSourceTruncated: the source ended before, or went on past, the
	// size it announced.
	ErrSourceTruncated = errors.New("source size differs from the size it announced")
	// ErrSourceUnavailable: the source could not be reached, stalled past
	// every retry, or answered with an unexpected status.
	ErrSourceUnavailable = errors.New("source unavailable")
	// ErrUnsupportedFormat: the source holds a format this version does
	// not import (an empty file among them).
	ErrUnsupportedFormat = errors.New("unsupported format")
	// ErrTooLarge: the disk is larger than the limits allow.
	ErrTooLarge = errors.New("disk too large")
	// ErrCorruptSource: the source's bytes are not what they claim to be:
	// a corrupt compressed stream or disk header, a layer whose digest,
	// size or tar headers are wrong.
	ErrCorruptSource = errors.New("corrupt source")
	// ErrBackingFile: a qcow2 image names a backing file or an external
	// data file, which would make its consumer read files of the host.
	ErrBackingFile = errors.New("disk image refers to another file")
	// ErrFormatMismatch: the disk is not in the format asked for.
	ErrFormatMismatch = errors.New("disk format differs from the expected one")
	// ErrChecksumMismatch: the source's checksum is not the expected one.
	ErrChecksumMismatch = errors.New("source checksum mismatch")
	// ErrScratchSpace: the scratch directory has no room for the spool.
	ErrScratchSpace = errors.New("not enough scratch space")
	// ErrOutput: an export's output could not be created, locked or
	// written.
	ErrOutput = errors.New("cannot write the output")
	// ErrRegistryUnauthorized: the registry refused the credentials (HTTP
	// 401 or 403).
	ErrRegistryUnauthorized = errors.New("registry refused the credentials")
	// ErrRegistryTLS: the TLS handshake with the registry failed.
	ErrRegistryTLS = errors.New("registry TLS handshake failed")
	// ErrRegistry: a registry request failed for another reason than
	// credentials or TLS.
	ErrRegistry = errors.New("registry request failed")
	// ErrContainerd: the node's containerd could not be reached (no
	// socket, a refused connection, no permission) or refused a request
	// (a missing snapshotter, a failed unpack).
	ErrContainerd = errors.New("containerd request failed")
)

// table maps each sentinel to its Reason, first match wins: a cancelled
// command is reported as such whatever stage noticed it.
var table = []struct {
	err    error
	reason Reason
}{
	{context.Canceled, Cancelled},
	{context.DeadlineExceeded, Timeout},
	{ErrInvalidOptions, InvalidOptions},
	{ErrInvalidDestination, InvalidDestination},
	{ErrSourceNotFound, SourceNotFound},
	{ErrSourceUnauthorized, SourceUnauthorized},
	{ErrSourceChanged, SourceChanged},
	{ErrSourceTruncated, SourceTruncated},
	{ErrCorruptSource, CorruptSource},
	{ErrSourceUnavailable, SourceUnavailable},
	{ErrUnsupportedFormat, UnsupportedFormat},
	{ErrTooLarge, TooLarge},
	{ErrBackingFile, BackingFileRejected},
	{ErrFormatMismatch, FormatMismatch},
	{ErrChecksumMismatch, ChecksumMismatch},
	{ErrScratchSpace, ScratchSpace},
	{ErrOutput, OutputError},
	{ErrRegistryUnauthorized, Unauthorized},
	{ErrRegistryTLS, RegistryTLS},
	{ErrRegistry, RegistryError},
	{ErrContainerd, ContainerdError},
}

// Of returns the Reason of err: that of the first sentinel above it
// wraps, RegistryError for another go-containerregistry transport error,
// Failed for anything else. Of(nil) is "".
func Of(err error) Reason {
	if err == nil {
		return ""
	}
	for _, r := range table {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		return RegistryError
	}
	return Failed
}
