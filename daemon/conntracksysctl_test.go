package daemon

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeRoot makes a directory that stands for / with the netfilter sysctls, the conntrack
// hash size and 4 online CPUs, the files holding the given values.
func fakeRoot(t *testing.T, values map[string]string) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{
		sysctlNetfilterDir + "/nf_conntrack_max":                     "65536",
		sysctlNetfilterDir + "/nf_conntrack_tcp_timeout_established": "432000",
		sysctlNetfilterDir + "/nf_conntrack_tcp_timeout_close_wait":  "60",
		sysctlNetfilterDir + "/nf_conntrack_tcp_be_liberal":          "0",
		sysctlNetfilterDir + "/nf_conntrack_udp_timeout":             "30",
		sysctlNetfilterDir + "/nf_conntrack_udp_timeout_stream":      "120",
		conntrackHashsize: "16384",
		cpusOnline:        "0-2,5",
	}
	for k, v := range values {
		files[k] = v
	}
	for name, v := range files {
		path := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func readFile(t *testing.T, root, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestConntrackSysctls writes kube-proxy's defaults and every other setting into a fake
// /proc/sys and checks each file, as kube-proxy's conntrack.go would leave it.
func TestConntrackSysctls(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    ConntrackSysctls
		want map[string]string
	}{
		{
			name: "kube-proxy defaults: 4 CPUs x 32768 = 131072 = --conntrack-min",
			c:    ConntrackSysctls{MaxPerCore: DefaultConntrackMaxPerCore, Min: DefaultConntrackMin, TCPEstablishedTimeout: DefaultConntrackTCPEstablishedTimeout, TCPCloseWaitTimeout: DefaultConntrackTCPCloseWaitTimeout},
			want: map[string]string{"nf_conntrack_max": "131072", "hashsize": "32768", "nf_conntrack_tcp_timeout_established": "86400", "nf_conntrack_tcp_timeout_close_wait": "3600",
				"nf_conntrack_tcp_be_liberal": "0", "nf_conntrack_udp_timeout": "30", "nf_conntrack_udp_timeout_stream": "120"},
		},
		{
			name: "min wins over a small per-core figure; the rest set",
			c:    ConntrackSysctls{MaxPerCore: 10, Min: 70000, TCPBeLiberal: true, UDPTimeout: 10 * time.Second, UDPStreamTimeout: 5 * time.Minute},
			want: map[string]string{"nf_conntrack_max": "70000", "hashsize": "17500", "nf_conntrack_tcp_timeout_established": "432000", "nf_conntrack_tcp_timeout_close_wait": "60",
				"nf_conntrack_tcp_be_liberal": "1", "nf_conntrack_udp_timeout": "10", "nf_conntrack_udp_timeout_stream": "300"},
		},
		{
			// kube-proxy only ever raises it: a node tuned higher keeps its limit.
			name: "a higher nf_conntrack_max stays",
			c:    ConntrackSysctls{MaxPerCore: 10, Min: 50000},
			want: map[string]string{"nf_conntrack_max": "65536", "hashsize": "16384"},
		},
		{
			name: "capped at 1Mi entries",
			c:    ConntrackSysctls{MaxPerCore: 1 << 20},
			want: map[string]string{"nf_conntrack_max": "1048576", "hashsize": "262144"},
		},
		{
			name: "max per core 0 leaves max and hash size alone",
			c:    ConntrackSysctls{MaxPerCore: 0, Min: 1 << 20},
			want: map[string]string{"nf_conntrack_max": "65536", "hashsize": "16384"},
		},
	} {
		root := fakeRoot(t, nil)
		var log bytes.Buffer
		if err := tc.c.Apply(root, slog.New(slog.NewTextHandler(&log, nil))); err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		for name, want := range tc.want {
			path := filepath.Join(sysctlNetfilterDir, name)
			if name == "hashsize" {
				path = conntrackHashsize
			}
			if got := readFile(t, root, path); got != want {
				t.Errorf("%s: %s = %s, want %s", tc.name, name, got, want)
			}
		}
	}
}

// TestConntrackSysctlsReadOnly: where /proc/sys cannot be written the proxy starts anyway,
// with a warning; a value already right needs no write.
func TestConntrackSysctlsReadOnly(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root writes read-only files")
	}
	root := fakeRoot(t, map[string]string{sysctlNetfilterDir + "/nf_conntrack_tcp_timeout_established": "86400"})
	dir := filepath.Join(root, sysctlNetfilterDir)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		os.Chmod(filepath.Join(dir, e.Name()), 0o444)
	}
	var log bytes.Buffer
	c := ConntrackSysctls{TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour}
	if err := c.Apply(root, slog.New(slog.NewTextHandler(&log, nil))); err != nil {
		t.Fatalf("read-only /proc/sys: %v, want a warning", err)
	}
	if n := strings.Count(log.String(), "level=WARN"); n != 1 || !strings.Contains(log.String(), "read-only") || !strings.Contains(log.String(), "nf_conntrack_tcp_timeout_close_wait") {
		t.Errorf("log:\n%s\nwant one read-only warning", log.String())
	}
}

// TestConntrackSysctlsMissing: without nf_conntrack loaded the sysctls are missing: a
// warning per sysctl, no error.
func TestConntrackSysctlsMissing(t *testing.T) {
	root := t.TempDir()
	var log bytes.Buffer
	c := ConntrackSysctls{TCPEstablishedTimeout: 24 * time.Hour}
	if err := c.Apply(root, slog.New(slog.NewTextHandler(&log, nil))); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "do not exist") {
		t.Errorf("log:\n%s\nwant a warning", log.String())
	}
}
