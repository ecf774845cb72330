package frontend

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// hangGuard bounds how long a test waits for the front-end to act on a
// slow client; it only stops a hung test, nothing here measures speed.
const hangGuard = 20 * time.Second

// rawConn dials the front-end for a test that speaks HTTP by hand.
func rawConn(t testing.TB, fe *frontendUnderTest) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", fe.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(hangGuard))
	return c
}

// closedByServer waits until the server closes c: a read ends in EOF
// (or a reset), not in the test's own deadline.
func closedByServer(t testing.TB, c net.Conn, what string) {
	t.Helper()
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("%s: the front-end kept the connection open", what)
	}
}

// stillServing checks that the front-end answers others and wrote nothing
// for the slow clients: exactly one batch, the one it sends.
func stillServing(t testing.TB, fe *frontendUnderTest, db *checker) {
	t.Helper()
	if v := fe.getJSON(t, "/readyz", nil, 200); v["status"] != "ready" {
		t.Fatalf("readyz %v", v)
	}
	resp, out := fe.post(t, batchBody(transferTxn(1, 2, "1")), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("another client's batch: %d %s", resp.StatusCode, out)
	}
	if s := db.state(); s.Batches != 1 || s.Outcomes != 1 || s.Effects != 0 {
		t.Fatalf("database after the slow clients: %+v, want only the other client's batch", s)
	}
}

func slowConfig() Config {
	return Config{ID: "fe-slow", ReadHeaderTimeout: 300 * time.Millisecond, BodyReadTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}
}

// TestHeadersSentByteByByteAreCutOff: a client that sends its headers a
// byte at a time (slowloris) loses the connection after
// ReadHeaderTimeout, however long it keeps sending.
func TestHeadersSentByteByByteAreCutOff(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, slowConfig(), false)
	c := rawConn(t, fe)
	go func() {
		for _, b := range []byte("POST /v1/batches HTTP/1.1\r\nHost: hafe\r\nX-Padding: " + string(make([]byte, 1000))) {
			if _, err := c.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	closedByServer(t, c, "headers sent byte by byte")
	stillServing(t, fe, db)
}

// TestSlowBodyIsRefusedWithRequestTimeout: a client that declares a
// body and sends it too slowly gets 408 after BodyReadTimeout; nothing
// runs.
func TestSlowBodyIsRefusedWithRequestTimeout(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, slowConfig(), false)
	c := rawConn(t, fe)
	body := batchBody(transferTxn(1, 2, "1"))
	fmt.Fprintf(c, "POST /v1/batches HTTP/1.1\r\nHost: hafe\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body[:5])
	go func() {
		for i := 5; i < len(body); i++ {
			time.Sleep(100 * time.Millisecond)
			if _, err := c.Write([]byte{body[i]}); err != nil {
				return
			}
		}
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a slow body: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	checkRefusal(t, resp, b, 408, "body_timeout")
	stillServing(t, fe, db)
}

// TestIdleConnectionsAreClosed: a keep-alive connection with no request
// is closed after IdleTimeout.
func TestIdleConnectionsAreClosed(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, slowConfig(), false)
	c := rawConn(t, fe)
	fmt.Fprint(c, "GET /healthz HTTP/1.1\r\nHost: hafe\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	_, err = io.Copy(io.Discard, br)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the front-end kept an idle connection open")
	}
	stillServing(t, fe, db)
}

// TestDeclaredBodyAboveTheLimitIsRefusedBeforeReading: a Content-Length
// above --max-body-bytes is 413 at once, without waiting for (or reading)
// the body.
func TestDeclaredBodyAboveTheLimitIsRefusedBeforeReading(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	cfg := slowConfig()
	cfg.BodyReadTimeout = time.Hour // the refusal must not wait for it
	fe := startFrontend(t, url, cfg, false)
	c := rawConn(t, fe)
	fmt.Fprintf(c, "POST /v1/batches HTTP/1.1\r\nHost: hafe\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", 1<<30)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a declared 1 GiB body: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	checkRefusal(t, resp, b, 413, "body_too_large")
	stillServing(t, fe, db)
}
