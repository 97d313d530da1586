//go:build !linux

package registry

import "syscall"

// sysProcAttr puts the registry in its own process group so Stop can
// signal it and any children. Outside Linux there is no parent-death
// signal, so a crashed test process can leave the registry running.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
