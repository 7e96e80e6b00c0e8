package integration

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/internal/scale"
	"github.com/nftproxy/nftproxy/model"
)

func TestZZReadCurve(t *testing.T) {
	topology.RequirePrivileged(t)
	for _, m := range []int{10, 40} {
		n, _ := strconv.Atoi(os.Getenv("ZZ_N"))
		services := map[model.ServiceName]*model.Service{}
		for i := range n {
			svc := scale.Service(i, m, 0)
			services[svc.Name] = &svc
		}
		ns := topology.NewNetNS(t, "zz")
		be := kernelBackend(t, ns)
		s := newBenchSyncer(be, services)
		t0 := time.Now()
		res, err := s.Sync()
		if err != nil {
			t.Fatal(err)
		}
		cold := time.Since(t0)
		t0 = time.Now()
		var r0, r1 syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
		res2, err := newBenchSyncer(be, services).Sync()
		syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
		fmt.Printf("restart cpu user=%v sys=%v\n", time.Duration(r1.Utime.Nano()-r0.Utime.Nano()), time.Duration(r1.Stime.Nano()-r0.Stime.Nano()))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("n=%d m=%d objects=%d cold=%v restart=%v written=%d\n", n, m, res.Objects, cold, time.Since(t0), res2.Objects)
	}
}
