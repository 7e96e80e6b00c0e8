package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunHelp: `run --help` prints the flags in sections, kube-proxy's spelled with two
// dashes, --config among them, and exits without error output.
func TestRunHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"run", "--help"}, &stdout, &stderr)
	if err == nil {
		t.Fatal("run --help returned no error, want ErrHelp (exit status 2, as before)")
	}
	out := stdout.String()
	for _, want := range []string{"Usage:\n  nftproxy run [flags]", "Generic flags:", "Conntrack flags:",
		"      --config string", "      --proxy-mode", "      --nodeport-addresses strings", "(default primary)", "  -v, --v int"} {
		if !strings.Contains(out, want) {
			t.Errorf("run --help does not print %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "Usage of run:") || stderr.Len() > 0 {
		t.Errorf("run --help prints Go's bare usage or writes to stderr:\n%s\n%s", out, stderr.String())
	}
}

// TestRenderFromCluster: render takes the API client's flags, and without --manifests lists
// the cluster --kubeconfig names (here a file that does not exist: the error says so).
func TestRenderFromCluster(t *testing.T) {
	var stdout, stderr bytes.Buffer
	_ = run(context.Background(), []string{"render", "--help"}, &stdout, &stderr)
	for _, want := range []string{"      --kubeconfig string", "      --master string"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("render --help does not print %q:\n%s", want, stdout.String())
		}
	}
	missing := filepath.Join(t.TempDir(), "kubeconfig")
	err := run(context.Background(), []string{"render", "--kubeconfig", missing, "--hostname-override", "node1"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "kubernetes client configuration") || !strings.Contains(err.Error(), missing) {
		t.Errorf("render --kubeconfig %s: error %v, want one about the client configuration naming the file", missing, err)
	}
}

// TestExplainHelpAndOffline: explain is in the command list, `explain --help` names its
// arguments, and --offline explains a golden scenario's packet as an operator reads it.
func TestExplainHelpAndOffline(t *testing.T) {
	var stdout, stderr bytes.Buffer
	_ = run(context.Background(), []string{"help"}, &stdout, &stderr)
	if !strings.Contains(stdout.String(), "nftproxy explain [flags] SRC DST:PORT") {
		t.Errorf("help does not list explain:\n%s", stdout.String())
	}
	stdout.Reset()
	_ = run(context.Background(), []string{"explain", "--help"}, &stdout, &stderr)
	for _, want := range []string{"DST:PORT[/PROTO]", "--from string", "--offline", "--manifests string"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("explain --help does not print %q:\n%s", want, stdout.String())
		}
	}
	stdout.Reset()
	args := []string{"explain", "--offline", "--manifests", "../../testdata/traffic-policy-local", "--hostname-override", "node1",
		"--cluster-cidr", "10.244.0.0/16", "--from", "external", "203.0.113.2", "198.51.100.70:80"}
	if err := run(context.Background(), args, &stdout, &stderr); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, stderr.String())
	}
	for _, want := range []string{"service        default/local-lb:http (LoadBalancer IP)", "forward to 1 endpoint",
		"100.0%  10.244.1.70:8080", "source kept: externalTrafficPolicy Local"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("explain %v does not print %q:\n%s", args[1:], want, stdout.String())
		}
	}
	for _, bad := range [][]string{
		{"explain", "--offline", "10.244.1.5"},
		{"explain", "--offline", "10.244.1.5", "10.96.0.1:80/icmp"},
		{"explain", "--offline", "10.244.1.5", "[fd00::1]:80"},
		{"explain", "--offline", "--from", "moon", "10.244.1.5", "10.96.0.1:80"},
	} {
		if err := run(context.Background(), bad, io.Discard, io.Discard); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}
