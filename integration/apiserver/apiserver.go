// Package apiserver runs a real etcd and kube-apiserver on loopback for tests.
//
// The binaries are upstream etcd and kube-apiserver built from the versions
// pinned in the separate tools module integration/k8s (go.mod there) by
// integration/k8s/build.sh, into ${NFTPROXY_K8S_CACHE:-$HOME/.cache/nftproxy-k8s}.
// Start runs that script, which builds only what is missing: the FIRST run on
// a machine compiles kube-apiserver from source and takes 10+ minutes on 2
// cores (more than go test's default -timeout of 10m: run
// integration/k8s/build.sh beforehand, or pass -timeout 30m); later runs reuse
// the binaries and a server is ready in seconds. NFTPROXY_K8S_BIN may name a
// directory holding prebuilt etcd and kube-apiserver binaries instead.
//
// The API server authenticates with static tokens only: AdminUser (group
// system:masters) and NFTProxyUser, the ServiceAccount user of nftproxy
// (system:serviceaccount:kube-system:nftproxy, no groups beyond
// system:authenticated), so RBAC decides what nftproxy may do. Authorization
// is Node,RBAC. No controller manager runs: the API server allocates
// ClusterIPs (10.96.0.0/16) and NodePorts (30000-32767) itself, but nothing
// creates EndpointSlices, garbage-collects, or mints ServiceAccount tokens
// (the ServiceAccount admission plugin is disabled).
//
// Clients reach kube-apiserver through a TCP forwarder of the harness on
// Server.URL's port, which forwards only while kube-apiserver is ready: across
// Restart a client finds the server down (connections closed at once) and then
// ready, never half started (a kube-apiserver serves requests a few seconds
// before its RBAC caches sync, and refuses what RBAC allows meanwhile).
//
// The tests need no privileges. With Options.NetNS the servers run inside a
// network namespace (that needs root); the rest.Configs returned then dial
// into that namespace, and kubeconfig files name the loopback address as seen
// from inside it.
package apiserver

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/nftproxy/nftproxy/integration/topology"
)

const (
	// AdminUser is the cluster administrator: a member of system:masters,
	// allowed everything.
	AdminUser = "nftproxy-test-admin"
	// NFTProxyUser is the identity nftproxy runs as: the user name of the
	// ServiceAccount kube-system/nftproxy, with no group beyond
	// system:authenticated. It may do nothing until RBAC allows it; a
	// ClusterRoleBinding to either this User or the ServiceAccount
	// kube-system/nftproxy applies to it.
	NFTProxyUser = "system:serviceaccount:kube-system:nftproxy"

	// ServiceCIDR is the API server's --service-cluster-ip-range.
	ServiceCIDR = "10.96.0.0/16"
	// NodePortRange is the API server's --service-node-port-range (the default).
	NodePortRange = "30000-32767"

	// BinEnv names an environment variable that, when set, is a directory with
	// prebuilt etcd and kube-apiserver binaries to use instead of build.sh.
	BinEnv = "NFTPROXY_K8S_BIN"

	// KeepEnv names an environment variable that, when set, keeps each
	// Server's directory (data, keys, logs) after the test, for debugging.
	KeepEnv = "NFTPROXY_K8S_KEEP"

	// dirPrefix starts the name of each Server's directory in os.TempDir(),
	// followed by the test process's pid.
	dirPrefix = "nftproxy-apiserver-"

	defaultAdvertiseAddress = "192.0.2.1"
	defaultReadyTimeout     = 90 * time.Second
	stopTimeout             = 15 * time.Second
)

// Options adjust Start. The zero value runs both servers in the test's own
// network namespace.
type Options struct {
	// NetNS, if set, runs etcd and kube-apiserver inside this network
	// namespace (with `ip netns exec`, so root is needed); their loopback
	// addresses are that namespace's.
	NetNS *topology.NetNS
	// AdvertiseAddress is --advertise-address, the endpoint the API server
	// publishes for the default/kubernetes Service (it cannot be loopback).
	// Default 192.0.2.1 (TEST-NET-1): nothing listens there.
	AdvertiseAddress string
	// ReadyTimeout bounds each wait for /readyz (default 90s).
	ReadyTimeout time.Duration
	// ExtraArgs are appended to kube-apiserver's command line.
	ExtraArgs []string
}

