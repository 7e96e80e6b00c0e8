package apiserver

import (
	"context"
	"io"
	"net"
	"sync"
	"time"
)

// frontDoor owns the port clients use (Server.URL) and forwards each TCP
// connection, TLS and all, to the current kube-apiserver, but only while
// that one is ready: during a Restart new connections are closed at once,
// as a load balancer that checks /readyz would do. Without it clients
// (nftproxy's reflectors, which retry every second) reach a restarted API
// server in the seconds between its port opening and its RBAC caches
// syncing, and get Forbidden for requests that RBAC allows.
type frontDoor struct {
	s  *Server
	ln net.Listener

	mu      sync.Mutex
	backend string // host:port of the ready kube-apiserver, "" while none
	conns   map[net.Conn]struct{}
	closed  bool
	wg      sync.WaitGroup
}

// openFrontDoor listens on a free loopback port (of NetNS if set).
func (s *Server) openFrontDoor() (*frontDoor, error) {
	var ln net.Listener
	listen := func() (err error) {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}
	var err error
	if s.opts.NetNS != nil {
		err = s.opts.NetNS.Do(listen)
	} else {
		err = listen()
	}
	if err != nil {
		return nil, err
	}
	f := &frontDoor{s: s, ln: ln, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

func (f *frontDoor) addr() string { return f.ln.Addr().String() }

// setBackend routes new connections to backend, or refuses them if "".
func (f *frontDoor) setBackend(backend string) {
	f.mu.Lock()
	f.backend = backend
	f.mu.Unlock()
}

// dropAll closes every forwarded connection.
func (f *frontDoor) dropAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.Close()
	}
}

// close stops listening, closes every connection and waits for the
// forwarding goroutines.
func (f *frontDoor) close() {
	f.mu.Lock()
	f.closed = true
	f.backend = ""
	f.mu.Unlock()
	f.ln.Close()
	f.dropAll()
	f.wg.Wait()
}

func (f *frontDoor) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		backend, closed := f.backend, f.closed
		if backend == "" || closed {
			f.mu.Unlock()
			c.Close()
			continue
		}
		f.conns[c] = struct{}{}
		f.wg.Add(1)
		f.mu.Unlock()
		go f.forward(c, backend)
	}
}

func (f *frontDoor) forward(c net.Conn, backend string) {
	defer f.wg.Done()
	defer f.forget(c)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	b, err := f.s.dial(ctx, "tcp", backend)
	cancel()
	if err != nil {
		return
	}
	if !f.track(b) {
		b.Close()
		return
	}
	defer f.forget(b)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(b, c)
	go pipe(c, b)
	<-done // either side ended: end both
	c.Close()
	b.Close()
	<-done
}

// track adds a backend connection to the set dropAll closes, unless the
// client side was dropped meanwhile.
func (f *frontDoor) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *frontDoor) forget(c net.Conn) {
	c.Close()
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
}
