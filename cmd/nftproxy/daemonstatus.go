package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/nftproxy/nftproxy/daemon"
)

// defaultDaemonURL is where `services` asks the running daemon for its status: the default
// --metrics-bind-address of run.
const defaultDaemonURL = "http://127.0.0.1:10249"

// Bounds of asking the daemon: it answers from memory, so a slow answer is no answer.
const (
	daemonTimeout  = 3 * time.Second
	maxDaemonReply = 4 << 20
)

// fetchDaemonStatus asks the daemon at base (a URL, or host:port) for /debug/services.
func fetchDaemonStatus(ctx context.Context, base string) (*daemon.DebugServices, error) {
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	url := strings.TrimSuffix(base, "/") + daemon.DebugServicesPath
	ctx, cancel := context.WithTimeout(ctx, daemonTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("--daemon %q: %w", base, err)
	}
	// The daemon is on this node: no HTTP proxy of the environment stands in between.
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		// A *url.Error: it names the method and the URL.
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// A daemon older than /debug/services answers 404.
		return nil, fmt.Errorf("get %s: %s", url, resp.Status)
	}
	var d daemon.DebugServices
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxDaemonReply)).Decode(&d); err != nil {
		return nil, fmt.Errorf("decode %s: %w", url, err)
	}
	return &d, nil
}

// printDaemonStatus prints what the daemon at url reported: the last sync of each family,
// what is pending and when the next sync is, and the skipped objects with their reasons.
// Times are given relative to the daemon's own clock (its currentTime).
func printDaemonStatus(w io.Writer, url string, d *daemon.DebugServices) {
	now := d.CurrentTime
	fmt.Fprintf(w, "daemon %s (node %s, %s)\n", url, d.Node, now.Format(time.RFC3339))
	label := "last sync"
	for _, f := range d.Families {
		fmt.Fprintf(w, "  %-10s %-4s  %s\n", label, f.Family, familySyncLine(f, now))
		label = ""
	}

	pe := d.Pending
	var what []string
	if pe.ServiceChanges > 0 {
		what = append(what, plural(pe.ServiceChanges, "Service change"))
	}
	if pe.EndpointSliceChanges > 0 {
		what = append(what, plural(pe.EndpointSliceChanges, "EndpointSlice change"))
	}
	if n := len(pe.Services) + pe.ServicesOmitted; n > 0 {
		what = append(what, plural(n, "Service")+" not programmed")
	}
	line := "nothing"
	switch {
	case len(what) > 0:
		line = strings.Join(what, ", ")
	case pe.Since != nil:
		line = "a new snapshot"
	}
	if pe.Since != nil {
		line += ", waiting for " + age(now.Sub(*pe.Since))
	}
	next := pe.NextSync
	switch {
	case pe.NextSync == daemon.NextSyncNone && pe.NextSyncAt != nil:
		next = "periodic in " + age(pe.NextSyncAt.Sub(now))
	case pe.NextSyncAt != nil:
		next += " in " + age(pe.NextSyncAt.Sub(now))
	}
	fmt.Fprintf(w, "  %-10s %s; next sync: %s\n", "pending", line, next)
	if len(pe.Services) > 0 {
		fmt.Fprintf(w, "      %s%s\n", strings.Join(pe.Services, " "), more(pe.ServicesOmitted))
	}

	sk := d.Skipped
	if sk.Total == 0 {
		fmt.Fprintf(w, "  %-10s none\n", "skipped")
		return
	}
	fmt.Fprintf(w, "  %-10s %s that cannot be turned into rules\n", "skipped", plural(sk.Total, "object"))
	for _, o := range sk.Objects {
		name := o.Name
		if o.Namespace != "" {
			name = o.Namespace + "/" + o.Name
		}
		// A reason may hold several lines (one per bad entry of a slice): indent them all.
		fmt.Fprintf(w, "      %s %s: %s\n", o.Kind, name, strings.ReplaceAll(o.Reason, "\n", "\n        "))
	}
	if sk.Omitted > 0 {
		fmt.Fprintf(w, "     %s\n", more(sk.Omitted))
	}
}

// familySyncLine describes the last sync of a family, as of now.
func familySyncLine(f daemon.FamilySync, now time.Time) string {
	a := f.LastSync
	if a == nil {
		return "none yet"
	}
	took := time.Duration(a.DurationSeconds * float64(time.Second)).Round(time.Microsecond)
	parts := []string{a.Result}
	if a.Kind != "" {
		parts = append(parts, a.Kind)
	}
	if a.Result == daemon.ResultOK {
		parts = append(parts, plural(a.Objects, "object")+" written")
	}
	parts = append(parts, "took "+took.String(), age(now.Sub(a.Time))+" ago")
	s := strings.Join(parts, ", ")
	if a.Result != daemon.ResultOK {
		s += fmt.Sprintf(" (%d in a row", f.ConsecutiveFailures)
		if f.LastSuccess != nil {
			s += "; last success " + age(now.Sub(*f.LastSuccess)) + " ago"
		}
		s += "): " + a.Error
	}
	return s
}

// age prints a duration to the second, or to the millisecond under a second.
func age(d time.Duration) string {
	if d < time.Second && d > -time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// plural is "1 thing" or "n things".
func plural(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}

// more is " (and n more)" when n > 0.
func more(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" (and %d more)", n)
}
