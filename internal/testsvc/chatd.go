package testsvc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Chatd is a chatd server process started by StartChatd: the real binary,
// built from this module, listening on its own port on 127.0.0.1. Its
// methods are safe for concurrent use.
type Chatd struct {
	t    testing.TB
	addr string // 127.0.0.1:PORT
	cmd  *exec.Cmd
	logs *procLog

	exited  chan struct{} // closed once the process has been waited for
	waitErr error         // set before exited is closed

	mu        sync.Mutex
	observed  bool // the test signalled or waited: an exit is not a surprise
	signalled bool // the test sent a signal: cleanup sends no SIGTERM
}

// chatdStartTimeout bounds how long a fresh process may take to answer
// /health/live (a race-enabled binary on a busy machine is slow to start).
const chatdStartTimeout = 30 * time.Second

// chatdStopTimeout is how long cleanup waits after SIGTERM before SIGKILL.
const chatdStopTimeout = 15 * time.Second

// StartChatd starts the chatd binary (built once per test process by
// ChatdBinary) with args (e.g. "serve") on a free 127.0.0.1 port and waits
// until GET /health/live answers 200. Any failure is fatal to t.
//
// The process gets a hermetic environment: the parent's CHAT_* variables
// are dropped, CHAT_ADDR is set to the chosen port, and, unless env sets
// them, CHAT_DATABASE_URL points at an SQLite file in a temporary
// directory (also the working directory), CHAT_CLUSTER_ADDR at another free
// loopback port and CHAT_LOG_FORMAT is text. env adds or overrides
// variables; it must not set CHAT_ADDR. An empty value in env still sets
// the variable (chatd treats it as unset).
//
// Every line the process writes goes to t.Logf (shown when the test fails
// or with -v) and is kept for Logs. When t ends, a process still running
// gets SIGTERM (unless the test signalled it itself), then SIGKILL after
// 15 s. The test fails if the process had to be killed, if it exited
// non-zero after cleanup's SIGTERM, if it died during the test without the
// test signalling or waiting for it, or if its log reports a data race
// (the binary is race-enabled when the test binary is).
func StartChatd(t testing.TB, env map[string]string, args ...string) *Chatd {
	t.Helper()
	if _, ok := env["CHAT_ADDR"]; ok {
		t.Fatalf("testsvc: StartChatd picks CHAT_ADDR itself; do not set it in env")
	}
	bin := ChatdBinary(t)
	dir := t.TempDir()

	// A free port can be taken by someone else between probing and binding:
	// try a few.
	var lastErr error
	for range 5 {
		c, err := startChatd(t, bin, dir, env, args)
		if err == nil {
			return c
		}
		lastErr = err
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	t.Fatalf("testsvc: %v", lastErr)
	return nil
}

func startChatd(t testing.TB, bin, dir string, env map[string]string, args []string) (*Chatd, error) {
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("chatd: %w", err)
	}
	c := &Chatd{
		t:      t,
		addr:   net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		logs:   &procLog{t: t},
		exited: make(chan struct{}),
	}
	defaults := map[string]string{
		"CHAT_DATABASE_URL": filepath.Join(dir, "chat.db"),
		"CHAT_LOG_FORMAT":   "text",
	}
	if _, ok := env["CHAT_CLUSTER_ADDR"]; !ok {
		cport, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("chatd: %w", err)
		}
		defaults["CHAT_CLUSTER_ADDR"] = net.JoinHostPort("127.0.0.1", strconv.Itoa(cport))
	}
	vars := make(map[string]string)
	maps.Copy(vars, defaults)
	maps.Copy(vars, env)
	vars["CHAT_ADDR"] = c.addr

	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = chatdEnv(os.Environ(), vars)
	if _, ok := os.LookupEnv("GORACE"); !ok {
		// A race-enabled binary sleeps 1 s at exit by default; every stop
		// would pay it.
		cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=50")
	}
	cmd.Stdout, cmd.Stderr = c.logs, c.logs
	// If the test binary dies without cleaning up, take the server with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("chatd: start %s: %w", bin, err)
	}
	c.cmd = cmd
	go func() {
		c.waitErr = cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(c.stop)

	if err := c.waitLive(); err != nil {
		c.mu.Lock()
		c.observed = true // reported here, not again by cleanup
		c.mu.Unlock()
		c.kill()
		return nil, err
	}
	return c, nil
}

