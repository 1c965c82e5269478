package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/internal/testsvc"
	"github.com/google/uuid"
)

// One PostgreSQL server serves every test that does not stop it; each test
// gets its own database on it. It starts on first use and stops in
// TestMain.
var (
	sharedPGOnce sync.Once
	sharedPG     *testsvc.Postgres
	sharedPGErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedPG != nil {
		if err := sharedPG.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	os.Exit(code)
}

func sharedPostgres(t testing.TB) *testsvc.Postgres {
	t.Helper()
	sharedPGOnce.Do(func() { sharedPG, sharedPGErr = testsvc.NewPostgres() })
	if sharedPGErr != nil {
		t.Fatalf("testsvc: %v", sharedPGErr)
	}
	return sharedPG
}

// backend is one SQL database the store runs on. Every test of the
// contract runs against each (the conformance suite).
type backend struct {
	name string
	// url returns the URL of a fresh, empty database.
	url func(t testing.TB) string
}

var backends = []backend{
	{
		name: "postgres",
		url:  func(t testing.TB) string { return sharedPostgres(t).NewDatabase(t) },
	},
	{
		name: "sqlite",
		url:  func(t testing.TB) string { return filepath.Join(t.TempDir(), "chat.db") },
	},
}

// forEachBackend runs f as a subtest per backend.
func forEachBackend(t *testing.T, f func(t *testing.T, b backend)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { f(t, b) })
	}
}

// openDB opens url and closes it when t ends.
func openDB(t testing.TB, url string) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	log := testsvc.Logger(t)
	if _, bench := t.(*testing.B); bench {
		log = nil // benchmarks print every log line
	}
	db, err := Open(ctx, url, log)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return db
}

// migratedDB is a fresh database of b with the schema applied.
func migratedDB(t testing.TB, b backend) *DB {
	t.Helper()
	db := openDB(t, b.url(t))
	if err := db.MigrateUp(context.Background()); err != nil {
		t.Fatalf("MigrateUp: %v", err)
	}
	return db
}

// newMessage builds a message with a fresh UUIDv7 id.
func newMessage(t testing.TB, room, user, body string) chat.Message {
	t.Helper()
	id, err := uuid.NewV7()
	if err != nil {
		t.Fatal(err)
	}
	return chat.Message{
		ID:         id.String(),
		Room:       room,
		UserID:     user,
		Body:       body,
		InsertedAt: time.Now().UTC(),
	}
}

// storedMessages reads every row of the messages table, by id.
func storedMessages(t testing.TB, db *DB) map[string]chat.Message {
	t.Helper()
	var rows []messageRow
	if err := db.gorm.Order("id").Find(&rows).Error; err != nil {
		t.Fatalf("read messages: %v", err)
	}
	out := make(map[string]chat.Message, len(rows))
	for _, r := range rows {
		if _, dup := out[r.ID]; dup {
			t.Fatalf("message %s stored twice", r.ID)
		}
		out[r.ID] = r.message()
	}
	return out
}

// countRows counts rows of the messages table.
func countRows(t testing.TB, db *DB) int64 {
	t.Helper()
	var n int64
	if err := db.gorm.Model(&messageRow{}).Count(&n).Error; err != nil {
		t.Fatalf("count messages: %v", err)
	}
	return n
}

// sameMessage compares a message as sent with one read back: the store
// keeps microseconds of InsertedAt.
func sameMessage(want, got chat.Message) bool {
	return want.ID == got.ID && want.Room == got.Room && want.UserID == got.UserID &&
		want.Body == got.Body && want.InsertedAt.Truncate(time.Microsecond).Equal(got.InsertedAt)
}

// checkStored fails t unless the table holds exactly the messages of want,
// each once and intact.
func checkStored(t testing.TB, db *DB, want []chat.Message) {
	t.Helper()
	got := storedMessages(t, db)
	if len(got) != len(want) {
		t.Errorf("table holds %d messages, want %d", len(got), len(want))
	}
	missing := 0
	for _, m := range want {
		g, ok := got[m.ID]
		if !ok {
			missing++
			continue
		}
		if !sameMessage(m, g) {
			t.Errorf("message %s stored as %+v, want %+v", m.ID, g, m)
		}
	}
	if missing > 0 {
		t.Errorf("%d accepted messages missing from the table", missing)
	}
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	t.Run("dialects", func(t *testing.T) {
		for _, b := range backends {
			db := openDB(t, b.url(t))
			want := Postgres
			if b.name == "sqlite" {
				want = SQLite
			}
			if db.Dialect() != want {
				t.Errorf("%s: Dialect() = %q, want %q", b.name, db.Dialect(), want)
			}
			if err := db.Ping(ctx); err != nil {
				t.Errorf("%s: Ping: %v", b.name, err)
			}
		}
	})
	t.Run("sqlite pragmas", func(t *testing.T) {
		db := openDB(t, "sqlite://"+filepath.Join(t.TempDir(), "x.db"))
		var mode string
		if err := db.sql.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
			t.Fatal(err)
		}
		if mode != "wal" {
			t.Errorf("journal_mode = %q, want wal", mode)
		}
		var busy int
		if err := db.sql.QueryRowContext(ctx, "PRAGMA busy_timeout").Scan(&busy); err != nil {
			t.Fatal(err)
		}
		if busy != int(sqliteBusyTimeout.Milliseconds()) {
			t.Errorf("busy_timeout = %d, want %d", busy, sqliteBusyTimeout.Milliseconds())
		}
	})
	t.Run("errors", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		for _, url := range []string{
			"",
			"postgres://postgres:secret@127.0.0.1:1/nope?sslmode=disable",
			filepath.Join(t.TempDir(), "no", "such", "dir", "x.db"),
		} {
			db, err := Open(cctx, url, nil)
			if err == nil {
				db.Close()
				t.Errorf("Open(%q) succeeded", url)
				continue
			}
			if !strings.HasPrefix(err.Error(), "store: ") {
				t.Errorf("Open(%q) error %q lacks the store: prefix", url, err)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("Open error leaks the password: %v", err)
			}
		}
	})
}
