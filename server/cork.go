package server

import (
	"bufio"
	"net"
	"net/http"

	"github.com/chatd/chatd/chat"
)

// corkingWriter hands the WebSocket library a connection wrapped in a
// chat.CorkConn when it hijacks the request, so sessions can coalesce the
// frames of a batch into one write.
type corkingWriter struct {
	http.ResponseWriter
	cork *chat.CorkConn
}

// Hijack implements http.Hijacker.
func (w *corkingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	// net/http has sent the 101 response before returning; the writer it
	// hands back is empty, so it can write through the wrapper instead.
	w.cork = chat.NewCorkConn(c)
	brw.Writer.Reset(w.cork)
	return w.cork, brw, nil
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *corkingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
