package cluster

import (
	"context"
	"log/slog"
	"strings"
)

// logBridge turns memberlist's log lines ("[WARN] memberlist: ...") into slog
// records: [ERR] and [WARN] at warn (they are about peers and the network,
// not this process failing), everything else at debug.
type logBridge struct{ log *slog.Logger }

func (b *logBridge) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	lvl := slog.LevelDebug
	if rest, ok := strings.CutPrefix(msg, "["); ok {
		if tag, after, ok := strings.Cut(rest, "] "); ok {
			switch tag {
			case "ERR", "ERROR", "WARN":
				lvl = slog.LevelWarn
			}
			msg = after
		}
	}
	msg = strings.TrimPrefix(msg, "memberlist: ")
	b.log.Log(context.Background(), lvl, msg)
	return len(p), nil
}

// oneLine flattens memberlist's multi-line errors for a log attribute.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