// waitLive polls /health/live until it answers 200, the process exits or
// chatdStartTimeout passes.
func (c *Chatd) waitLive() error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(chatdStartTimeout)
	var lastErr error
	for {
		resp, err := client.Get(c.URL() + "/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("GET /health/live: %s", resp.Status)
		}
		lastErr = err
		select {
		case <-c.exited:
			return fmt.Errorf("chatd on %s exited during start (%v); log:\n%s", c.addr, c.waitErr, c.Logs())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("chatd on %s not live after %s: %v; log:\n%s", c.addr, chatdStartTimeout, lastErr, c.Logs())
		}
	}
}

// URL returns the server's base URL, http://127.0.0.1:PORT.
func (c *Chatd) URL() string { return "http://" + c.addr }

// WSURL returns the WebSocket endpoint, ws://127.0.0.1:PORT/socket/websocket
// (without query: add vsn and token).
func (c *Chatd) WSURL() string { return "ws://" + c.addr + "/socket/websocket" }

// Addr returns the listen address, 127.0.0.1:PORT.
func (c *Chatd) Addr() string { return c.addr }

// Pid returns the process id.
func (c *Chatd) Pid() int { return c.cmd.Process.Pid }

// Signal sends sig to the process. Signalling a process that has exited is
// not an error.
func (c *Chatd) Signal(sig os.Signal) error {
	c.mu.Lock()
	c.observed, c.signalled = true, true
	c.mu.Unlock()
	err := c.cmd.Process.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// Wait blocks until the process exits and returns its exit error: nil for
// exit status 0, an *exec.ExitError otherwise.
func (c *Chatd) Wait() error {
	c.mu.Lock()
	c.observed = true
	c.mu.Unlock()
	<-c.exited
	return c.waitErr
}

// WaitTimeout is Wait bounded by d; it fails with an error naming the
// timeout when the process is still running after d (and leaves it
// running: cleanup stops it).
func (c *Chatd) WaitTimeout(d time.Duration) error {
	c.mu.Lock()
	c.observed = true
	c.mu.Unlock()
	select {
	case <-c.exited:
		return c.waitErr
	case <-time.After(d):
		return fmt.Errorf("chatd on %s still running after %s", c.addr, d)
	}
}

// Done is closed when the process has exited.
func (c *Chatd) Done() <-chan struct{} { return c.exited }

// Logs returns everything the process has written so far (stderr and
// stdout interleaved, as lines).
func (c *Chatd) Logs() string { return c.logs.String() }

// stop is the cleanup: SIGTERM, SIGKILL after chatdStopTimeout, then the
// checks described at StartChatd.
func (c *Chatd) stop() {
	c.mu.Lock()
	observed, signalled := c.observed, c.signalled
	c.mu.Unlock()
	defer func() {
		c.logs.finish() // no t.Logf after the test's cleanups
		if strings.Contains(c.logs.String(), "WARNING: DATA RACE") {
			c.t.Errorf("testsvc: chatd on %s reported a data race; see its log above", c.addr)
		}
	}()
	select {
	case <-c.exited:
		if !observed && c.waitErr != nil {
			c.t.Errorf("testsvc: chatd on %s died during the test: %v", c.addr, c.waitErr)
		}
		return
	default:
	}
	if !signalled {
		// A signal the test sent is already being handled; a second
		// SIGTERM would kill the process mid-shutdown.
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-c.exited:
	case <-time.After(chatdStopTimeout):
		c.kill()
		c.t.Errorf("testsvc: chatd on %s still running %s after SIGTERM and was killed", c.addr, chatdStopTimeout)
		return
	}
	if !signalled && c.waitErr != nil {
		c.t.Errorf("testsvc: chatd on %s exited with %v after SIGTERM, want status 0", c.addr, c.waitErr)
	}
}

func (c *Chatd) kill() {
	_ = c.cmd.Process.Kill()
	<-c.exited
}

// chatdEnv returns base without CHAT_* variables, plus vars.
func chatdEnv(base []string, vars map[string]string) []string {
	out := make([]string, 0, len(base)+len(vars))
	for _, kv := range base {
		if !strings.HasPrefix(kv, "CHAT_") {
			out = append(out, kv)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		out = append(out, k+"="+vars[k])
	}
	return out
}

// procLog collects a process's output lines, passing each to t.Logf until
// finish.
type procLog struct {
	t       testing.TB
	mu      sync.Mutex
	buf     bytes.Buffer
	partial []byte
	done    bool
}

func (l *procLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		if !l.done {
			l.t.Logf("chatd: %s", l.partial[:i])
		}
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

func (l *procLog) finish() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.partial) > 0 && !l.done {
		l.t.Logf("chatd: %s", l.partial)
	}
	l.partial = nil
	l.done = true
}

func (l *procLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Another process may take it before the caller binds it.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatalf("testsvc: free port: %v", err)
	}
	return port
}

