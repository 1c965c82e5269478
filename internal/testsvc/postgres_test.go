package testsvc

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func queryInt(t *testing.T, url, sql string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func TestPostgres(t *testing.T) {
	pg := StartPostgres(t)
	pg.Exec(t, "CREATE TABLE t (n int)")
	pg.Exec(t, "INSERT INTO t VALUES ($1), ($2)", 1, 2)
	if n := queryInt(t, pg.URL(), "SELECT sum(n) FROM t"); n != 3 {
		t.Fatalf("sum = %d, want 3", n)
	}

	other := pg.NewDatabase(t)
	if other == pg.URL() {
		t.Fatal("NewDatabase returned the same URL")
	}
	if n := queryInt(t, other, "SELECT count(*) FROM pg_tables WHERE tablename = 't'"); n != 0 {
		t.Fatal("new database is not empty")
	}

	// Stop really stops; Start comes back on the same port with the data.
	port := pg.Port()
	pg.Stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	if conn, err := pgx.Connect(ctx, pg.URL()); err == nil {
		conn.Close(ctx)
		t.Fatal("connected to a stopped server")
	}
	cancel()
	pg.Start(t)
	if pg.Port() != port {
		t.Fatalf("port changed from %d to %d", port, pg.Port())
	}
	if n := queryInt(t, pg.URL(), "SELECT sum(n) FROM t"); n != 3 {
		t.Fatalf("after restart: sum = %d, want 3", n)
	}

	// Close removes everything, and is idempotent.
	dir := pg.dir
	if err := pg.Close(); err != nil {
		t.Fatal(err)
	}
	if err := pg.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s still there after Close (%v)", dir, err)
	}
}

func TestPostgresMissingBinaries(t *testing.T) {
	t.Setenv(PostgresBinDirEnv, t.TempDir())
	if _, err := NewPostgres(); err == nil {
		t.Fatal("NewPostgres succeeded without binaries")
	}
}
