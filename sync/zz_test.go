package sync_test

import (
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/internal/scale"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/sync"
)

func TestZZHeap(t *testing.T) {
	runtime.MemProfileRate = 4096
	fake := nft.NewFake(1)
	s := sync.NewSyncer(fake, model.IPv4)
	s.SetNode(map[model.Family]model.NodeConfig{model.IPv4: scaleNode})
	changes := map[model.ServiceName]*model.Service{}
	for i := range 10000 {
		svc := scale.Service(i, 10, 0)
		changes[svc.Name] = &svc
	}
	s.Update(changes, time.Now())
	if _, err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	fake = nil
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("heap %d MB", ms.HeapAlloc>>20)
	f, _ := os.Create("/tmp/zzheap.out")
	pprof.Lookup("heap").WriteTo(f, 0)
	f.Close()
	runtime.KeepAlive(s)
}
