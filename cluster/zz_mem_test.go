package cluster

import (
	"runtime"
	"testing"
)

func TestZZMem(t *testing.T) {
	bc := newBenchCluster(&testing.B{}, 10000, 10)
	store := informerStore{services: bc.services, slices: bc.slices, nodes: bc.nodes}
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	var c Converter
	c.Update(Delta{Store: store, Full: true})
	runtime.GC()
	runtime.ReadMemStats(&m1)
	t.Logf("converter retains %.1f MB", float64(m1.HeapAlloc-m0.HeapAlloc)/1e6)
	runtime.KeepAlive(&c)
}
