package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// credentialsFile is the name of the file in the config dir that holds the
// logged-in device session.
const credentialsFile = "credentials.json"

// credentials is one logged-in device session, stored with mode 0600.
type credentials struct {
	Server     string    `json:"server"`
	Username   string    `json:"username"`
	DeviceID   string    `json:"device_id"`
	DeviceName string    `json:"device_name,omitempty"`
	Token      string    `json:"token"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
}

// loadCredentials reads the config dir's credentials; it returns nil, nil
// when there are none.
func loadCredentials(dir string) (*credentials, error) {
	b, err := os.ReadFile(filepath.Join(dir, credentialsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var c credentials
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, credentialsFile), err)
	}
	return &c, nil
}

// saveCredentials writes c atomically (temporary file and rename), creating
// the config dir with mode 0700 and the file with mode 0600.
func saveCredentials(dir string, c *credentials) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".credentials-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, credentialsFile))
}

// removeCredentials deletes the stored session; a missing file is fine.
func removeCredentials(dir string) error {
	err := os.Remove(filepath.Join(dir, credentialsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