// Server is a running etcd + kube-apiserver on loopback for tests.
type Server struct {
	// URL is the API server's address, https://127.0.0.1:<port>. The port
	// is the harness's own: it forwards connections to kube-apiserver (on
	// another port) while that is ready, and survives Restart.
	URL string
	// CACert is the PEM certificate of the CA that signed the serving
	// certificate (valid for 127.0.0.1, ::1 and localhost).
	CACert []byte
	// AdminToken is the bearer token of AdminUser.
	AdminToken string
	// UserToken is the bearer token of NFTProxyUser.
	UserToken string
	// EtcdURL is etcd's client URL, http://127.0.0.1:<port>.
	EtcdURL string
	// Dir holds the servers' data, keys and logs (etcd.log,
	// kube-apiserver.log); it is removed at the end of the test unless
	// $NFTPROXY_K8S_KEEP is set.
	Dir string

	t      testing.TB
	opts   Options
	bins   string
	tokens map[string]string

	mu        sync.Mutex
	etcd      *process
	apiserver *process
	apiPort   int // kube-apiserver's own port, behind front
	front     *frontDoor
	restarts  int
}

// Start builds (or reuses) the binaries, starts etcd and kube-apiserver on
// free loopback ports with a fresh data directory, waits until /readyz
// answers, and stops both and removes their directory in t.Cleanup. It
// calls t.Fatal on failure. At most one Options may be given.
func Start(t testing.TB, opts ...Options) *Server {
	t.Helper()
	var o Options
	switch len(opts) {
	case 0:
	case 1:
		o = opts[0]
	default:
		t.Fatalf("apiserver.Start: %d Options given, want at most 1", len(opts))
	}
	if o.AdvertiseAddress == "" {
		o.AdvertiseAddress = defaultAdvertiseAddress
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = defaultReadyTimeout
	}

	removeStaleDirs()
	bins, err := binaries(t)
	if err != nil {
		t.Fatalf("apiserver: %v", err)
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()))
	if err != nil {
		t.Fatalf("apiserver: %v", err)
	}
	s := &Server{
		Dir:        dir,
		t:          t,
		opts:       o,
		bins:       bins,
		AdminToken: randomToken(),
		UserToken:  randomToken(),
	}
	s.tokens = map[string]string{AdminUser: s.AdminToken, NFTProxyUser: s.UserToken}
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			s.dumpLogs()
		}
		if os.Getenv(KeepEnv) != "" {
			t.Logf("apiserver: %s set: keeping %s", KeepEnv, dir)
			return
		}
		os.RemoveAll(dir)
	})

	begin := time.Now()
	if err := s.writeFiles(); err != nil {
		t.Fatalf("apiserver: %v", err)
	}
	if err := s.startEtcd(); err != nil {
		t.Fatalf("apiserver: %v", err)
	}
	front, err := s.openFrontDoor()
	if err != nil {
		t.Fatalf("apiserver: %v", err)
	}
	s.mu.Lock()
	s.front = front
	s.URL = "https://" + front.addr()
	s.mu.Unlock()
	if err := s.startAPIServer(); err != nil {
		t.Fatalf("apiserver: %v", err)
	}
	t.Logf("apiserver: etcd and kube-apiserver ready at %s in %v (binaries in %s)", s.URL, time.Since(begin).Round(time.Millisecond), bins)
	return s
}

// AdminConfig returns a client configuration for AdminUser.
func (s *Server) AdminConfig() *rest.Config { return s.Config(AdminUser) }

// UserConfig returns a client configuration for NFTProxyUser.
func (s *Server) UserConfig() *rest.Config { return s.Config(NFTProxyUser) }

// Config returns a client configuration authenticating as user (AdminUser or
// NFTProxyUser), verifying the server with CACert. With Options.NetNS its
// connections are dialed inside that namespace. It panics on an unknown user.
func (s *Server) Config(user string) *rest.Config {
	token, ok := s.tokens[user]
	if !ok {
		panic(fmt.Sprintf("apiserver: no token for user %q", user))
	}
	cfg := &rest.Config{
		Host:            s.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: bytes.Clone(s.CACert)},
		QPS:             -1, // no client-side rate limit
		Timeout:         30 * time.Second,
	}
	if s.opts.NetNS != nil {
		cfg.Dial = s.dial
	}
	return cfg
}

