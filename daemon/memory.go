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
// heap. At 50 it stops at half again what is live, and sooner: at 10,000 x 10 under 20
// endpoint changes a second (--min-sync-period=0), RSS went from 174 MB after the first sync
// to 218-228 MB at GOGC=100, and from 144 MB to 170-172 MB at 50, flat after the first
// minute; the process used 2.0 CPU-seconds a minute instead of 1.8 (a collection every 30 s
// or so, where the default collected every 80-110 s).
//
// The first sync keeps the default: while the caches fill, the heap grows from nothing, and
// collecting more often then costs the start its time (GOGC=25 throughout made the cold
// sync at 10,000 x 10 a fifth slower, 1.50 -> 1.76 s, for 10 MB less peak RSS).
const steadyGCPercent = 50

// settleMemory is what the daemon does once its first sync succeeded: it sets the garbage
// collector's target to steadyGCPercent (unless the operator set GOGC) and, in the
// background, collects and returns to the system the memory the start used and no longer
// needs (the LISTs' buffers, the first commit's batch, the conversion's garbage).
func settleMemory(log *slog.Logger) {
	gogc := os.Getenv("GOGC")
	if gogc == "" {
		debug.SetGCPercent(steadyGCPercent)
		gogc = strconv.Itoa(steadyGCPercent)
	}
	go func() {
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		log.Info("first sync done: returned the start's memory to the system",
			logkey.GOGC, gogc, logkey.HeapInUse, ms.HeapInuse)
	}()
}
