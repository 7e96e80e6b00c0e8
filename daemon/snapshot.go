package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/cluster"
)

// FirstSnapshot runs src until its first delivery and returns every object of it: a one-shot
// look at the cluster for the commands that do not keep watching (render, diff).
// It fails when src ends, or ctx is done, before it has one.
func FirstSnapshot(ctx context.Context, src cluster.Source) (cluster.Objects, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var objs cluster.Objects
	got := false
	err := src.Run(ctx, func(d cluster.Delta) {
		if !got {
			// Listed now: the store may be gone once Run returns.
			objs, got = d.Store.Objects(), true
			cancel()
		}
	})
	if err != nil {
		return cluster.Objects{}, err
	}
	if !got {
		if err := ctx.Err(); err != nil {
			return cluster.Objects{}, fmt.Errorf("no snapshot of the cluster: %w", err)
		}
		return cluster.Objects{}, errors.New("no snapshot of the cluster: the source ended")
	}
	return objs, nil
}

// Objects returns one snapshot of the objects the options name: the manifests of
// --manifests, else a list of the API server's (--kubeconfig, else the in-cluster
// configuration) once its caches have synced. version is nftproxy's, for the client's user
// agent.
func (o *Options) Objects(ctx context.Context, node string, log *slog.Logger, version string) (cluster.Objects, error) {
	if o.Manifests != "" {
		objs, bad, err := cluster.LoadManifests(o.Manifests)
		objs.Bad = append(objs.Bad, bad...)
		return objs, err
	}
	client, err := o.Client.NewClient("nftproxy/" + version)
	if err != nil {
		return cluster.Objects{}, err
	}
	// client-go logs through klog: send it to the same handler.
	klog.SetSlogLogger(log)
	return FirstSnapshot(ctx, &cluster.KubeSource{Client: client, NodeName: node, Log: log})
}
