package store

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
)

// latestVersion is the newest migration in migrations/*/.
const latestVersion = 3

// tableExists reports whether the messages table exists.
func tableExists(t testing.TB, db *DB) bool {
	t.Helper()
	return db.gorm.Migrator().HasTable("messages")
}

func indexExists(t testing.TB, db *DB) bool {
	t.Helper()
	return db.gorm.Migrator().HasIndex(&messageRow{}, "messages_room_id_idx")
}

func checkVersion(t testing.TB, db *DB, want int64) {
	t.Helper()
	cur, latest, err := db.SchemaVersion(context.Background())
	if err != nil {
		t.Fatalf("SchemaVersion: %v", err)
	}
	if cur != want || latest != latestVersion {
		t.Fatalf("SchemaVersion = %d, %d; want %d, %d", cur, latest, want, latestVersion)
	}
}

func TestMigrations(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		db := openDB(t, b.url(t))

		// Both dialects ship the same versions.
		if err := db.MigrateUp(ctx); err != nil {
			t.Fatalf("MigrateUp: %v", err)
		}
		checkVersion(t, db, latestVersion)
		if !tableExists(t, db) || !indexExists(t, db) {
			t.Fatal("after up: messages table or its index missing")
		}
		// Up again is a no-op.
		if err := db.MigrateUp(ctx); err != nil {
			t.Fatalf("second MigrateUp: %v", err)
		}

		// Data survives a down/up of the index migration.
		w := newTestWriter(t, db, WriterConfig{})
		m := newMessage(t, "lobby", "ann", "kept")
		if err := w.Enqueue(m); err != nil {
			t.Fatal(err)
		}
		closeWriter(t, w)

		// Down goes one step at a time: first the tombstone column,
		if err := db.MigrateDown(ctx); err != nil {
			t.Fatalf("MigrateDown: %v", err)
		}
		checkVersion(t, db, 2)
		if !tableExists(t, db) || !indexExists(t, db) {
			t.Fatal("after one down: want the table and its index")
		}
		// then the index,
		if err := db.MigrateDown(ctx); err != nil {
			t.Fatalf("MigrateDown: %v", err)
		}
		checkVersion(t, db, 1)
		if !tableExists(t, db) || indexExists(t, db) {
			t.Fatal("after two downs: want the table without its index")
		}
		if err := db.MigrateDown(ctx); err != nil {
			t.Fatalf("second MigrateDown: %v", err)
		}
		checkVersion(t, db, 0)
		if tableExists(t, db) {
			t.Fatal("after three downs: messages table still there")
		}
		if err := db.MigrateDown(ctx); !errors.Is(err, ErrNothingToRollBack) {
			t.Fatalf("MigrateDown at version 0: %v, want ErrNothingToRollBack", err)
		}

		// And up again.
		if err := db.MigrateUp(ctx); err != nil {
			t.Fatalf("MigrateUp after down: %v", err)
		}
		checkVersion(t, db, latestVersion)
		if !tableExists(t, db) || !indexExists(t, db) {
			t.Fatal("after down and up: messages table or its index missing")
		}
		if n := countRows(t, db); n != 0 {
			t.Fatalf("recreated table holds %d rows", n)
		}
	})
}

func TestMigrateCommand(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		db := openDB(t, b.url(t))
		run := func(args ...string) (string, error) {
			var out bytes.Buffer
			err := RunMigrateCommand(ctx, db, args, &out)
			return out.String(), err
		}
		mustRun := func(args ...string) string {
			t.Helper()
			out, err := run(args...)
			if err != nil {
				t.Fatalf("migrate %v: %v\n%s", args, err, out)
			}
			return out
		}
		wantLines := func(out string, lines ...[]string) {
			t.Helper()
			for _, parts := range lines {
				found := false
				for l := range strings.SplitSeq(out, "\n") {
					all := true
					for _, p := range parts {
						all = all && strings.Contains(l, p)
					}
					found = found || all
				}
				if !found {
					t.Errorf("output lacks a line with %q:\n%s", parts, out)
				}
			}
		}

		out := mustRun("status")
		wantLines(out,
			[]string{"VERSION", "STATE", "APPLIED AT", "MIGRATION"},
			[]string{"1", "pending", "00001_create_messages.sql"},
			[]string{"2", "pending", "00002_index_messages_room_id.sql"},
			[]string{"3", "pending", "00003_messages_deleted_at.sql"})

		out = mustRun("up")
		wantLines(out,
			[]string{"OK", "00001_create_messages.sql"},
			[]string{"OK", "00002_index_messages_room_id.sql"},
			[]string{"OK", "00003_messages_deleted_at.sql"},
			[]string{"database is at version 3"})

		out = mustRun("status")
		wantLines(out,
			[]string{"1", "applied", "UTC", "00001_create_messages.sql"},
			[]string{"2", "applied", "UTC", "00002_index_messages_room_id.sql"},
			[]string{"3", "applied", "UTC", "00003_messages_deleted_at.sql"})

		out = mustRun("up")
		wantLines(out, []string{"no migrations to apply", "version 3"})

		out = mustRun("down")
		wantLines(out, []string{"OK", "down", "00003_messages_deleted_at.sql"}, []string{"database is at version 2"})
		out = mustRun("down")
		wantLines(out, []string{"OK", "down", "00002_index_messages_room_id.sql"}, []string{"database is at version 1"})
		out = mustRun("status")
		wantLines(out, []string{"1", "applied"}, []string{"2", "pending"}, []string{"3", "pending"})
		mustRun("down")
		out = mustRun("down")
		wantLines(out, []string{"no migration to roll back"})

		for _, bad := range [][]string{nil, {"sideways"}, {"up", "extra"}} {
			if _, err := run(bad...); err == nil || !strings.Contains(err.Error(), "usage: chatd migrate") {
				t.Errorf("migrate %q: error %v, want usage", bad, err)
			}
		}
	})
}

// Many processes starting at once all run MigrateUp: on PostgreSQL the
// advisory lock serialises them, and every one succeeds.
func TestMigrateConcurrent(t *testing.T) {
	url := sharedPostgres(t).NewDatabase(t)
	const procs = 4
	dbs := make([]*DB, procs)
	for i := range dbs {
		dbs[i] = openDB(t, url) // a separate pool each, as separate processes
	}
	var wg sync.WaitGroup
	errs := make([]error, procs)
	start := make(chan struct{})
	for i, db := range dbs {
		wg.Go(func() {
			<-start
			errs[i] = db.MigrateUp(context.Background())
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("process %d: MigrateUp: %v", i, err)
		}
	}
	checkVersion(t, dbs[0], latestVersion)
	if !tableExists(t, dbs[0]) || !indexExists(t, dbs[0]) {
		t.Fatal("messages table or its index missing")
	}
	// Each version is recorded once.
	var n int64
	if err := dbs[0].gorm.Table("goose_db_version").Where("version_id > 0").Count(&n).Error; err != nil {
		t.Fatal(err)
	}
	if n != latestVersion {
		t.Fatalf("goose_db_version holds %d applied versions, want %d", n, latestVersion)
	}
}

// The lock is held only while migrating: a second round finds nothing to
// do and does not wait.
func TestMigrateLockReleased(t *testing.T) {
	db := openDB(t, sharedPostgres(t).NewDatabase(t))
	for range 3 {
		if err := db.MigrateUp(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	var held int
	if err := db.sql.QueryRow(`SELECT count(*) FROM pg_locks
		WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&held); err != nil {
		t.Fatal(err)
	}
	if held != 0 {
		t.Fatalf("%d advisory locks still held after migrating", held)
	}
}
