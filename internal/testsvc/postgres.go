// Package testsvc starts real backing services (PostgreSQL, ...) as child
// processes on free loopback ports for tests, and tears them down when the
// test ends. Nothing here is used outside tests.
//
// A missing service binary is a test failure with a clear message, never a
// skip: the guarantees these tests measure are only worth something when they
// run.
package testsvc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresBinDirEnv names an environment variable that, when set, is the
// directory holding initdb and postgres. Without it the newest
// /usr/lib/postgresql/*/bin is used, then whatever initdb $PATH finds.
const PostgresBinDirEnv = "CHATD_PG_BINDIR"

// postgresUser is the superuser initdb creates and tests connect as (trust
// authentication, loopback only).
const postgresUser = "postgres"

// Postgres is a throwaway PostgreSQL server: its own data directory, its own
// port on 127.0.0.1, fsync off. Methods are safe for concurrent use, except
// that Stop and Start must not race each other.
type Postgres struct {
	binDir  string
	dir     string // owns data/, sock/ and postgres.log
	dataDir string
	sockDir string
	logPath string
	port    int
	dbName  string // the fresh database URL points at
	cred    *syscall.Credential
	hold    *portHold // the port, while stopped

	dbSeq atomic.Int64

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	closed bool
}

// StartPostgres initialises a new cluster in a temporary directory, starts
// it on a free loopback port, waits until it accepts connections and creates
// a fresh database that URL points at. The server is stopped and its
// directory removed when t ends. Any failure is fatal to t.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	p, err := NewPostgres()
	if err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("testsvc: %v", err)
		}
	})
	return p
}

// NewPostgres is StartPostgres for callers without a testing.TB (TestMain):
// the caller must call Close.
func NewPostgres() (*Postgres, error) {
	binDir, err := postgresBinDir()
	if err != nil {
		return nil, err
	}
	p := &Postgres{binDir: binDir, dbName: "chatd"}
	if os.Geteuid() == 0 {
		// PostgreSQL refuses to run as root: run it as the postgres user.
		cred, err := userCredential(postgresUser)
		if err != nil {
			return nil, fmt.Errorf("postgres: running as root needs a %q system user to run the server as: %w", postgresUser, err)
		}
		p.cred = cred
	}
	// Not t.TempDir: its parents are private to root, and the server, running
	// as another user, must reach this directory.
	p.dir, err = os.MkdirTemp("", "chatd-pg-")
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			p.stopProcess()
			os.RemoveAll(p.dir)
		}
	}()
	p.dataDir = filepath.Join(p.dir, "data")
	p.sockDir = filepath.Join(p.dir, "sock")
	p.logPath = filepath.Join(p.dir, "postgres.log")
	for _, d := range []string{p.dataDir, p.sockDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
	}
	if p.cred != nil {
		for _, d := range []string{p.dir, p.dataDir, p.sockDir} {
			if err := os.Chown(d, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
				return nil, fmt.Errorf("postgres: %w", err)
			}
		}
	}
	if err := p.initdb(); err != nil {
		return nil, err
	}

	// A free port can be taken by someone else between probing and binding:
	// try a few.
	var startErr error
	for range 5 {
		p.port, err = freePort()
		if err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
		if startErr = p.start(); startErr == nil {
			break
		}
		if !strings.Contains(startErr.Error(), "in use") {
			return nil, startErr
		}
	}
	if startErr != nil {
		return nil, startErr
	}
	if err := p.createDatabase(p.dbName); err != nil {
		return nil, err
	}
	ok = true
	return p, nil
}

// URL returns a postgres:// URL of the fresh database made for this server.
func (p *Postgres) URL() string { return p.urlFor(p.dbName) }

// Port returns the loopback port the server listens on.
func (p *Postgres) Port() int { return p.port }

// NewDatabase creates another empty database on the same server and returns
// its URL. It lives as long as the server.
func (p *Postgres) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("chatd_%d", p.dbSeq.Add(1))
	if err := p.createDatabase(name); err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	return p.urlFor(name)
}

// Exec runs sql (with optional arguments) against the database URL points
// at, failing t on error.
func (p *Postgres) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if err := p.exec(p.URL(), sql, args...); err != nil {
		t.Fatalf("testsvc: postgres: %v", err)
	}
}

// Stop shuts the server down (fast shutdown: clients are disconnected) and
// waits for it to exit. The data directory and port are kept for Start.
func (p *Postgres) Stop(t testing.TB) {
	t.Helper()
	if err := p.stopProcess(); err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	hold, err := holdPort(p.port)
	if err != nil {
		t.Fatalf("testsvc: postgres: %v", err)
	}
	p.hold = hold
}