var chatdBuild struct {
	once sync.Once
	path string
	err  error
}

// ChatdBinary returns the path of the chatd binary built from this
// module's ./cmd/chatd, building it on the first call in the test process.
// It is race-enabled when the test binary is. A build failure is fatal to
// t (and to every later caller).
//
// The binary lives under the user cache directory, keyed by module root,
// and is replaced atomically, so parallel test processes (go test ./...)
// and other checkouts never see a half-written file, and nothing piles up
// in the temporary directory.
func ChatdBinary(t testing.TB) string {
	t.Helper()
	chatdBuild.once.Do(func() {
		chatdBuild.path, chatdBuild.err = buildChatd()
	})
	if chatdBuild.err != nil {
		t.Fatalf("testsvc: %v", chatdBuild.err)
	}
	return chatdBuild.path
}

func buildChatd() (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		if root := os.Getenv("GOROOT"); root != "" {
			goBin = filepath.Join(root, "bin", "go")
		} else {
			return "", errors.New("chatd: the go command is not in $PATH; it is needed to build chatd for the test")
		}
	}
	root, err := moduleRoot(goBin)
	if err != nil {
		return "", err
	}
	race := testBinaryRace()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	sum := sha256.Sum256([]byte(root))
	dir := filepath.Join(cache, "chatd-testsvc", hex.EncodeToString(sum[:8]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("chatd: %w", err)
	}
	name := "chatd"
	if race {
		name = "chatd-race"
	}
	final := filepath.Join(dir, name)
	tmp, err := os.CreateTemp(dir, name+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("chatd: %w", err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op

	buildArgs := []string{"build", "-o", tmp.Name()}
	if race {
		buildArgs = append(buildArgs, "-race")
	}
	buildArgs = append(buildArgs, "./cmd/chatd")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, buildArgs...)
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("chatd: go %s (in %s): %w\n%s", strings.Join(buildArgs, " "), root, err, out.String())
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return "", fmt.Errorf("chatd: %w", err)
	}
	return final, nil
}

// moduleRoot finds the directory of this module's go.mod: `go env GOMOD`,
// else the nearest go.mod above the working directory.
func moduleRoot(goBin string) (string, error) {
	if out, err := exec.Command(goBin, "env", "GOMOD").Output(); err == nil {
		gomod := strings.TrimSpace(string(out))
		if gomod != "" && gomod != os.DevNull {
			return filepath.Dir(gomod), nil
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("chatd: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("chatd: no go.mod found above the working directory")
		}
		dir = parent
	}
}

// testBinaryRace reports whether the running binary was built with -race.
func testBinaryRace() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}
