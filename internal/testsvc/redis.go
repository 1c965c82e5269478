package testsvc

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RedisServerEnv names an environment variable that, when set, is the path of
// the redis-server binary. Without it /usr/bin/redis-server is used, then
// whatever redis-server $PATH finds.
const RedisServerEnv = "CHATD_REDIS_SERVER"

// Redis is a throwaway Redis server on its own loopback port, with no
// persistence (no RDB snapshots, no AOF): a restart starts empty, like a
// crashed cache. DEBUG is enabled (DEBUG SLEEP stalls the server for fault
// tests). Methods are safe for concurrent use, except that Stop and
// Start must not race each other.
type Redis struct {
	bin     string
	dir     string // working directory; holds redis.log
	logPath string
	port    int
	hold    *portHold // the port, while stopped
	extra   []string  // more redis-server arguments (a cluster node's)

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	closed bool
}

// StartRedis starts a Redis server on a free loopback port and waits until
// it answers PING. It is killed and its directory removed when t ends. Any
// failure, a missing redis-server binary included, is fatal to t.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	r, err := NewRedis()
	if err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("testsvc: %v", err)
		}
	})
	return r
}

// NewRedis is StartRedis for callers without a testing.TB (TestMain): the
// caller must call Close.
func NewRedis() (*Redis, error) {
	bin, err := redisServerBinary()
	if err != nil {
		return nil, err
	}
	r := &Redis{bin: bin}
	r.dir, err = os.MkdirTemp("", "chatd-redis-")
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	r.logPath = filepath.Join(r.dir, "redis.log")
	// A free port can be taken by someone else between probing and binding:
	// try a few.
	var startErr error
	for range 5 {
		if r.port, err = freePort(); err != nil {
			os.RemoveAll(r.dir)
			return nil, fmt.Errorf("redis: %w", err)
		}
		if startErr = r.start(); startErr == nil {
			return r, nil
		}
		if !strings.Contains(startErr.Error(), "in use") {
			break
		}
	}
	os.RemoveAll(r.dir)
	return nil, startErr
}

// URL returns the server's redis:// URL (database 0).
func (r *Redis) URL() string { return "redis://" + r.Addr() + "/0" }

// Addr returns the server's host:port.
func (r *Redis) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// Stop kills the server with SIGKILL, a crash: clients see their
// connections drop, and every key is gone. The port is kept for Start.
func (r *Redis) Stop(t testing.TB) {
	t.Helper()
	r.kill()
	hold, err := holdPort(r.port)
	if err != nil {
		t.Fatalf("testsvc: redis: %v", err)
	}
	r.hold = hold
}

// Start starts a stopped server again on the same port and waits until it
// answers PING.
func (r *Redis) Start(t testing.TB) {
	t.Helper()
	r.hold.release()
	r.hold = nil
	if err := r.start(); err != nil {
		t.Fatalf("testsvc: %v", err)
	}
}

// Freeze stops the server process (SIGSTOP) without closing anything: its
// connections stay open and silent, as across a network partition. Thaw
// resumes it.
func (r *Redis) Freeze(t testing.TB) {
	t.Helper()
	r.signal(t, syscall.SIGSTOP)
}

// Thaw resumes a server stopped by Freeze.
func (r *Redis) Thaw(t testing.TB) {
	t.Helper()
	r.signal(t, syscall.SIGCONT)
}

func (r *Redis) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	r.mu.Lock()
	cmd := r.cmd
	r.mu.Unlock()
	if cmd == nil {
		t.Fatalf("testsvc: redis: %v: server not running", sig)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatalf("testsvc: redis: %v: %v", sig, err)
	}
}

// Close kills the server and removes its directory. It is idempotent.
func (r *Redis) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	r.hold.release()
	r.kill()
	if err := os.RemoveAll(r.dir); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	return nil
}

// start launches the server process and waits until it answers PING.
func (r *Redis) start() error {
	r.mu.Lock()
	if r.cmd != nil {
		r.mu.Unlock()
		return errors.New("redis: start: already running")
	}
	logFile, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		r.mu.Unlock()
		return fmt.Errorf("redis: %w", err)
	}
	cmd := exec.Command(r.bin,
		"--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		// DEBUG SLEEP stalls the server without closing anything, for
		// tests of a busy Redis; loopback clients only.
		"--enable-debug-command", "local",
		"--dir", r.dir,
		"--daemonize", "no",
		"--logfile", "",
	)
	cmd.Args = append(cmd.Args, r.extra...)
	cmd.Dir = r.dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// If the test binary dies without cleaning up, take the server with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		r.mu.Unlock()
		return fmt.Errorf("redis: start %s: %w", r.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logFile.Close()
		close(exited)
	}()
	r.cmd, r.exited = cmd, exited
	r.mu.Unlock()

	deadline := time.Now().Add(20 * time.Second)
	for {
		err := r.ping()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			r.mu.Lock()
			r.cmd, r.exited = nil, nil
			r.mu.Unlock()
			return fmt.Errorf("redis: server on port %d exited during start; log:\n%s", r.port, r.log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.kill()
			return fmt.Errorf("redis: server on port %d not answering PING after 20s: %v; log:\n%s", r.port, err, r.log())
		}
	}
}

// kill sends SIGKILL and waits for the process to be reaped.
func (r *Redis) kill() {
	r.mu.Lock()
	cmd, exited := r.cmd, r.exited
	r.cmd, r.exited = nil, nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-exited
}

// ping sends one inline PING and expects +PONG.
func (r *Redis) ping() error {
	conn, err := net.DialTimeout("tcp", r.Addr(), time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line = strings.TrimSpace(line); line != "+PONG" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

func (r *Redis) log() string {
	b, err := os.ReadFile(r.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return string(b)
}

func redisServerBinary() (string, error) {
	isFile := func(p string) bool {
		fi, err := os.Stat(p)
		return err == nil && !fi.IsDir()
	}
	if p := os.Getenv(RedisServerEnv); p != "" {
		if !isFile(p) {
			return "", fmt.Errorf("redis: %s=%s is not a file", RedisServerEnv, p)
		}
		return p, nil
	}
	if p := "/usr/bin/redis-server"; isFile(p) {
		return p, nil
	}
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("redis: redis-server not found at /usr/bin/redis-server or in $PATH; install Redis (Debian: apt-get install redis-server) or set %s", RedisServerEnv)
}
