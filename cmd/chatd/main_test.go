package main

import (
	"io"
	"strings"
	"testing"
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