// Kubeconfig writes a kubeconfig file at path that authenticates as user
// (AdminUser or NFTProxyUser) to this server, for a binary that takes
// --kubeconfig. With Options.NetNS the address is only reachable from
// inside that namespace.
func (s *Server) Kubeconfig(path, user string) error {
	token, ok := s.tokens[user]
	if !ok {
		return fmt.Errorf("apiserver: no token for user %q", user)
	}
	type named struct {
		Name    string         `json:"name"`
		Cluster map[string]any `json:"cluster,omitempty"`
		User    map[string]any `json:"user,omitempty"`
		Context map[string]any `json:"context,omitempty"`
	}
	cfg := map[string]any{
		"apiVersion":      "v1",
		"kind":            "Config",
		"current-context": "test",
		"clusters": []named{{Name: "test", Cluster: map[string]any{
			"server":                     s.URL,
			"certificate-authority-data": s.CACert, // []byte: base64 in YAML, as kubeconfig wants
		}}},
		"users":    []named{{Name: user, User: map[string]any{"token": token}}},
		"contexts": []named{{Name: "test", Context: map[string]any{"cluster": "test", "user": user}}},
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

// WriteKubeconfig is Kubeconfig that calls t.Fatal on failure.
func (s *Server) WriteKubeconfig(t testing.TB, path, user string) {
	t.Helper()
	if err := s.Kubeconfig(path, user); err != nil {
		t.Fatalf("write kubeconfig: %v", err)
	}
}

// Restart stops kube-apiserver (SIGTERM: it ends open watches as a real
// restart does) and starts it again with the same etcd, certificates and
// tokens, then waits for /readyz. URL does not change. From the stop until
// the new kube-apiserver is ready, connections to URL are closed at once
// (as by a load balancer that checks /readyz), so clients never reach an
// API server whose RBAC caches have not synced yet. It calls t.Fatal on
// failure.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	begin := time.Now()
	s.mu.Lock()
	p := s.apiserver
	s.apiserver = nil
	s.mu.Unlock()
	s.front.setBackend("")
	if p != nil {
		p.stop()
	}
	s.front.dropAll()
	if err := s.startAPIServer(); err != nil {
		t.Fatalf("apiserver: restart: %v", err)
	}
	t.Logf("apiserver: kube-apiserver restarted in %v", time.Since(begin).Round(time.Millisecond))
}

// writeFiles creates the CA, the serving certificate, the ServiceAccount
// signing key and the token file.
func (s *Server) writeFiles() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "nftproxy-test-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP("10.96.0.1")},
	}
	if ip := net.ParseIP(s.opts.AdvertiseAddress); ip != nil {
		srvTmpl.IPAddresses = append(srvTmpl.IPAddresses, ip)
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}

	s.CACert = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	srvKeyPEM, err := keyPEM(srvKey)
	if err != nil {
		return err
	}
	saKeyPEM, err := keyPEM(saKey)
	if err != nil {
		return err
	}
	tokens := fmt.Sprintf("%s,%s,uid-admin,\"system:masters\"\n%s,%s,uid-nftproxy\n",
		s.AdminToken, AdminUser, s.UserToken, NFTProxyUser)
	files := map[string][]byte{
		"ca.crt":        s.CACert,
		"apiserver.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}),
		"apiserver.key": srvKeyPEM,
		"sa.key":        saKeyPEM,
		"tokens.csv":    []byte(tokens),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(s.Dir, name), data, 0o600); err != nil {
			return err
		}
	}
	for _, sub := range []string{"etcd", "certs"} {
		if err := os.Mkdir(filepath.Join(s.Dir, sub), 0o700); err != nil {
			return err
		}
	}
	return nil
}

func keyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

func (s *Server) startEtcd() error {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		ports, err := s.freePorts(2)
		if err != nil {
			return err
		}
		client := "http://127.0.0.1:" + strconv.Itoa(ports[0])
		peer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		dataDir := filepath.Join(s.Dir, "etcd", "data")
		os.RemoveAll(dataDir)
		p, err := s.spawn("etcd", filepath.Join(s.bins, "etcd"),
			"--name", "test",
			"--data-dir", dataDir,
			"--listen-client-urls", client,
			"--advertise-client-urls", client,
			"--listen-peer-urls", peer,
			"--initial-advertise-peer-urls", peer,
			"--initial-cluster", "test="+peer,
			"--initial-cluster-state", "new",
			"--unsafe-no-fsync",
			"--log-level", "warn",
		)
		if err != nil {
			return err
		}
		err = s.waitHTTP(p, client+"/health", "", func(body []byte) bool {
			return bytes.Contains(body, []byte(`"health":"true"`))
		})
		if err == nil {
			s.mu.Lock()
			s.etcd, s.EtcdURL = p, client
			s.mu.Unlock()
			return nil
		}
		p.stop()
		lastErr = fmt.Errorf("etcd: %w\n%s", err, p.tail())
		if !p.portInUse() {
			break
		}
	}
	return lastErr
}

