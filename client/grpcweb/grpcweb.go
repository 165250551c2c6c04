// Package grpcweb is a Go client of grpc-web over WebSocket (the
// "grpc-websockets" protocol of improbable-eng/grpc-web, which chatd serves
// on its HTTP port): what a browser speaks, spoken from Go, for tests and
// for chatbench's --grpcweb mode.
//
// The protocol:
//   - client → server, first message: the request headers as HTTP/1 header
//     lines ("authorization: Bearer …\r\ncontent-type: application/grpc-web+proto\r\n");
//   - client → server, each request message: 0x00, then the gRPC
//     length-prefixed message (flag byte, 4-byte big-endian length, bytes);
//     one byte 0x01 half-closes the request stream;
//   - server → client: a byte stream of grpc-web frames split over
//     WebSocket messages at any point; a frame with flag 0x80 carries
//     headers (the first) or trailers (the last: grpc-status, grpc-message,
//     grpc-status-details-bin), flag 0x00 a message.
package grpcweb

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"nhooyr.io/websocket"
)

var _ chatv1.ChatService_ChatClient = (*Stream)(nil)

// DialChat opens the Chat stream of the device whose bearer token is token
// at httpAddr; see Dial.
func DialChat(ctx context.Context, httpAddr, token string) (*Stream, error) {
	s, _, err := Dial(ctx, httpAddr, "/chat.v1.ChatService/Chat", Options{Headers: map[string]string{"authorization": "Bearer " + token}})
	return s, err
}

// Stream is one call over grpc-web's WebSocket transport. For the Chat
// stream it implements chatv1.ChatService_ChatClient (Send, Recv and
// grpc.ClientStream), so code written for a native stream drives it
// unchanged. Send and CloseSend may be called concurrently with Recv
// (sends are serialised internally); Recv from one goroutine at a time.
type Stream struct {
	ctx     context.Context
	conn    *websocket.Conn
	buf     []byte // server bytes not yet parsed into frames
	header  metadata.MD
	trailer metadata.MD
	done    error // the stream's end, once known
	sendMu  sync.Mutex
}

// Options of Dial.
type Options struct {
	// Headers are the request headers (e.g. "authorization": "Bearer <token>").
	Headers map[string]string
	// Origin is the Origin header of the handshake; "" sends none, as
	// non-browser clients do.
	Origin string
	// HTTPClient makes the handshake; nil means http.DefaultClient.
	HTTPClient *http.Client
}

// Dial opens method ("/chat.v1.ChatService/Chat") over grpc-web WebSocket
// at httpAddr (host:port of chatd's HTTP listener) and sends the request
// headers. The returned response is the handshake's (a refused origin is a
// 403). ctx bounds the whole stream: it lives until ctx is done, the
// server ends it, or Close.
func Dial(ctx context.Context, httpAddr, method string, o Options) (*Stream, *http.Response, error) {
	h := http.Header{}
	if o.Origin != "" {
		h.Set("Origin", o.Origin)
	}
	conn, resp, err := websocket.Dial(ctx, "ws://"+httpAddr+method, &websocket.DialOptions{
		Subprotocols: []string{"grpc-websockets"},
		HTTPHeader:   h,
		HTTPClient:   o.HTTPClient,
	})
	if err != nil {
		return nil, resp, err
	}
	conn.SetReadLimit(1 << 24)
	var hb strings.Builder
	hb.WriteString("content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\n")
	for k, v := range o.Headers {
		fmt.Fprintf(&hb, "%s: %s\r\n", k, v)
	}
	if err := conn.Write(ctx, websocket.MessageBinary, []byte(hb.String())); err != nil {
		return nil, resp, err
	}
	return &Stream{ctx: ctx, conn: conn}, resp, nil
}

func (w *Stream) sendBytes(b []byte) error {
	w.sendMu.Lock()
	defer w.sendMu.Unlock()
	return w.conn.Write(w.ctx, websocket.MessageBinary, b)
}

// Send sends one Chat frame.
func (w *Stream) Send(f *chatv1.ClientFrame) error { return w.SendMsg(f) }

