package registry

import "syscall"

// sysProcAttr puts the registry in its own process group (so Stop can
// signal it and any children) and asks the kernel to SIGKILL it when the
// thread that started it dies.
//
// Pdeathsig is tied to the creating OS thread, not the whole process. Go
// does not retire ordinary runtime threads, so in practice this fires when
// the test or benchmark process exits (including when it is killed).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
