package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/internal/pgtemp"
	"hafe.dev/hafe/mtcp"
	hafesql "hafe.dev/hafe/sql"
)

// testCA is a certificate authority made for one test; its certificate is
// written to file (PEM).
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	file string
	dir  string
}

func newTestCA(t testing.TB, dir, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	ca := &testCA{cert: cert, key: key, pool: pool, dir: dir, file: filepath.Join(dir, name+".pem")}
	writePEM(t, ca.file, "CERTIFICATE", der)
	return ca
}

// issue writes NAME.pem and NAME.key: a certificate for 127.0.0.1 and
// localhost, with common name cn, valid for both server and client
// authentication (as a front-end's, which it also shows its peers).
func (ca *testCA) issue(t testing.TB, name, cn string) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM := ca.issuePEM(t, cn)
	certFile, keyFile = filepath.Join(ca.dir, name+".pem"), filepath.Join(ca.dir, name+".key")
	replaceFile(t, certFile, certPEM)
	replaceFile(t, keyFile, keyPEM)
	return certFile, keyFile
}

func (ca *testCA) issuePEM(t testing.TB, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	return ca.issuePEMUsage(t, cn, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
}

func (ca *testCA) issuePEMUsage(t testing.TB, cn string, usage ...x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func writePEM(t testing.TB, file, typ string, der []byte) {
	t.Helper()
	replaceFile(t, file, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}

// replaceFile writes b to file at once (write, then rename), as a
// certificate manager does.
func replaceFile(t testing.TB, file string, b []byte) {
	t.Helper()
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
}

// recordingRelay forwards TCP connections to a target and keeps every
// byte it carries, each direction of each connection apart, so a test can
// tell whether a hop carried something in the clear.
type recordingRelay struct {
	addr string
	ln   net.Listener
	mu   sync.Mutex
	seen []*bytes.Buffer
	open map[net.Conn]struct{}
	wg   sync.WaitGroup
}

func startRelay(t *testing.T, target string) *recordingRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recordingRelay{addr: ln.Addr().String(), ln: ln, open: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			r.mu.Lock()
			in, out := &bytes.Buffer{}, &bytes.Buffer{}
			r.seen = append(r.seen, in, out)
			r.open[c], r.open[up] = struct{}{}, struct{}{}
			r.mu.Unlock()
			r.wg.Add(2)
			go r.pipe(up, c, in)
			go r.pipe(c, up, out)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		for c := range r.open {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *recordingRelay) pipe(dst, src net.Conn, rec *bytes.Buffer) {
	defer r.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			r.mu.Lock()
			rec.Write(buf[:n])
			r.mu.Unlock()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	r.mu.Lock()
	delete(r.open, src)
	r.mu.Unlock()
}

// carried is the connections and bytes the relay carried, and whether
// some direction of some connection held marker in the clear.
func (r *recordingRelay) carried(marker string) (conns, n int, clear bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.seen {
		n += b.Len()
		if bytes.Contains(b.Bytes(), []byte(marker)) {
			clear = true
		}
	}
	return len(r.seen) / 2, n, clear
}

// tlsCluster is n hafe serve processes with TLS on every hop: HTTPS on
// --listen, TLS on --mtcp-listen, mutual TLS between them, and
// sslmode=verify-full to a PostgreSQL with ssl on. With relays, every hop
// goes through a recordingRelay: the front-ends advertise their relays'
// MTCP addresses (so peer channels cross them too), and reach PostgreSQL
// through one.
type tlsCluster struct {
	bin        string
	dir        string
	ca         *testCA
	directURL  string // the database, plain, for the test's own checks
	ids        []string
	procs      []*exec.Cmd
	logs       []*lockedBuffer
	https      []string // the front-ends' --listen, or their relays
	mtcp       []string // their MTCP addresses (advertised), or relays
	httpRelay  []*recordingRelay
	mtcpRelay  []*recordingRelay
	pgRelay    *recordingRelay
	certFiles  []string
	keyFiles   []string
	listenAddr []string // the front-ends' own --listen
}

const tlsTestAdminToken = "tls-test-admin"

func startTLSCluster(t *testing.T, n int, relays bool) *tlsCluster {
	t.Helper()
	requirePostgresBinaries(t)
	tc := &tlsCluster{bin: buildHafe(t), dir: t.TempDir()}
	tc.ca = newTestCA(t, tc.dir, "ca")
	pgCert, pgKey := tc.ca.issuePEM(t, "postgres")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pg, err := pgtemp.Start(ctx, pgtemp.Options{TLSCert: pgCert, TLSKey: pgKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	url, err := pg.NewDatabase(ctx, "tls")
	if err != nil {
		t.Fatal(err)
	}
	tc.directURL = url
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	for _, q := range []string{
		"CREATE ROLE hafe_client LOGIN PASSWORD 'client-secret'",
		hafesql.DemoSchema(),
		`CREATE TABLE effects (id serial PRIMARY KEY, note text NOT NULL);
		GRANT SELECT, INSERT ON effects TO hafe_client; GRANT USAGE ON SEQUENCE effects_id_seq TO hafe_client`,
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := backendext.Install(ctx, admin, backendext.InstallOptions{ForceSchema: true}, nil); err != nil {
		t.Fatal(err)
	}
	pgAddr := fmt.Sprintf("127.0.0.1:%d", pg.Port())
	if relays {
		tc.pgRelay = startRelay(t, pgAddr)
		pgAddr = tc.pgRelay.addr
	}
	dbName := url[strings.LastIndex(url, "/")+1 : strings.Index(url, "?")]
	tlsDB := func(user string) string {
		return fmt.Sprintf("postgres://%s@%s/%s?sslmode=verify-full&sslrootcert=%s", user, pgAddr, dbName, tc.ca.file)
	}
	key := filepath.Join(tc.dir, "cluster.key")
	if err := os.WriteFile(key, []byte("tls test cluster key, 32 bytes!!"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		id := fmt.Sprintf("fe-%d", i)
		addr, maddr := freeAddr(t), freeAddr(t)
		adv, https := maddr, addr
		if relays {
			hr, mr := startRelay(t, addr), startRelay(t, maddr)
			tc.httpRelay, tc.mtcpRelay = append(tc.httpRelay, hr), append(tc.mtcpRelay, mr)
			adv, https = mr.addr, hr.addr
		}
		cert, certKey := tc.ca.issue(t, id, id+" gen-1")
		tc.certFiles, tc.keyFiles = append(tc.certFiles, cert), append(tc.keyFiles, certKey)
		logs := &lockedBuffer{}
		cmd := exec.Command(tc.bin, "serve", "--db", tlsDB("postgres"), "--listen", addr, "--id", id, "--allow-superuser",
			"--allow-raw-sql", "--raw-sql-db", tlsDB("hafe_client:client-secret"),
			"--heartbeat", "200ms", "--owner-liveness", "1s", "--fence-grace", "1s", "--drain-timeout", "5s",
			"--admin-token", tlsTestAdminToken, "--mtcp-listen", maddr, "--mtcp-advertise", adv, "--cluster-key-file", key,
			"--tls-cert", cert, "--tls-key", certKey, "--peer-ca", tc.ca.file)
		cmd.Stdout, cmd.Stderr = logs, logs
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			if t.Failed() {
				t.Logf("%s's log:\n%s", id, lastLinesOf(logs.String(), 30))
			}
		})
		tc.ids, tc.procs, tc.logs = append(tc.ids, id), append(tc.procs, cmd), append(tc.logs, logs)
		tc.https, tc.mtcp, tc.listenAddr = append(tc.https, https), append(tc.mtcp, adv), append(tc.listenAddr, addr)
	}
	hc := tc.httpClient()
	for i, addr := range tc.https {
		deadline := time.Now().Add(30 * time.Second)
		for {
			r, err := hc.Get("https://" + addr + "/readyz")
			if err == nil {
				r.Body.Close()
				if r.StatusCode == 200 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never became ready: %v\n%s", tc.ids[i], err, tc.logs[i].String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// Wait until fe-0 lists every front-end to its MTCP clients.
	d := &mtcp.Dialer{TLSConfig: tc.clientTLS()}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, err := d.DialMTCP(ctx, tc.mtcp[0])
		if err == nil {
			known := len(c.Servers())
			c.Close()
			if known >= n {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("fe-0 never listed the %d front-ends to its MTCP clients (last: %v)", n, err)
		}
	}
	return tc
}

func (tc *tlsCluster) clientTLS() *tls.Config { return &tls.Config{RootCAs: tc.ca.pool} }

func (tc *tlsCluster) httpClient() *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc.clientTLS()}}
}

// hafe runs the hafe binary to its end.
func (tc *tlsCluster) hafe(t *testing.T, args ...string) submitRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tc.bin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	r := submitRun{stdout: out.String(), stderr: errOut.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestEveryHopIsEncrypted: a batch over MTCP moves between two front-ends
// in the middle (its front-end is drained with hafe drain over HTTPS), and
// another is sent over HTTPS; every hop goes through a relay that records
// its bytes: client to front-end (HTTPS and MTCP), front-end to front-end
// (the peer channel that hands the connection over) and front-end to
// PostgreSQL (sslmode=verify-full). No relay ever saw the batches' SQL,
// their bodies or the reports in the clear, while a plain connection
// through the same kind of relay shows them. The moved batch's response is
// byte for byte a fault-free one's, and every slot ran once.
func TestEveryHopIsEncrypted(t *testing.T) {
	tc := startTLSCluster(t, 2, true)
	const marker = "zqxplainmarker"
	const n, drainAt = 40, 10
	file := filepath.Join(tc.dir, "batch.json")
	os.WriteFile(file, slowEffectBatch(marker+"e", n), 0o600)

	cmd := exec.Command(tc.bin, "submit", "--mtcp", "--to", tc.mtcp[0], "--ca", tc.ca.file, file)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var got bytes.Buffer
	var lines []batchLine
	drained := make(chan submitRun, 1)
	br := bufio.NewReader(stdout)
	for {
		raw, err := br.ReadBytes('\n')
		if len(raw) == 0 && err != nil {
			break
		}
		var l batchLine
		if err := json.Unmarshal(raw, &l); err != nil {
			t.Fatalf("line %q: %v", raw, err)
		}
		got.Write(raw)
		lines = append(lines, l)
		if len(lines) == drainAt {
			go func() {
				drained <- tc.hafe(t, "drain", "https://"+tc.https[0], "--ca", tc.ca.file, "--admin-token", tlsTestAdminToken, "--wait", "20s")
			}()
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("submit: %v\n%s", err, stderr.String())
	}
	if d := <-drained; d.code != 0 || !strings.Contains(d.stdout, "drained") {
		t.Fatalf("hafe drain over HTTPS: exit %d\n%s%s", d.code, d.stdout, d.stderr)
	}
	if !strings.Contains(stderr.String(), "connection moved from "+tc.mtcp[0]+" to "+tc.mtcp[1]) {
		t.Errorf("the connection did not move from fe-0 to fe-1:\n%s", stderr.String())
	}
	checkEffectsOnce(t, tc.directURL, marker+"e", n, lines)
	// fe-1 took the state from fe-0 over their peer channel (lazy), which
	// crosses fe-0's MTCP relay.
	resp, err := tc.httpClient().Get("https://" + tc.https[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !regexp.MustCompile(`hafe_mtcp_migrations_total\{mode="lazy",result="ok",role="new_server",trigger="[a-z_]+"\} 1`).Match(metrics) {
		t.Errorf("fe-1 counts no migration of state fetched from fe-0 over the peer channel:\n%s", grepLines(string(metrics), "hafe_mtcp_migrations_total"))
	}

	// The same batch, fault-free, over MTCP to fe-1; and one over HTTPS.
	os.WriteFile(file, slowEffectBatch(marker+"r", n), 0o600)
	ref := tc.hafe(t, "submit", "--mtcp", "--quiet", "--to", tc.mtcp[1], "--ca", tc.ca.file, file)
	if ref.code != 0 {
		t.Fatalf("reference run: exit %d: %s", ref.code, ref.stderr)
	}
	if a, b := batchIDs.ReplaceAll(got.Bytes(), nil), batchIDs.ReplaceAll([]byte(ref.stdout), nil); !bytes.Equal(a, b) {
		t.Errorf("the moved batch's response differs from a fault-free one:\n%s\nwant\n%s", a, b)
	}
	os.WriteFile(file, slowEffectBatch(marker+"h", 3), 0o600)
	if r := tc.hafe(t, "submit", "--quiet", "--to", "https://"+tc.https[1], "--ca", tc.ca.file, file); r.code != 0 {
		t.Fatalf("submit over HTTPS: exit %d: %s", r.code, r.stderr)
	}

	// The relays carried it all, and none of it in the clear.
	hops := map[string]*recordingRelay{"client->fe-0 HTTPS": tc.httpRelay[0], "client->fe-1 HTTPS": tc.httpRelay[1],
		"client,fe-1->fe-0 MTCP and peer channel": tc.mtcpRelay[0], "client,fe-0->fe-1 MTCP and peer channel": tc.mtcpRelay[1],
		"front-ends->PostgreSQL": tc.pgRelay}
	for name, r := range hops {
		conns, bytes, _ := r.carried("")
		for _, m := range []string{marker, "INSERT INTO", "pg_sleep", `"transactions"`, "committed", "POST /v1/batches"} {
			if _, _, clear := r.carried(m); clear {
				t.Errorf("%s: %q went through in the clear", name, m)
			}
		}
		t.Logf("%s: %d connections, %d bytes, all encrypted", name, conns, bytes)
		if bytes == 0 {
			t.Errorf("%s carried nothing", name)
		}
	}
	// The relay does see what is sent in the clear.
	control := startRelay(t, strings.TrimPrefix(strings.Split(tc.directURL, "/")[2], "postgres@"))
	plain, err := pgx.Connect(context.Background(), strings.Replace(tc.directURL, strings.Split(tc.directURL, "/")[2], "postgres@"+control.addr, 1))
	if err != nil {
		t.Fatal(err)
	}
	plain.Exec(context.Background(), "SELECT '"+marker+"'")
	plain.Close(context.Background())
	if _, _, clear := control.carried(marker); !clear {
		t.Error("the relay saw no marker on a plain connection: it could not tell")
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestClientsRefuseAFrontEndTheirCADidNotSign: every client of a TLS
// front-end, given a CA that did not sign its certificate, stops at the
// handshake with an error that says so and names the flag to check; the
// agent logs it. With the right CA the agent carries a batch over TLS.
func TestClientsRefuseAFrontEndTheirCADidNotSign(t *testing.T) {
	tc := startTLSCluster(t, 1, false)
	rogue := newTestCA(t, tc.dir, "rogue")
	file := filepath.Join(tc.dir, "batch.json")
	os.WriteFile(file, slowEffectBatch("ca", 2), 0o600)
	url := "https://" + tc.https[0]
	for _, args := range [][]string{
		{"submit", "--to", url, file},
		{"submit", "--mtcp", "--to", tc.mtcp[0], file},
		{"drain", url, "--admin-token", tlsTestAdminToken},
		{"batches", "ls", "--to", url, "--admin-token", tlsTestAdminToken},
	} {
		start := time.Now()
		r := tc.hafe(t, append(args, "--ca", rogue.file)...)
		t.Logf("hafe %s: exit %d after %v: %s", strings.Join(args, " "), r.code, time.Since(start).Round(time.Millisecond), lastLinesOf(r.stderr, 2))
		if r.code == 0 || !strings.Contains(r.stderr, "certificate signed by unknown authority") || !strings.Contains(r.stderr, "check --ca") {
			t.Errorf("hafe %s with another CA: exit %d, stderr:\n%s\nwant a failure saying the certificate is signed by an unknown authority and to check --ca", strings.Join(args, " "), r.code, r.stderr)
		}
		if want := map[string]int{"submit": 3, "drain": 1}[args[0]]; want != 0 && r.code != want {
			t.Errorf("hafe %s with another CA: exit %d, want %d (refused)", strings.Join(args, " "), r.code, want)
		}
		if strings.Contains(r.stderr, "attempt 2") {
			t.Errorf("hafe %s retried a certificate it cannot verify:\n%s", strings.Join(args, " "), r.stderr)
		}
	}
	// With the right CA: HTTPS, MTCP over TLS, and MTCP named by an
	// https:// URL (the path's TLS is the only layer).
	for _, args := range [][]string{{"--to", url}, {"--mtcp", "--to", tc.mtcp[0]}, {"--mtcp", "--to", "https://" + tc.mtcp[0]}} {
		if r := tc.hafe(t, append([]string{"submit", "--quiet", "--ca", tc.ca.file, file}, args...)...); r.code != 0 {
			t.Errorf("submit %v with the right CA: exit %d: %s", args, r.code, r.stderr)
		}
	}

	for _, ca := range []*testCA{rogue, tc.ca} {
		addr := freeAddr(t)
		var log lockedBuffer
		agent := exec.Command(tc.bin, "agent", "--listen", addr, "--servers", tc.mtcp[0], "--ca", ca.file, "--dial-timeout", "3s", "--shutdown-timeout", "1s")
		agent.Stdout, agent.Stderr = &log, &log
		agent.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := agent.Start(); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if c, err := net.Dial("tcp", addr); err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the agent never listened:\n%s", log.String())
			}
		}
		body, _ := os.ReadFile(file)
		start := time.Now()
		hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := hc.Post("http://"+addr+"/v1/batches", "application/json", bytes.NewReader(body))
		var out []byte
		if err == nil {
			out, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		agent.Process.Signal(syscall.SIGTERM)
		agent.Wait()
		t.Logf("agent --ca %s: %v after %v", filepath.Base(ca.file), err, time.Since(start).Round(time.Millisecond))
		if ca == rogue {
			if err == nil || !strings.Contains(log.String(), "certificate signed by unknown authority") || !strings.Contains(log.String(), "check the CA the agent trusts (--ca)") {
				t.Errorf("agent with another CA: %v, log:\n%s\nwant the connection reset and a log line naming --ca", err, log.String())
			}
			continue
		}
		if err != nil || resp.StatusCode != 200 || !bytes.Contains(out, []byte(`"done":true`)) {
			t.Errorf("agent with the right CA: %v %s\n%s", err, out, log.String())
		}
	}
}

// handshakeName is the common name of the certificate a TLS handshake
// with addr shows now.
func handshakeName(t *testing.T, addr string, pool *x509.CertPool) string {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// TestServeReloadsItsCertificateOnSIGHUPUnderLoad: while two batches
// stream, one over HTTPS and one over MTCP with TLS, the front-end's
// certificate files are replaced and it gets SIGHUP. New handshakes on
// both listeners show the new certificate; the running batches go on to
// their summary lines on their old connections. A broken file is refused
// on the next SIGHUP with a log line, and the certificate in use stays.
func TestServeReloadsItsCertificateOnSIGHUPUnderLoad(t *testing.T) {
	tc := startTLSCluster(t, 1, false)
	const n = 40
	listeners := map[string]string{"HTTPS": tc.https[0], "MTCP": tc.mtcp[0]}
	for name, addr := range listeners {
		if cn := handshakeName(t, addr, tc.ca.pool); cn != "fe-0 gen-1" {
			t.Fatalf("%s shows %q at start", name, cn)
		}
	}
	d := &mtcp.Dialer{TLSConfig: tc.clientTLS(), Servers: tc.mtcp}
	clients := map[string]func() (*http.Response, error){
		"HTTPS": func() (*http.Response, error) {
			return tc.httpClient().Post("https://"+tc.https[0]+"/v1/batches", "application/json", bytes.NewReader(slowEffectBatch("hup-https", n)))
		},
		"MTCP": func() (*http.Response, error) {
			hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
			return hc.Post("http://"+tc.mtcp[0]+"/v1/batches", "application/json", bytes.NewReader(slowEffectBatch("hup-mtcp", n)))
		},
	}
	type stream struct {
		name string
		br   *bufio.Reader
		body io.Closer
	}
	var streams []stream
	for name, post := range clients {
		resp, err := post()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v", name, err)
		}
		defer resp.Body.Close()
		s := stream{name, bufio.NewReader(resp.Body), resp.Body}
		for range 3 {
			if _, err := s.br.ReadBytes('\n'); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		streams = append(streams, s)
	}

	certPEM, keyPEM := tc.ca.issuePEM(t, "fe-0 gen-2")
	replaceFile(t, tc.keyFiles[0], keyPEM)
	replaceFile(t, tc.certFiles[0], certPEM)
	tc.procs[0].Process.Signal(syscall.SIGHUP)
	waitLog(t, tc.logs[0], "TLS certificates reloaded", 1)
	for name, addr := range listeners {
		if cn := handshakeName(t, addr, tc.ca.pool); cn != "fe-0 gen-2" {
			t.Errorf("%s shows %q after the reload, want fe-0 gen-2", name, cn)
		}
	}
	for _, s := range streams {
		lines := 3
		var last []byte
		for {
			raw, err := s.br.ReadBytes('\n')
			if len(raw) == 0 && err != nil {
				break
			}
			lines++
			last = raw
		}
		if lines != n+1 || !bytes.Contains(last, []byte(`"done":true`)) {
			t.Errorf("%s: the batch running across the reload ended after %d lines (%q), want %d and the summary", s.name, lines, last, n+1)
		}
	}

	replaceFile(t, tc.certFiles[0], []byte("not a certificate"))
	tc.procs[0].Process.Signal(syscall.SIGHUP)
	waitLog(t, tc.logs[0], "TLS certificates not reloaded: the ones in use stay", 1)
	for name, addr := range listeners {
		if cn := handshakeName(t, addr, tc.ca.pool); cn != "fe-0 gen-2" {
			t.Errorf("%s shows %q after a failed reload, want fe-0 gen-2 still", name, cn)
		}
	}
	if err := tc.procs[0].Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the front-end is gone after SIGHUPs: %v", err)
	}
}

// waitLog waits until log holds msg at least count times.
func waitLog(t *testing.T, log *lockedBuffer, msg string, count int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); strings.Count(log.String(), msg) < count; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line %q:\n%s", msg, log.String())
		}
	}
}

// TestAgentOverTLSSurvivesAKill: hafe agent --ca carries curl over MTCP
// with TLS to front-ends serving TLS (and mutual TLS between them); the
// front-end serving the batch is SIGKILLed in the middle, and curl's one
// response goes on from the other: every line, every slot once.
func TestAgentOverTLSSurvivesAKill(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl")
	}
	tc := startTLSCluster(t, 2, false)
	agentAddr := freeAddr(t)
	logs := &lockedBuffer{}
	cmd := exec.Command(tc.bin, "agent", "--listen", agentAddr, "--servers", tc.mtcp[0], "--ca", tc.ca.file, "--path-timeout", "1s")
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("agent's log:\n%s", lastLinesOf(logs.String(), 30))
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if strings.Contains(logs.String(), "agent listening") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not start:\n%s", logs.String())
		}
	}

	const n, killAt = 40, 10
	s := curlClient(t, agentAddr, slowEffectBatch("tlsagent", n))
	victim := slices.Index(tc.ids, s.frontEnd)
	if s.status != 200 || victim < 0 {
		t.Fatalf("status %d from front-end %q", s.status, s.frontEnd)
	}
	var lines []batchLine
	for {
		raw, err := s.body.ReadBytes('\n')
		if err == io.EOF && len(raw) == 0 {
			break
		}
		if err != nil {
			t.Fatalf("after %d lines: %v", len(lines), err)
		}
		var l batchLine
		if err := json.Unmarshal(raw, &l); err != nil {
			t.Fatalf("line %d %q: %v", len(lines)+1, raw, err)
		}
		lines = append(lines, l)
		if len(lines) == killAt {
			tc.procs[victim].Process.Kill()
		}
	}
	if err := s.wait(); err != nil {
		t.Fatal(err)
	}
	checkEffectsOnce(t, tc.directURL, "tlsagent", n, lines)
	if log := logs.String(); !strings.Contains(log, "msg=migrated") || !strings.Contains(log, "trigger=path_failure") {
		t.Errorf("the agent logged no migration for the kill of %s:\n%s", s.frontEnd, log)
	}
}