// SendMsg sends one request message (a proto.Message): 0x00, then the gRPC
// length-prefixed message.
func (w *Stream) SendMsg(m any) error {
	b, err := proto.Marshal(m.(proto.Message))
	if err != nil {
		return err
	}
	msg := make([]byte, 6+len(b)) // 0x00 (a message), then the gRPC length-prefixed message
	binary.BigEndian.PutUint32(msg[2:6], uint32(len(b)))
	copy(msg[6:], b)
	return w.sendBytes(msg)
}

// CloseSend half-closes the request stream (one byte 0x01).
func (w *Stream) CloseSend() error { return w.sendBytes([]byte{1}) }

// next returns the next grpc-web frame: its flag byte and payload.
func (w *Stream) next() (byte, []byte, error) {
	for {
		if len(w.buf) >= 5 {
			n := int(binary.BigEndian.Uint32(w.buf[1:5]))
			if len(w.buf) >= 5+n {
				flag, payload := w.buf[0], w.buf[5:5+n]
				w.buf = w.buf[5+n:]
				return flag, payload, nil
			}
		}
		typ, b, err := w.conn.Read(w.ctx)
		if err != nil {
			return 0, nil, err
		}
		if typ != websocket.MessageBinary {
			return 0, nil, fmt.Errorf("server sent a %v WebSocket message", typ)
		}
		w.buf = append(w.buf, b...)
	}
}

func parseHeaders(b []byte) (metadata.MD, error) {
	h, err := textproto.NewReader(bufio.NewReader(io.MultiReader(bytes.NewReader(b), strings.NewReader("\r\n")))).ReadMIMEHeader()
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	md := metadata.MD{}
	for k, vs := range h {
		md[strings.ToLower(k)] = vs
	}
	return md, nil
}

// statusOf turns trailers into the call's status, as grpc-go's client
// does: grpc-status, grpc-message and grpc-status-details-bin.
func statusOf(md metadata.MD) error {
	codeS := md.Get("grpc-status")
	if len(codeS) == 0 {
		return status.Error(codes.Internal, "trailers without grpc-status")
	}
	code, _ := strconv.Atoi(codeS[0])
	if code == 0 {
		return io.EOF
	}
	msg := ""
	if m := md.Get("grpc-message"); len(m) > 0 {
		msg = m[0] // percent-encoded (gRPC spec); our messages are plain ASCII
	}
	if d := md.Get("grpc-status-details-bin"); len(d) > 0 {
		raw, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(d[0], "="))
		if err == nil {
			var p spb.Status
			if proto.Unmarshal(raw, &p) == nil {
				return status.FromProto(&p).Err()
			}
		}
	}
	return status.Error(codes.Code(code), msg)
}

// Recv returns the next Chat frame, or the call's status at its end
// (io.EOF for OK; a *status.Status error with the trailers' code, message
// and details otherwise).
func (w *Stream) Recv() (*chatv1.ServerFrame, error) {
	f := new(chatv1.ServerFrame)
	if err := w.RecvMsg(f); err != nil {
		return nil, err
	}
	return f, nil
}

// RecvMsg reads the next response message into m (a proto.Message).
func (w *Stream) RecvMsg(m any) error {
	if w.done != nil {
		return w.done
	}
	for {
		flag, payload, err := w.next()
		if err != nil {
			w.done = fmt.Errorf("stream closed without a status: %w", err)
			return w.done
		}
		if flag&0x80 == 0 {
			if w.header == nil {
				w.done = errors.New("message before headers")
				return w.done
			}
			return proto.Unmarshal(payload, m.(proto.Message))
		}
		md, err := parseHeaders(payload)
		if err != nil {
			w.done = err
			return err
		}
		if w.header == nil && len(md.Get("grpc-status")) == 0 {
			w.header = md
			continue
		}
		w.trailer = md // trailers, or a trailers-only answer
		w.done = statusOf(md)
		return w.done
	}
}

// Header returns the response headers (nil before the first message).
func (w *Stream) Header() (metadata.MD, error) { return w.header, nil }

// Trailer returns the trailers once Recv has returned the status.
func (w *Stream) Trailer() metadata.MD { return w.trailer }

// Context returns the stream's context.
func (w *Stream) Context() context.Context { return w.ctx }

// Close closes the WebSocket.
func (w *Stream) Close() { _ = w.conn.Close(websocket.StatusNormalClosure, "") }
