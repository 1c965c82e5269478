// Command chatload is chatd's load tool. It opens many WebSocket connections
// to chatd nodes, speaks the Phoenix V2 protocol, runs one bounded scenario
// and reports what it measured, as JSON and as a summary.
//
//	chatload -scenario idle     -url ws://127.0.0.1:4000 -conns 10000 -server-pid PID
//	chatload -scenario fanout   -url ws://127.0.0.1:4000 -members 1000 -rate 1000 -duration 10s
//	chatload -scenario rooms    -url ws://127.0.0.1:4000 -rooms 500 -members 10 -rate 5000
//	chatload -scenario crossnode -url ws://127.0.0.1:4000,ws://127.0.0.1:4001 -members 100 -rate 500
//
// Every scenario is bounded in connections and time and stops by itself.
// Targets must be loopback addresses unless -allow-remote is given.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "chatload:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// A hard ceiling on the whole run, whatever the scenario does.
	ctx, cancel := context.WithTimeout(ctx, cfg.duration+cfg.setupTimeout+30*time.Second)
	defer cancel()
	if n, err := raiseFileLimit(); err != nil {
		fmt.Fprintf(stderr, "chatload: could not raise the file limit: %v\n", err)
	} else {
		fmt.Fprintf(stderr, "chatload: file limit %d\n", n)
	}
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	l, err := newLoader(cfg, stderr)
	if err != nil {
		return err
	}
	res, err := l.run(ctx)
	if res != nil {
		if cfg.jsonOut != "" {
			b, _ := json.MarshalIndent(res, "", "  ")
			if werr := os.WriteFile(cfg.jsonOut, append(b, '\n'), 0o644); werr != nil {
				return errors.Join(err, werr)
			}
		}
		res.summary(stdout)
	}
	return err
}