// startAPIServer starts kube-apiserver on a loopback port of its own, waits
// for /readyz there, and then lets the front door forward to it. It reuses
// the previous port if there is one (so the default/kubernetes Service's
// endpoint stays put), and picks another free one if that is taken.
func (s *Server) startAPIServer() error {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		if s.apiPort == 0 || attempt > 0 {
			ports, err := s.freePorts(1)
			if err != nil {
				return err
			}
			s.apiPort = ports[0]
		}
		backend := "127.0.0.1:" + strconv.Itoa(s.apiPort)
		p, err := s.spawn("kube-apiserver", filepath.Join(s.bins, "kube-apiserver"), s.apiServerArgs(s.apiPort)...)
		if err != nil {
			return err
		}
		err = s.waitHTTP(p, "https://"+backend+"/readyz", s.AdminToken, func(body []byte) bool {
			return bytes.Equal(bytes.TrimSpace(body), []byte("ok"))
		})
		if err == nil {
			s.mu.Lock()
			s.apiserver = p
			s.mu.Unlock()
			s.front.setBackend(backend)
			return nil
		}
		p.stop()
		lastErr = fmt.Errorf("kube-apiserver: %w\n%s", err, p.tail())
		if !p.portInUse() {
			break
		}
	}
	return lastErr
}

func (s *Server) apiServerArgs(port int) []string {
	d := s.Dir
	args := []string{
		"--etcd-servers=" + s.EtcdURL,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--advertise-address=" + s.opts.AdvertiseAddress,
		"--tls-cert-file=" + filepath.Join(d, "apiserver.crt"),
		"--tls-private-key-file=" + filepath.Join(d, "apiserver.key"),
		"--token-auth-file=" + filepath.Join(d, "tokens.csv"),
		"--authorization-mode=Node,RBAC",
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--service-node-port-range=" + NodePortRange,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--api-audiences=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + filepath.Join(d, "sa.key"),
		"--service-account-signing-key-file=" + filepath.Join(d, "sa.key"),
		// Without a controller manager nothing creates ServiceAccounts or
		// their tokens, which the ServiceAccount admission plugin needs.
		"--disable-admission-plugins=ServiceAccount",
		"--cert-dir=" + filepath.Join(d, "certs"),
		"--profiling=false",
		// On SIGTERM, end open watches (as the real shutdown of a busy API
		// server does) instead of leaving them open until the HTTP server's
		// shutdown timeout (60s), which would make Restart slow.
		"--shutdown-watch-termination-grace-period=2s",
		"--v=1",
	}
	return append(args, s.opts.ExtraArgs...)
}

// waitHTTP polls url (with a bearer token if set) until ok accepts a 200
// response's body, the process exits, or ReadyTimeout passes.
func (s *Server) waitHTTP(p *process, url, token string, ok func([]byte) bool) error {
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext:       s.dial,
			TLSClientConfig:   s.tlsConfig(),
			DisableKeepAlives: true,
		},
	}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(s.opts.ReadyTimeout)
	var last string
	for {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && ok(body) {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(body))
		} else {
			last = err.Error()
		}
		select {
		case <-p.done:
			return fmt.Errorf("exited before %s was ready: %v", url, p.err)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v; last answer: %s", url, s.opts.ReadyTimeout, last)
		}
	}
}

func (s *Server) tlsConfig() *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CACert)
	return &tls.Config{RootCAs: pool}
}

