// Command chatd is a clustered real-time chat server speaking the Phoenix
// Channels V2 protocol.
//
//	chatd [serve] [flags]          run the server (the default)
//	chatd migrate up|down|status   manage the database schema
//	chatd token --user NAME        print a JWT for NAME signed with CHAT_JWT_SECRET
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/server"
	"github.com/chatd/chatd/store"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "chatd:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(ctx, args, stderr)
	case "token":
		return token(args, stdout, stderr)
	case "migrate":
		return migrate(ctx, args, stdout, stderr)
	default:
		return fmt.Errorf("unknown command %q (want serve, migrate or token)", cmd)
	}
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "auto", "":
		if f, ok := w.(*os.File); ok {
			if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
				return slog.New(slog.NewTextHandler(w, opts)), nil
			}
		}
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("log format %q: want auto, json or text", format)
	}
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("chatd serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &envFlags{fs: fs}
	hostname, _ := os.Hostname()
	var (
		addr         = f.String("addr", "CHAT_ADDR", ":4000", "HTTP listen address")
		secret       = f.String("jwt-secret", "CHAT_JWT_SECRET", "", "HS256 secret of client tokens; empty runs in dev mode")
		nodeName     = f.String("node-name", "CHAT_NODE_NAME", hostname, "this node's name")
		maxConns     = f.Int("max-conns-per-user", "CHAT_MAX_CONNS_PER_USER", 5, "connections one user may hold (0: no limit)")
		userRate     = f.Float("user-rate", "CHAT_USER_RATE", 10, "messages per second one user may send (0: no limit)")
		userBurst    = f.Int("user-burst", "CHAT_USER_BURST", 20, "burst of the per-user rate limit")
		maxBody      = f.Int("max-body", "CHAT_MAX_BODY", 4000, "most characters in a message body")
		maxChannels  = f.Int("max-channels", "CHAT_MAX_CHANNELS", 100, "most topics one connection may join")
		readLimit    = f.Int("read-limit", "CHAT_READ_LIMIT", 64<<10, "largest WebSocket frame read, in bytes")
		origins      = f.String("allowed-origins", "CHAT_ALLOWED_ORIGINS", "", "comma list of browser origin host patterns allowed besides same-origin")
		shutdownWait = f.Duration("shutdown-timeout", "CHAT_SHUTDOWN_TIMEOUT", 20*time.Second, "how long shutdown may take")
		drainDelay   = f.Duration("drain-delay", "CHAT_DRAIN_DELAY", 0, "on shutdown, how long readiness reports 503 before connections are closed")
		dbURL        = f.String("database-url", "CHAT_DATABASE_URL", "chat.db", "a postgres:// URL, else an SQLite file path")
		migrateStart = f.Bool("migrate", "CHAT_MIGRATE", true, "apply pending migrations at start (under a lock on PostgreSQL)")
		queueSize    = f.Int("persist-queue", "CHAT_PERSIST_QUEUE", 10000, "messages that may wait to be written; a full queue answers overloaded")
		workers      = f.Int("persist-workers", "CHAT_PERSIST_WORKERS", 4, "goroutines writing batches")
		batchSize    = f.Int("persist-batch", "CHAT_PERSIST_BATCH", 100, "most messages in one INSERT")
		batchWait    = f.Duration("persist-batch-wait", "CHAT_PERSIST_BATCH_WAIT", 20*time.Millisecond, "how long a batch waits to fill")
		logLevel     = f.String("log-level", "CHAT_LOG_LEVEL", "info", "debug, info, warn or error")
		logFormat    = f.String("log-format", "CHAT_LOG_FORMAT", "auto", "json, text, or auto (text on a terminal)")
	)
	if err := f.parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("serve: unexpected arguments %q", fs.Args())
	}
	// Signals are caught from here on: a SIGTERM during start-up still
	// shuts down cleanly.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	if *maxConns < 0 || *userBurst < 1 || *maxBody < 1 || *maxChannels < 1 || *readLimit < 1024 || *userRate < 0 {
		return errors.New("serve: limits must be positive (max-conns-per-user and user-rate may be 0; read-limit at least 1024)")
	}
	if *nodeName == "" {
		*nodeName = "chatd"
	}
	log = log.With("node", *nodeName)

	db, err := store.Open(ctx, *dbURL, log)
	if err != nil {
		return err
	}
	defer db.Close()
	if *migrateStart {
		if err := db.MigrateUp(ctx); err != nil {
			return err
		}
	} else if cur, latest, err := db.SchemaVersion(ctx); err != nil {
		return err
	} else if cur < latest {
		return fmt.Errorf("serve: database schema is at version %d, this chatd needs %d: run chatd migrate up", cur, latest)
	}
	writer, err := store.NewWriter(db, store.WriterConfig{
		QueueSize: *queueSize,
		Workers:   *workers,
		BatchSize: *batchSize,
		BatchWait: *batchWait,
	}, log)
	if err != nil {
		return err
	}
	history := store.NewHistory(db)

	hub, err := chat.NewHub(chat.Config{
		NodeName:    *nodeName,
		MaxBody:     *maxBody,
		MaxChannels: *maxChannels,
		ReadLimit:   int64(*readLimit),
		UserRate:    *userRate,
		UserBurst:   *userBurst,
	}, chat.Options{Logger: log, Sink: writer, History: history})
	if err != nil {
		return err
	}
	srv, err := server.New(server.Config{
		JWTSecret:      []byte(*secret),
		AllowedOrigins: splitList(*origins),
		DrainDelay:     *drainDelay,
	}, server.Options{
		Hub:      hub,
		Limiter:  chat.NewMemoryConnLimiter(*maxConns),
		Logger:   log,
		Messages: history,
		Checks:   []server.Check{{Name: "database", Check: db.Ping}},
	})
	if err != nil {
		return err
	}
	if srv.DevMode() {
		log.Warn("DEV MODE: no CHAT_JWT_SECRET set; tokens are signed with a public dev secret and anyone can mint one at POST /api/dev/token. Never run a deployment like this.")
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("serve: listen: %w", err)
	}
	log.Info("chatd listening", "addr", ln.Addr().String())

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	select {
	case err := <-serveErr:
		cctx, cancel := context.WithTimeout(context.Background(), *shutdownWait)
		defer cancel()
		writer.Close(cctx)
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	stop() // a second signal kills the process
	log.Info("shutting down", "timeout", shutdownWait.String())
	sctx, cancel := context.WithTimeout(context.Background(), *shutdownWait)
	defer cancel()
	err = srv.Shutdown(sctx)
	<-serveErr
	// Connections are closed: nothing more can be accepted, so the writer
	// drains what is queued.
	if werr := writer.Close(sctx); werr != nil {
		err = errors.Join(err, fmt.Errorf("persistence queue not drained: %w", werr))
	}
	if err != nil {
		log.Error("shutdown incomplete", "err", err)
		return err
	}
	log.Info("shutdown complete")
	return nil
}

func migrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("chatd migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, store.MigrateUsage)
		fs.PrintDefaults()
	}
	f := &envFlags{fs: fs}
	dbURL := f.String("database-url", "CHAT_DATABASE_URL", "chat.db", "a postgres:// URL, else an SQLite file path")
	if err := f.parse(args); err != nil {
		return err
	}
	log, err := newLogger(stderr, "warn", "auto")
	if err != nil {
		return err
	}
	db, err := store.Open(ctx, *dbURL, log)
	if err != nil {
		return err
	}
	defer db.Close()
	return store.RunMigrateCommand(ctx, db, fs.Args(), stdout)
}

func token(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("chatd token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &envFlags{fs: fs}
	var (
		user   = fs.String("user", "", "user id (the token's sub)")
		ttl    = fs.Duration("ttl", 24*time.Hour, "how long the token is valid")
		secret = f.String("jwt-secret", "CHAT_JWT_SECRET", "", "HS256 secret; empty signs a dev-mode token")
	)
	if err := f.parse(args); err != nil {
		return err
	}
	if *user == "" {
		return errors.New("token: --user is required")
	}
	key := []byte(*secret)
	if len(key) == 0 {
		fmt.Fprintln(stderr, "chatd token: no CHAT_JWT_SECRET set; signing a DEV MODE token")
		key = []byte(server.DevSecret)
	}
	tok, err := server.MintToken(key, *user, *ttl)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}
