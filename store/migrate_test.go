package store

import (
	"context"
	"errors"
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
