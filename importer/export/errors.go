package export

import (
	"github.com/diskimporter/diskimporter/importer"
)

// sourceError classifies a failure to find or read the disk of the image
// display, as every source failure is (importer.ClassifySource).
func sourceError(display string, err error) error { return importer.ClassifySource(display, err) }
