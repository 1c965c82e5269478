package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"

	"github.com/chatd/chatd/store"
)

// migrateUsage is the synopsis of the migrate command's arguments.
const migrateUsage = `usage: chatd migrate up|down|status
  up      apply every pending migration (waits for the migration lock on PostgreSQL)
  down    roll back the most recent migration (one step)
  status  list migrations, applied or pending`

func migrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("chatd migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, migrateUsage)
		fs.PrintDefaults()
	}
	f := &envFlags{fs: fs}
	var dbURL string
	f.stringVar(&dbURL, "database-url", "CHAT_DATABASE_URL", "chat.db", "a postgres:// URL, else an SQLite file path")
	if err := f.parse(args); err != nil {
		return err
	}
	log, err := newLogger(stderr, "warn", "auto")
	if err != nil {
		return err
	}
	db, err := store.Open(ctx, dbURL, log)
	if err != nil {
		return err
	}
	defer db.Close()
	return runMigrate(ctx, db, fs.Args(), stdout)
}

// runMigrate runs "chatd migrate ARGS" on db: args is up, down or status
// (one word). It reports what it did on out and returns an error (with
// migrateUsage for bad arguments) when the command failed. "down" with
// nothing applied is reported, not an error.
func runMigrate(ctx context.Context, db *store.DB, args []string, out io.Writer) error {
	if len(args) != 1 {
		return fmt.Errorf("migrate: want exactly one argument\n%s", migrateUsage)
	}
	switch args[0] {
	case "up":
		lines, err := db.MigrateUpReport(ctx)
		for _, l := range lines {
			fmt.Fprintln(out, l)
		}
		if err != nil {
			return err
		}
		current, _, err := db.SchemaVersion(ctx)
		if err != nil {
			return err
		}
		if len(lines) == 0 {
			fmt.Fprintf(out, "no migrations to apply: database is at version %d\n", current)
		} else {
			fmt.Fprintf(out, "database is at version %d\n", current)
		}
		return nil
	case "down":
		line, err := db.MigrateDownReport(ctx)
		if errors.Is(err, store.ErrNothingToRollBack) {
			fmt.Fprintln(out, "no migration to roll back: database is at version 0")
			return nil
		}
		if err != nil {
			return err
		}
		fmt.Fprintln(out, line)
		current, _, err := db.SchemaVersion(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "database is at version %d\n", current)
		return nil
	case "status":
		return db.MigrateStatus(ctx, out)
	default:
		return fmt.Errorf("migrate: unknown command %s\n%s", strconv.Quote(args[0]), migrateUsage)
	}
}
