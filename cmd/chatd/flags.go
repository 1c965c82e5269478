package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// envFlags defines flags whose defaults come from CHAT_* environment
// variables; a flag given on the command line wins over its env twin.
type envFlags struct {
	fs   *flag.FlagSet
	errs []error
}

// env returns the value of the variable name, if set and not blank.
func (e *envFlags) env(name string) (string, bool) {
	v := strings.TrimSpace(os.Getenv(name))
	return v, v != ""
}

func (e *envFlags) usage(usage, env string) string {
	return fmt.Sprintf("%s (env %s)", usage, env)
}

// parseEnv parses the variable env with parse, falling back to def (and
// recording the error) when it does not parse.
func parseEnv[T any](e *envFlags, env string, def T, kind string, parse func(string) (T, error)) T {
	v, ok := e.env(env)
	if !ok {
		return def
	}
	x, err := parse(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s=%q: not %s", env, v, kind))
		return def
	}
	return x
}

func (e *envFlags) stringVar(p *string, name, env, def, usage string) {
	e.fs.StringVar(p, name, parseEnv(e, env, def, "a string", func(s string) (string, error) { return s, nil }), e.usage(usage, env))
}

func (e *envFlags) intVar(p *int, name, env string, def int, usage string) {
	e.fs.IntVar(p, name, parseEnv(e, env, def, "an integer", strconv.Atoi), e.usage(usage, env))
}

func (e *envFlags) floatVar(p *float64, name, env string, def float64, usage string) {
	e.fs.Float64Var(p, name, parseEnv(e, env, def, "a number", func(s string) (float64, error) { return strconv.ParseFloat(s, 64) }), e.usage(usage, env))
}

func (e *envFlags) durationVar(p *time.Duration, name, env string, def time.Duration, usage string) {
	e.fs.DurationVar(p, name, parseEnv(e, env, def, "a duration (e.g. 30s)", time.ParseDuration), e.usage(usage, env))
}

func (e *envFlags) boolVar(p *bool, name, env string, def bool, usage string) {
	e.fs.BoolVar(p, name, parseEnv(e, env, def, "a boolean", strconv.ParseBool), e.usage(usage, env))
}

// parse parses args and reports env and flag errors together.
func (e *envFlags) parse(args []string) error {
	if len(e.errs) > 0 {
		return e.errs[0]
	}
	return e.fs.Parse(args)
}

// splitList splits a comma list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// listFlag is a flag that may be given many times, each a comma list; it
// collects the items in order.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	*l = append(*l, splitList(v)...)
	return nil
}
