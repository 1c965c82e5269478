package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chatd/chatd/internal/testsvc"
)

// TestMigrateCommand runs "chatd migrate" against each database the store
// runs on.
func TestMigrateCommand(t *testing.T) {
	for _, b := range []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"postgres", func(t *testing.T) string { return testsvc.StartPostgres(t).URL() }},
		{"sqlite", func(t *testing.T) string { return filepath.Join(t.TempDir(), "chat.db") }},
	} {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			url := b.url(t)
			run := func(args ...string) (string, error) {
				var out bytes.Buffer
				err := run(ctx, append([]string{"migrate", "--database-url", url}, args...), &out, io.Discard)
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
}
