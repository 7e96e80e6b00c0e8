package sync

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestKubeSource checks that the source delivers a full snapshot once its caches synced,
// another after a change, and only this node's Node object.
func TestKubeSource(t *testing.T) {
	objs := proxyObjects("10.244.1.2")
	client := fake.NewClientset(objs.Services[0], objs.EndpointSlices[0],
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node2"}})
	src := &KubeSource{Client: client, NodeName: "node1", Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	snapshots := make(chan Objects, 10)
	go func() { _ = src.Run(ctx, func(o Objects) { snapshots <- o }) }()

	next := func() Objects {
		t.Helper()
		select {
		case o := <-snapshots:
			return o
		case <-time.After(10 * time.Second):
			t.Fatal("no snapshot within 10 s")
			return Objects{}
		}
	}
	first := next()
	if len(first.Services) != 1 || len(first.EndpointSlices) != 1 {
		t.Fatalf("first snapshot has %d Services and %d EndpointSlices, want 1 and 1", len(first.Services), len(first.EndpointSlices))
	}
	// The field selector is applied by the API server, which the fake client does not do;
	// FindNode still picks this node's object by name.
	if _, ok := FindNode(first.Nodes, "node1"); !ok {
		t.Errorf("the snapshot lacks this node's Node object")
	}

	svc := objs.Services[0].DeepCopy()
	svc.Name = "web2"
	if _, err := client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if o := next(); len(o.Services) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the new Service never showed in a snapshot")
		}
	}
}
