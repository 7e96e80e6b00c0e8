package daemon

import (
	"io"
	"log/slog"
	"runtime/debug"
	"testing"
)

// TestSettleMemory checks the garbage collector's target after the first sync: 25 by
// default, the operator's when GOGC is set.
func TestSettleMemory(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	before := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(before) })
	for _, tc := range []struct {
		env          string
		start, after int // the target the runtime started with (from GOGC), and after
	}{
		{"", 100, steadyGCPercent},
		{"80", 80, 80},
	} {
		t.Setenv("GOGC", tc.env)
		debug.SetGCPercent(tc.start)
		settleMemory(log)
		if got := debug.SetGCPercent(100); got != tc.after {
			t.Errorf("GOGC=%q: the collector's target after the first sync is %d; want %d", tc.env, got, tc.after)
		}
	}
}

// TestCollectBeforeFirstSync checks the collector's target before the first sync: left alone
// for a first start, the steady one for a restart, the operator's when GOGC is set.
func TestCollectBeforeFirstSync(t *testing.T) {
	before := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(before) })
	for _, tc := range []struct {
		env          string
		restart      bool
		start, after int
	}{
		{"", false, 100, 100},
		{"", true, 100, steadyGCPercent},
		{"80", true, 80, 80},
	} {
		t.Setenv("GOGC", tc.env)
		debug.SetGCPercent(tc.start)
		collectBeforeFirstSync(tc.restart)
		if got := debug.SetGCPercent(100); got != tc.after {
			t.Errorf("GOGC=%q, restart %v: the collector's target before the first sync is %d; want %d", tc.env, tc.restart, got, tc.after)
		}
	}
}
