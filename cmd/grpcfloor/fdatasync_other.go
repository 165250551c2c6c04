//go:build !linux

package main

import "os"

// fdatasync makes f's written data durable (fsync where fdatasync(2) is
// not available).
func fdatasync(f *os.File) error { return f.Sync() }
