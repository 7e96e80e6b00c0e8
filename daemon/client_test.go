package daemon

import (
	"os"
	"testing"

	clientfeatures "k8s.io/client-go/features"
)

// TestNewClientPrefersList checks that a client's informers list rather than stream their
// initial state, unless the environment names the feature.
func TestNewClientPrefersList(t *testing.T) {
	if _, set := os.LookupEnv(watchListEnv); set {
		t.Skipf("%s is set: the environment decides", watchListEnv)
	}
	if _, err := (ClientOptions{Master: "https://127.0.0.1:6443"}).NewClient("test"); err != nil {
		t.Fatal(err)
	}
	if clientfeatures.FeatureGates().Enabled(clientfeatures.WatchListClient) {
		t.Errorf("%s is enabled after NewClient, want the informers to list", clientfeatures.WatchListClient)
	}
}
