package main

import (
	"os"
	"syscall"
)

// fdatasync makes f's written data durable (fdatasync(2)), as the
// embedded store's write-ahead log does on every commit.
func fdatasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }
