package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/cluster"
)

// TestFirstSnapshot: FirstSnapshot returns the first snapshot a source delivers and stops
// the source; a source that never delivers one fails when the context ends.
func TestFirstSnapshot(t *testing.T) {
	dir := t.TempDir()
	svc := "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n"
	if err := os.WriteFile(filepath.Join(dir, "web.yaml"), []byte(svc), 0o644); err != nil {
		t.Fatal(err)
	}
	objs, err := FirstSnapshot(context.Background(), &cluster.ManifestSource{Dir: dir, Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.Services) != 1 || objs.Services[0].Name != "web" {
		t.Errorf("first snapshot has Services %v, want default/web", objs.Services)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := FirstSnapshot(ctx, silentSource{}); err == nil {
		t.Error("FirstSnapshot of a source that delivers nothing returned no error")
	}
}

// silentSource delivers nothing until its context ends.
type silentSource struct{}

func (silentSource) Run(ctx context.Context, _ func(cluster.Delta)) error {
	<-ctx.Done()
	return nil
}
