// Command chatd is a clustered real-time chat server speaking the Phoenix
// Channels V2 protocol.
//
//	chatd [serve] [flags]          run the server (the default)
//	chatd migrate up|down|status   manage the database schema
//	chatd token --user NAME        print a JWT for NAME signed with CHAT_JWT_SECRET
//	            [--room P] [--read-room P]   with rooms / read_rooms claims
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/chatd/chatd/server"
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

func token(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("chatd token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &envFlags{fs: fs}
	var user, secret string
	var ttl time.Duration
	var rooms, readRooms listFlag
	fs.StringVar(&user, "user", "", "user id (the token's sub)")
	fs.Var(&rooms, "room", "room pattern the token may join, read and post in (its rooms claim); repeatable, or a comma list")
	fs.Var(&readRooms, "read-room", "room pattern the token may join and read only (its read_rooms claim); repeatable, or a comma list")
	fs.DurationVar(&ttl, "ttl", server.DefaultMaxTokenTTL, "how long the token is valid (chatd serve refuses tokens that live longer than its CHAT_MAX_TOKEN_TTL, 24h by default)")
	var dev bool
	f.stringVar(&secret, "jwt-secret", "CHAT_JWT_SECRET", "", "HS256 secret (required unless --dev)")
	f.boolVar(&dev, "dev", "CHAT_DEV_MODE", false, "with no secret, sign with the public dev-mode secret (for a dev-mode server only)")
	if err := f.parse(args); err != nil {
		return err
	}
	if user == "" {
		return errors.New("token: --user is required")
	}
	key := []byte(secret)
	if len(key) == 0 {
		if !dev {
			return errors.New("token: no CHAT_JWT_SECRET (--jwt-secret) set: refusing to sign with the public dev-mode secret; pass --dev (CHAT_DEV_MODE=true) for a dev-mode server")
		}
		fmt.Fprintln(stderr, "chatd token: no CHAT_JWT_SECRET set; signing a DEV MODE token")
		key = []byte(server.DevSecret)
	}
	if ttl > server.DefaultMaxTokenTTL {
		fmt.Fprintf(stderr, "chatd token: a token living %s is refused by servers whose CHAT_MAX_TOKEN_TTL is shorter (default %s)\n", ttl, server.DefaultMaxTokenTTL)
	}
	tok, err := server.MintRoomsToken(key, user, ttl, rooms, readRooms)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}
