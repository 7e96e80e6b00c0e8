package apiserver

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is a started server.
type process struct {
	name   string
	cmd    *exec.Cmd
	log    string
	offset int64 // where this process's output starts in log
	done   chan struct{}
	err    error
}

// spawn starts bin with args, with stdout and stderr appended to
// <Dir>/<name>.log, inside NetNS if set. The process is killed if the test
// binary dies (PR_SET_PDEATHSIG).
func (s *Server) spawn(name, bin string, args ...string) (*process, error) {
	if s.opts.NetNS != nil {
		args = append([]string{"netns", "exec", s.opts.NetNS.Name, bin}, args...)
		bin = "ip"
	}
	logPath := filepath.Join(s.Dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	fi, err := logf.Stat()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if name == "kube-apiserver" {
		s.restarts++
		fmt.Fprintf(logf, "==== start %d: %s\n", s.restarts, time.Now().Format(time.RFC3339Nano))
	}
	s.mu.Unlock()
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Dir = s.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := startLocked(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, offset: fi.Size(), done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// stop sends SIGTERM, then SIGKILL after stopTimeout, and waits for exit.
func (p *process) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// output returns what the process wrote to its log.
func (p *process) output() []byte {
	data, _ := os.ReadFile(p.log)
	if int64(len(data)) >= p.offset {
		data = data[p.offset:]
	}
	return data
}

func (p *process) tail() string {
	return fmt.Sprintf("last lines of %s:\n%s", p.log, lastLines(p.output(), 30))
}

func (p *process) portInUse() bool {
	return bytes.Contains(p.output(), []byte("address already in use"))
}

func lastLines(data []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Children get PR_SET_PDEATHSIG, which fires when the THREAD that forked
// them exits, not the process. Go may end threads (one whose goroutine exits
// while locked to it), so every child is forked from one goroutine locked to
// its thread for the life of the process.
var (
	spawnOnce sync.Once
	spawnReqs = make(chan func())
)

func startLocked(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		go func() {
			runtime.LockOSThread()
			for f := range spawnReqs {
				f()
			}
		}()
	})
	errc := make(chan error, 1)
	spawnReqs <- func() { errc <- cmd.Start() }
	return <-errc
}
