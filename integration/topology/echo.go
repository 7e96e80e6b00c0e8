package topology

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// StartEcho starts echo servers inside ns listening on addrPort for the
// given network: "tcp", "udp", or "tcp+udp" (also "both") for both. They are
// stopped in t.Cleanup. The address must be assigned in ns (use a specific
// address, not the wildcard, so UDP replies come from the address asked).
//
// TCP: each accepted connection gets one line
// "<local addr:port> <remote addr:port>\n" and is then closed.
// UDP: each datagram is answered with the same line, where local is the
// address:port listened on and remote is the sender.
func StartEcho(t testing.TB, ns *NetNS, network string, addrPort netip.AddrPort) {
	t.Helper()
	var nets []string
	switch network {
	case "tcp", "udp":
		nets = []string{network}
	case "tcp+udp", "both":
		nets = []string{"tcp", "udp"}
	default:
		t.Fatalf("StartEcho: unknown network %q", network)
	}
	for _, nw := range nets {
		var closer interface{ Close() error }
		var wg sync.WaitGroup
		err := ns.Do(func() error {
			if nw == "tcp" {
				ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(addrPort))
				if err != nil {
					return err
				}
				closer = ln
				wg.Go(func() { serveTCP(ln) })
				return nil
			}
			pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addrPort))
			if err != nil {
				return err
			}
			closer = pc
			wg.Go(func() { serveUDP(pc) })
			return nil
		})
		if err != nil {
			t.Fatalf("StartEcho %s %s in %s: %v", nw, addrPort, ns.Name, err)
		}
		t.Cleanup(func() {
			closer.Close()
			wg.Wait()
		})
	}
}

func serveTCP(ln *net.TCPListener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		wg.Go(func() {
			defer c.Close()
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			line := replyLine(c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort())
			c.Write([]byte(line))
		})
	}
}

func serveUDP(pc *net.UDPConn) {
	local := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	buf := make([]byte, 64*1024)
	for {
		_, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		pc.WriteToUDPAddrPort([]byte(replyLine(local, from)), from)
	}
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func replyLine(local, remote netip.AddrPort) string {
	return unmap(local).String() + " " + unmap(remote).String() + "\n"
}

// Reply is what an echo server answered.
type Reply struct {
	// Server is the address:port the server saw as its local address
	// (after any DNAT: the backend actually reached).
	Server netip.AddrPort
	// Source is the address:port the server saw as the peer (after any SNAT).
	Source netip.AddrPort
}

// String formats the reply as "server=<addr:port> source=<addr:port>".
func (r Reply) String() string {
	return fmt.Sprintf("server=%s source=%s", r.Server, r.Source)
}

// ParseReply parses an echo server line "<server> <source>".
func ParseReply(line string) (Reply, error) {
	f := strings.Fields(line)
	if len(f) != 2 {
		return Reply{}, fmt.Errorf("malformed echo reply %q", line)
	}
	s, err := netip.ParseAddrPort(f[0])
	if err != nil {
		return Reply{}, fmt.Errorf("malformed echo reply %q: %w", line, err)
	}
	src, err := netip.ParseAddrPort(f[1])
	if err != nil {
		return Reply{}, fmt.Errorf("malformed echo reply %q: %w", line, err)
	}
	return Reply{Server: unmap(s), Source: unmap(src)}, nil
}

// Dial connects from inside ns to target over network ("tcp" or "udp")
// with an ephemeral source port and returns the parsed echo reply. The
// whole exchange (connect, send, receive) is bounded by timeout. For UDP it
// uses a connected socket, sends one datagram and waits for the answer, so
// an ICMP port unreachable surfaces as a refused error (see IsRefused).
func Dial(ns *NetNS, network string, target netip.AddrPort, timeout time.Duration) (Reply, error) {
	return DialFrom(ns, network, 0, target, timeout)
}

// DialFrom is Dial with a fixed local source port (0 means ephemeral), e.g.
// for UDP tests that must reuse one 5-tuple (one conntrack entry). The
// source address is chosen by routing. SO_REUSEADDR is set so a TCP port
// can be reused quickly.
func DialFrom(ns *NetNS, network string, localPort uint16, target netip.AddrPort, timeout time.Duration) (Reply, error) {
	var r Reply
	err := ns.Do(func() error {
		var err error
		r, err = dialLocked(network, localPort, target, timeout)
		return err
	})
	return r, err
}

func dialLocked(network string, localPort uint16, target netip.AddrPort, timeout time.Duration) (Reply, error) {
	deadline := time.Now().Add(timeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	d := net.Dialer{
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	var unspec netip.Addr
	if target.Addr().Unmap().Is4() {
		unspec = netip.IPv4Unspecified()
	} else {
		unspec = netip.IPv6Unspecified()
	}
	nw := network
	switch network {
	case "tcp":
		nw = "tcp6"
		if target.Addr().Unmap().Is4() {
			nw = "tcp4"
		}
		if localPort != 0 {
			d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(unspec, localPort))
		}
	case "udp":
		nw = "udp6"
		if target.Addr().Unmap().Is4() {
			nw = "udp4"
		}
		if localPort != 0 {
			d.LocalAddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(unspec, localPort))
		}
	default:
		return Reply{}, fmt.Errorf("dial: unknown network %q", network)
	}
	target = unmap(target)
	c, err := d.DialContext(ctx, nw, target.String())
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	if err := c.SetDeadline(deadline); err != nil {
		return Reply{}, err
	}
	if network == "udp" {
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return Reply{}, err
		}
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			return Reply{}, err
		}
		return ParseReply(string(buf[:n]))
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return Reply{}, fmt.Errorf("read from %s: %w", target, err)
	}
	return ParseReply(line)
}

// IsRefused reports whether err is a refused connection: ECONNREFUSED from
// a TCP RST, or from an ICMP port unreachable on a connected UDP socket.
// A timeout is not a refusal.
func IsRefused(err error) bool {
	return err != nil && errors.Is(err, syscall.ECONNREFUSED)
}

// IsTimeout reports whether err is a timeout (deadline exceeded while
// connecting or waiting for the answer), i.e. the packets were dropped.
func IsTimeout(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// IsUnreachable reports whether err is a host or network unreachable error
// (an ICMP destination unreachable other than port unreachable, or no route).
func IsUnreachable(err error) bool {
	return err != nil && (errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH))
}