// Start starts a stopped server again on the same port and data directory
// and waits until it accepts connections.
func (p *Postgres) Start(t testing.TB) {
	t.Helper()
	p.hold.release()
	p.hold = nil
	if err := p.start(); err != nil {
		t.Fatalf("testsvc: %v", err)
	}
}

// Close stops the server and removes its directory. It is idempotent.
func (p *Postgres) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.hold.release()
	err := p.stopProcess()
	if rmErr := os.RemoveAll(p.dir); rmErr != nil && err == nil {
		err = fmt.Errorf("postgres: %w", rmErr)
	}
	return err
}

func (p *Postgres) urlFor(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(postgresUser),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

func (p *Postgres) initdb() error {
	cmd := p.command("initdb",
		"-D", p.dataDir,
		"-U", postgresUser,
		"-A", "trust",
		"-E", "UTF8",
		"--locale=C",
		"--no-sync",
		"--no-instructions",
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("postgres: initdb: %w\n%s", err, out.String())
	}
	return nil
}

// start launches the server process and waits until it accepts connections.
func (p *Postgres) start() error {
	p.mu.Lock()
	if p.cmd != nil {
		p.mu.Unlock()
		return errors.New("postgres: start: already running")
	}
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.mu.Unlock()
		return fmt.Errorf("postgres: %w", err)
	}
	logStart, _ := logFile.Seek(0, io.SeekEnd)
	cmd := p.command("postgres",
		"-D", p.dataDir,
		"-p", strconv.Itoa(p.port),
		"-k", p.sockDir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off",
		"-c", "max_connections=200",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// If the test binary dies without cleaning up, take the server with it.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		logFile.Close()
		p.mu.Unlock()
		return fmt.Errorf("postgres: start: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logFile.Close()
		close(exited)
	}()
	p.cmd, p.exited = cmd, exited
	p.mu.Unlock()

	deadline := time.Now().Add(30 * time.Second)
	for {
		err := p.ping()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			p.mu.Lock()
			p.cmd, p.exited = nil, nil
			p.mu.Unlock()
			return fmt.Errorf("postgres: server on port %d exited during start; log:\n%s", p.port, p.logSince(logStart))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stopProcess()
			return fmt.Errorf("postgres: server on port %d not ready after 30s: %v; log:\n%s", p.port, err, p.logSince(logStart))
		}
	}
}

// stopProcess asks for a fast shutdown (SIGINT), then kills after 15 s.
func (p *Postgres) stopProcess() error {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.cmd, p.exited = nil, nil
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
		return nil
	case <-time.After(15 * time.Second):
	}
	cmd.Process.Kill()
	<-exited
	return fmt.Errorf("postgres: server on port %d ignored fast shutdown for 15s and was killed", p.port)
}

func (p *Postgres) ping() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.urlFor("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.Ping(ctx)
}

func (p *Postgres) createDatabase(name string) error {
	if err := p.exec(p.urlFor("postgres"), "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("postgres: create database %s: %w", name, err)
	}
	return nil
}

func (p *Postgres) exec(dbURL, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

func (p *Postgres) logSince(offset int64) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if offset > 0 && offset <= int64(len(b)) {
		b = b[offset:]
	}
	return string(b)
}

// command builds an exec.Cmd for a PostgreSQL binary, run as the postgres
// user when the test runs as root.
func (p *Postgres) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(p.binDir, name), args...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	return cmd
}

func postgresBinDir() (string, error) {
	hasBins := func(dir string) bool {
		for _, b := range []string{"initdb", "postgres"} {
			if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if dir := os.Getenv(PostgresBinDirEnv); dir != "" {
		if !hasBins(dir) {
			return "", fmt.Errorf("postgres: %s=%s holds no initdb and postgres binaries", PostgresBinDirEnv, dir)
		}
		return dir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if hasBins(d) {
			return d, nil
		}
	}
	if path, err := exec.LookPath("initdb"); err == nil && hasBins(filepath.Dir(path)) {
		return filepath.Dir(path), nil
	}
	return "", fmt.Errorf("postgres: PostgreSQL server binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin or $PATH; install PostgreSQL (Debian: apt-get install postgresql) or set %s", PostgresBinDirEnv)
}

// versionOf extracts N from /usr/lib/postgresql/N/bin.
func versionOf(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

func userCredential(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, err
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, err
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
