package daemon

import (
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"

	"github.com/nftproxy/nftproxy/internal/logkey"
)

// steadyGCPercent is the garbage collector's target once the first sync is done (GOGC):
// the heap may grow by this share of what is live before the next collection.
//
// A proxy's heap is mostly what it keeps: the informers' caches, every Service's conversion,
// the syncer's Parts and claims (about 90 MB at 10,000 Services x 10 endpoints). A change
// throws little away (tens of kilobytes a sync). With the runtime's default, GOGC=100, the
// heap grows to twice what is live before each collection, so under a steady stream of
// changes the garbage fills that headroom and RSS climbs for minutes to near twice the live
// heap: at 10,000 x 10 under 20 endpoint changes a second, from 174 MB after the first sync
// to 218-228 MB. At 50 the heap stays within the pages the first sync used: RSS 168 MB after
// it, 175 MB at the first minute and 177 MB at the fourth (--min-sync-period 1s); the
// process used 2.0 CPU-seconds a minute instead of 1.8 at --min-sync-period=0 (a collection
// every 30 s or so, where the default collected every 80-110 s).
//
// The first sync keeps the default: while the caches fill, the heap grows from nothing, and
// collecting more often then costs the start its time (GOGC=25 throughout made the cold
// sync at 10,000 x 10 a fifth slower, 1.50 -> 1.76 s, for 10 MB less peak RSS). Nor is the
// start's memory returned to the system at once (debug.FreeOSMemory): RSS then fell to 144
// MB, only to climb back to 171 MB over the next minutes as the heap filled its target.
const steadyGCPercent = 50

// collectBeforeFirstSync is what the daemon does between listing the cluster and its first
// sync: a garbage collection. Listing leaves its garbage in the heap (the response's buffers,
// each object as decoded before it was trimmed), and the first sync, which builds every
// Service's Part and claims (and, in a restart, reads the tables back), allocated on top of
// it up to the collector's target, twice what was live at the last collection during the
// LIST. Collected first, the sync reuses that memory. Peak RSS at 10,000 Services x 10
// endpoints (probe, 5 rounds): 142 -> 139 MB for a first start, 160 -> 147 MB for a restart
// with its tables in place; the collection costs about 20 ms, within the start's noise.
//
// A restart (restart: the tables were found in place) also takes the steady target at once
// (settleMemory's, unless the operator set GOGC): reading the tables back allocates about 20
// MB more, garbage within the sync, and at the default target the heap grew past 150 MB to
// hold it (restarted peak 147 MB, 146-153, -> 145 MB, 144-146; a first start would pay 26 ms
// of its sync for 1 MB, and keeps the default).
func collectBeforeFirstSync(restart bool) {
	runtime.GC()
	if restart && os.Getenv("GOGC") == "" {
		debug.SetGCPercent(steadyGCPercent)
	}
}

// settleMemory is what the daemon does once its first sync succeeded: it sets the garbage
// collector's target to steadyGCPercent, unless the operator set GOGC.
func settleMemory(log *slog.Logger) {
	gogc := os.Getenv("GOGC")
	if gogc == "" {
		debug.SetGCPercent(steadyGCPercent)
		gogc = strconv.Itoa(steadyGCPercent)
	}
	log.Info("first sync done: garbage collection target set", logkey.GOGC, gogc)
}
