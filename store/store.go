// Package store keeps chat messages in SQL: PostgreSQL in production, an
// SQLite file for a laptop with no services at all.
//
// It provides the SQL side of chat's small interfaces:
//
//   - Writer is a chat.MessageSink: a bounded queue drained by a pool of
//     goroutines that insert in batches, idempotently, retrying while the
//     database is down.
//   - History is a chat.History, plus Page for the HTTP history API.
//
// The schema is owned by versioned SQL migrations embedded in the binary
// (see migrate.go); nothing here creates tables from Go models.
//
// Message ids are UUIDv7 strings. Their byte order is their time order, so
// every query orders by id and no query depends on clocks agreeing.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/glebarez/sqlite"
	"github.com/pressly/goose/v3"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Dialect names the SQL database behind a DB.
type Dialect string

const (
	// Postgres is PostgreSQL, reached through pgx.
	Postgres Dialect = "postgres"
	// SQLite is an SQLite file, through a pure-Go driver (no cgo).
	SQLite Dialect = "sqlite"
)

// Connection pool sizes. PostgreSQL serves the writer pool, history queries
// and readiness pings concurrently; SQLite has one connection, because it
// allows one writer at a time and serialising in the pool is cheaper than
// SQLITE_BUSY retries.
const (
	postgresMaxOpenConns = 20
	postgresMaxIdleConns = 10
	sqliteBusyTimeout    = 10 * time.Second
)

// DB is an open database. It is safe for concurrent use. Close it after every
// Writer using it has been closed.
type DB struct {
	gorm    *gorm.DB
	sql     *sql.DB
	dialect Dialect
	logger  *slog.Logger

	migrations *goose.Provider
}

// Open connects to the database named by dsn and checks that it answers
// within ctx.
//
// A dsn starting with postgres:// or postgresql:// is a PostgreSQL
// connection URL in pgx syntax (e.g. ?sslmode=disable&connect_timeout=5;
// behind PgBouncer in transaction mode add
// default_query_exec_mode=simple_protocol). The pool holds at most 20
// connections.
// Anything else is an SQLite database file, optionally written as
// sqlite://PATH or with query parameters understood by the driver
// (github.com/glebarez/go-sqlite); it is created if missing and put in WAL
// mode with a busy timeout.
//
// Open does not migrate: call MigrateUp (or run "chatd migrate up") first.
// logger may be nil (nothing is logged).
func Open(ctx context.Context, dsn string, log *slog.Logger) (*DB, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if strings.TrimSpace(dsn) == "" {
		return nil, errors.New("store: empty database URL")
	}
	db := &DB{logger: log}
	var dialector gorm.Dialector
	var where string
	if isPostgresURL(dsn) {
		db.dialect = Postgres
		dialector = postgres.Open(dsn)
		where = redactURL(dsn)
	} else {
		db.dialect = SQLite
		var err error
		var path string
		path, dsn, err = sqliteDSN(dsn)
		if err != nil {
			return nil, err
		}
		dialector = sqlite.Open(dsn)
		where = path
	}
	g, err := gorm.Open(dialector, &gorm.Config{
		// Each write is one statement, atomic on its own.
		SkipDefaultTransaction: true,
		// Ping below, with ctx.
		DisableAutomaticPing: true,
		// Errors are returned and logged by the caller, with context;
		// gorm's own log would repeat each of them once per retry.
		Logger:  logger.Discard,
		NowFunc: func() time.Time { return time.Now().UTC() },
	})
	if err != nil {
		return nil, fmt.Errorf("store: open %s %s: %w", db.dialect, where, err)
	}
	db.gorm = g
	db.sql, err = g.DB()
	if err != nil {
		return nil, fmt.Errorf("store: open %s %s: %w", db.dialect, where, err)
	}
	switch db.dialect {
	case Postgres:
		db.sql.SetMaxOpenConns(postgresMaxOpenConns)
		db.sql.SetMaxIdleConns(postgresMaxIdleConns)
		db.sql.SetConnMaxIdleTime(5 * time.Minute)
		db.sql.SetConnMaxLifetime(time.Hour)
	case SQLite:
		db.sql.SetMaxOpenConns(1)
		db.sql.SetMaxIdleConns(1)
		db.sql.SetConnMaxIdleTime(0)
		db.sql.SetConnMaxLifetime(0)
	}
	if err := db.Ping(ctx); err != nil {
		db.sql.Close()
		return nil, fmt.Errorf("store: open %s %s: %w", db.dialect, where, err)
	}
	if db.migrations, err = newMigrationProvider(db); err != nil {
		db.sql.Close()
		return nil, err
	}
	log.Info("store: database opened", "dialect", string(db.dialect), "database", where)
	return db, nil
}

// Dialect reports which database this is.
func (db *DB) Dialect() Dialect { return db.dialect }

// Ping reports whether the database answers within ctx; readiness checks use
// it.
func (db *DB) Ping(ctx context.Context) error {
	if err := db.sql.PingContext(ctx); err != nil {
		return fmt.Errorf("store: ping: %w", err)
	}
	return nil
}

// Close closes every connection. Close the Writer first: its pending batches
// need the database.
func (db *DB) Close() error {
	if err := db.sql.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// IsPostgresURL reports whether Open takes dsn for a PostgreSQL URL (else
// it is an SQLite file).
func IsPostgresURL(dsn string) bool { return isPostgresURL(dsn) }

func isPostgresURL(dsn string) bool {
	lower := strings.ToLower(dsn)
	return strings.HasPrefix(lower, "postgres://") || strings.HasPrefix(lower, "postgresql://")
}

// redactURL hides the password of a connection URL for logs and errors.
func redactURL(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

// sqliteDSN turns a file name (or sqlite://PATH, or file:PATH?params) into a
// driver DSN with WAL, a busy timeout, foreign keys and the SQLite time
// format. It returns the path for logs alongside.
func sqliteDSN(dsn string) (path, full string, err error) {
	if rest, ok := strings.CutPrefix(dsn, "sqlite://"); ok {
		dsn = rest
	} else if rest, ok := strings.CutPrefix(dsn, "sqlite:"); ok {
		dsn = rest
	}
	path, query, _ := strings.Cut(dsn, "?")
	if path == "" {
		return "", "", errors.New("store: SQLite database URL names no file")
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return "", "", fmt.Errorf("store: SQLite database URL %q: %w", dsn, err)
	}
	has := func(pragma string) bool {
		for _, v := range q["_pragma"] {
			if strings.HasPrefix(strings.ToLower(strings.TrimSpace(v)), pragma) {
				return true
			}
		}
		return false
	}
	if !has("journal_mode") {
		q.Add("_pragma", "journal_mode(WAL)")
	}
	if !has("busy_timeout") {
		q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", sqliteBusyTimeout.Milliseconds()))
	}
	if !has("synchronous") {
		// NORMAL is durable across application crashes in WAL mode, and
		// much faster than FULL.
		q.Add("_pragma", "synchronous(NORMAL)")
	}
	if !has("foreign_keys") {
		q.Add("_pragma", "foreign_keys(1)")
	}
	if q.Get("_time_format") == "" {
		q.Set("_time_format", "sqlite")
	}
	return path, path + "?" + q.Encode(), nil
}