// dial connects to address, inside Options.NetNS if set.
func (s *Server) dial(ctx context.Context, network, address string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	if s.opts.NetNS == nil {
		return d.DialContext(ctx, network, address)
	}
	var c net.Conn
	err := s.opts.NetNS.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// freePorts returns n distinct TCP ports free on 127.0.0.1 (of NetNS if set).
func (s *Server) freePorts(n int) ([]int, error) {
	var ports []int
	get := func() error {
		var ls []net.Listener
		defer func() {
			for _, l := range ls {
				l.Close()
			}
		}()
		for range n {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return err
			}
			ls = append(ls, l)
			ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		}
		return nil
	}
	var err error
	if s.opts.NetNS != nil {
		err = s.opts.NetNS.Do(get)
	} else {
		err = get()
	}
	if err != nil {
		return nil, fmt.Errorf("free ports: %w", err)
	}
	return ports, nil
}

func (s *Server) stop() {
	s.mu.Lock()
	a, e, f := s.apiserver, s.etcd, s.front
	s.apiserver, s.etcd, s.front = nil, nil, nil
	s.mu.Unlock()
	if f != nil {
		f.close()
	}
	if a != nil {
		a.stop()
	}
	if e != nil {
		e.stop()
	}
}

// dumpLogs prints the end of both logs (for a failed test).
func (s *Server) dumpLogs() {
	for _, name := range []string{"etcd", "kube-apiserver"} {
		data, err := os.ReadFile(filepath.Join(s.Dir, name+".log"))
		if err != nil {
			continue
		}
		s.t.Logf("apiserver: last lines of %s.log:\n%s", name, lastLines(data, 40))
	}
}

var staleOnce sync.Once

// removeStaleDirs removes the directories of test processes that are gone
// (killed before their cleanup ran, e.g. by go test's -timeout): etcd
// preallocates 64 MB of WAL in each.
func removeStaleDirs() {
	staleOnce.Do(func() {
		dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*-*"))
		for _, d := range dirs {
			pid, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(filepath.Base(d), dirPrefix), "-", 2)[0])
			if err != nil || pid == os.Getpid() {
				continue
			}
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
				os.RemoveAll(d)
			}
		}
	})
}

func randomToken() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// binaries returns the directory holding etcd and kube-apiserver: $BinEnv,
// or the output of integration/k8s/build.sh (run once per test binary).
func binaries(t testing.TB) (string, error) {
	binOnce.Do(func() {
		binDir, binErr = findOrBuild(t)
	})
	return binDir, binErr
}

func findOrBuild(t testing.TB) (string, error) {
	if dir := os.Getenv(BinEnv); dir != "" {
		for _, b := range []string{"etcd", "kube-apiserver"} {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				return "", fmt.Errorf("%s=%s: %w", BinEnv, dir, err)
			}
		}
		return dir, nil
	}
	script, err := buildScript()
	if err != nil {
		return "", err
	}
	// go test kills the whole binary at -timeout; stop the build a little
	// before that so the test fails with a message instead of a panic. What
	// was compiled stays in the Go build cache for the next run.
	ctx := context.Background()
	if dt, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if deadline, ok := dt.Deadline(); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, deadline.Add(-30*time.Second))
			defer cancel()
		}
	}
	var stdout bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Stdout = &stdout
	cmd.Stderr = os.Stderr // progress; the first build takes minutes
	// Stop the whole group: bash and the go build under it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	begin := time.Now()
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("%s did not finish before the test timeout (%v spent; the first build of kube-apiserver takes 10+ minutes on 2 cores). "+
				"What was compiled is cached: run %s once by hand, or rerun with a larger -timeout (e.g. 30m)", script, time.Since(begin).Round(time.Second), script)
		}
		return "", fmt.Errorf("%s: %w", script, err)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	dir := lines[len(lines)-1]
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("%s printed %q, not a directory", script, dir)
	}
	return dir, nil
}

// buildScript locates integration/k8s/build.sh: next to this source file,
// or under the main module's root (for builds with -trimpath).
func buildScript() (string, error) {
	var tried []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		p := filepath.Join(filepath.Dir(file), "..", "k8s", "build.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		tried = append(tried, p)
	}
	if out, err := exec.Command("go", "env", "GOMOD").Output(); err == nil {
		if mod := strings.TrimSpace(string(out)); mod != "" && mod != os.DevNull {
			p := filepath.Join(filepath.Dir(mod), "integration", "k8s", "build.sh")
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
			tried = append(tried, p)
		}
	}
	return "", errors.New("integration/k8s/build.sh not found (tried " + strings.Join(tried, ", ") + "); set " + BinEnv + " to a directory with etcd and kube-apiserver")
}
