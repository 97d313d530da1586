//go:build unix

package export

import (
	"os"
	"syscall"
)

// allocated is the space path takes on its file system.
func allocated(path string) (int64, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int64(st.Blocks) * 512, true
}
