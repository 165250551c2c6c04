package main

import (
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/chatd/chatd/server/app"
	"github.com/chatd/chatd/server/store/scylla"
)

// TestParseFlagsRejectsZeroLimits: 0 means "the default" inside
// app.Config, but on the command line (or in CHATD_*) it is refused.
func TestParseFlagsRejectsZeroLimits(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-streams-per-device", "0"}, "--max-streams-per-device must be at least 1"},
		{[]string{"--max-streams-per-device", "-3"}, "--max-streams-per-device must be at least 1"},
		{[]string{"--send-queue", "0"}, "--send-queue must be at least 16"},
	} {
		_, err := parseFlags("serve", tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%v) = %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
	t.Setenv("CHATD_MAX_STREAMS_PER_DEVICE", "0")
	if _, err := parseFlags("serve", nil, io.Discard); err == nil || !strings.Contains(err.Error(), "--max-streams-per-device") {
		t.Errorf("CHATD_MAX_STREAMS_PER_DEVICE=0: %v, want an error", err)
	}
	t.Setenv("CHATD_MAX_STREAMS_PER_DEVICE", "8")
	o, err := parseFlags("serve", nil, io.Discard)
	if err != nil || o.cfg.MaxStreamsPerDevice != 8 {
		t.Errorf("CHATD_MAX_STREAMS_PER_DEVICE=8: %+v %v", o.cfg.MaxStreamsPerDevice, err)
	}
}

// TestFlagDefaultsAreConfigDefaults: chatd with no flags runs the server
// an empty app.Config describes (the flags read their defaults from it).
func TestFlagDefaultsAreConfigDefaults(t *testing.T) {
	o, err := parseFlags("serve", nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	got, want := o.cfg.Defaults(), app.Config{}.Defaults()
	// The flags also name the scylla store's defaults, which Config leaves
	// to scylla.Config (zero there).
	if got.Scylla.Keyspace != scylla.DefaultKeyspace || got.Scylla.Timeout != scylla.DefaultTimeout || got.Scylla.Consistency != scylla.DefaultConsistency {
		t.Errorf("scylla flags: %+v", got.Scylla)
	}
	got.Scylla, want.Scylla = scylla.Config{}, scylla.Config{}
	got.Logger, want.Logger = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("flag defaults differ from app.Config{}.Defaults():\n got %+v\nwant %+v", got, want)
	}
}
