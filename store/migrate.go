package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"text/tabwriter"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// The schema is versioned SQL, one directory per dialect because the SQL
// differs (types, collations). Each file has an Up and a Down section and
// never depends on Go code. Applied versions are recorded in the table
// goose_db_version. To change the schema, add NNNNN_what.sql to both
// directories with the next number; never edit an applied file.
//
//go:embed migrations/postgres/*.sql migrations/sqlite/*.sql
var migrationFiles embed.FS

// Migrations on PostgreSQL hold a session-level advisory lock, so any number
// of processes (pods starting at once, a migrate job) can run them
// concurrently: one applies, the others wait and then find nothing to do.
const (
	// migrationLockID is the advisory lock key: crc32("chatd migrate").
	migrationLockID int64 = 0x14320ccf
	// A waiting process polls the lock every second for up to five minutes.
	migrationLockPoll  = 1
	migrationLockPolls = 300
)

func newMigrationProvider(db *DB) (*goose.Provider, error) {
	opts := []goose.ProviderOption{
		// Only the embedded SQL files: nothing registered by other packages.
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(db.logger),
	}
	var dialect goose.Dialect
	switch db.dialect {
	case Postgres:
		dialect = goose.DialectPostgres
		locker, err := lock.NewPostgresSessionLocker(
			lock.WithLockID(migrationLockID),
			lock.WithLockTimeout(migrationLockPoll, migrationLockPolls),
		)
		if err != nil {
			return nil, fmt.Errorf("store: migrations: %w", err)
		}
		opts = append(opts, goose.WithSessionLocker(locker))
	case SQLite:
		dialect = goose.DialectSQLite3
	default:
		return nil, fmt.Errorf("store: migrations: unknown dialect %q", db.dialect)
	}
	dir, err := fs.Sub(migrationFiles, path.Join("migrations", string(db.dialect)))
	if err != nil {
		return nil, fmt.Errorf("store: migrations: %w", err)
	}
	p, err := goose.NewProvider(dialect, db.sql, dir, opts...)
	if err != nil {
		return nil, fmt.Errorf("store: migrations: %w", err)
	}
	return p, nil
}

// MigrateUp applies every pending migration, in order, and logs each one.
// On PostgreSQL it first takes the migration lock, waiting up to five
// minutes for another process to finish; it is safe to call from every
// process at start.
func (db *DB) MigrateUp(ctx context.Context) error {
	_, err := db.MigrateUpReport(ctx)
	return err
}

// MigrateUpReport is MigrateUp that also describes each migration it ran,
// one line each (e.g. "OK   up 00001_create_messages.sql (2ms)"), the
// failed one included.
func (db *DB) MigrateUpReport(ctx context.Context) ([]string, error) {
	results, err := db.migrations.Up(ctx)
	lines := make([]string, 0, len(results))
	for _, r := range results {
		lines = append(lines, r.String())
		if r.Error == nil {
			db.logger.Info("store: migration applied", "migration", path.Base(r.Source.Path),
				"direction", r.Direction, "duration", r.Duration)
		}
	}
	if err != nil {
		return lines, fmt.Errorf("store: migrate up: %w", err)
	}
	return lines, nil
}

// MigrateDown rolls back the most recently applied migration, one step.
// With nothing applied it returns an error wrapping ErrNothingToRollBack.
func (db *DB) MigrateDown(ctx context.Context) error {
	_, err := db.MigrateDownReport(ctx)
	return err
}

// ErrNothingToRollBack is returned by MigrateDown when no migration is
// applied.
var ErrNothingToRollBack = errors.New("no migration to roll back")

// MigrateDownReport is MigrateDown that also describes the migration it
// rolled back, in one line as MigrateUpReport does.
func (db *DB) MigrateDownReport(ctx context.Context) (string, error) {
	r, err := db.migrations.Down(ctx)
	if errors.Is(err, goose.ErrNoNextVersion) {
		return "", fmt.Errorf("store: migrate down: %w", ErrNothingToRollBack)
	}
	if err != nil {
		return "", fmt.Errorf("store: migrate down: %w", err)
	}
	db.logger.Info("store: migration rolled back", "migration", path.Base(r.Source.Path),
		"duration", r.Duration)
	return r.String(), nil
}

// SchemaVersion returns the version the database is at and the newest
// version this binary knows. current < latest means migrations are pending.
func (db *DB) SchemaVersion(ctx context.Context) (current, latest int64, err error) {
	current, latest, err = db.migrations.GetVersions(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("store: schema version: %w", err)
	}
	return current, latest, nil
}

// MigrateStatus writes one line per known migration to w: version, whether
// it is applied (and when) or pending, and its file name.
func (db *DB) MigrateStatus(ctx context.Context, w io.Writer) error {
	status, err := db.migrations.Status(ctx)
	if err != nil {
		return fmt.Errorf("store: migrate status: %w", err)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSTATE\tAPPLIED AT\tMIGRATION")
	for _, s := range status {
		applied := "-"
		if s.State == goose.StateApplied {
			applied = s.AppliedAt.UTC().Format("2006-01-02 15:04:05 UTC")
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", s.Source.Version, s.State, applied, path.Base(s.Source.Path))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("store: migrate status: %w", err)
	}
	return nil
}
