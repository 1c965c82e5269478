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

func (e *envFlags) env(name string) (string, bool) {
	v, ok := os.LookupEnv(name)
	return strings.TrimSpace(v), ok && strings.TrimSpace(v) != ""
}

func (e *envFlags) usage(usage, env string) string {
	return fmt.Sprintf("%s (env %s)", usage, env)
}

func (e *envFlags) String(name, env, def, usage string) *string {
	if v, ok := e.env(env); ok {
		def = v
	}
	return e.fs.String(name, def, e.usage(usage, env))
}

func (e *envFlags) Int(name, env string, def int, usage string) *int {
	if v, ok := e.env(env); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			e.errs = append(e.errs, fmt.Errorf("%s=%q: not an integer", env, v))
		}
		def = n
	}
	return e.fs.Int(name, def, e.usage(usage, env))
}

func (e *envFlags) Bool(name, env string, def bool, usage string) *bool {
	if v, ok := e.env(env); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			e.errs = append(e.errs, fmt.Errorf("%s=%q: not a boolean", env, v))
		}
		def = b
	}
	return e.fs.Bool(name, def, e.usage(usage, env))
}

func (e *envFlags) Float(name, env string, def float64, usage string) *float64 {
	if v, ok := e.env(env); ok {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			e.errs = append(e.errs, fmt.Errorf("%s=%q: not a number", env, v))
		}
		def = f
	}
	return e.fs.Float64(name, def, e.usage(usage, env))
}

func (e *envFlags) Duration(name, env string, def time.Duration, usage string) *time.Duration {
	if v, ok := e.env(env); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			e.errs = append(e.errs, fmt.Errorf("%s=%q: not a duration (e.g. 30s)", env, v))
		}
		def = d
	}
	return e.fs.Duration(name, def, e.usage(usage, env))
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
