package pgtemp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNoBinaries means no PostgreSQL server binaries were found on this machine.
var ErrNoBinaries = errors.New("pgtemp: no PostgreSQL server binaries found (install postgresql or set HAFE_PG_BINDIR)")

// Options configures a throwaway server. The zero value is usable.
type Options struct {
	// BinDir holds initdb and postgres. Default: $HAFE_PG_BINDIR, then the
	// newest /usr/lib/postgresql/*/bin.
	BinDir string
	// Logger receives the server's start and stop events. Default: discard.
	Logger *slog.Logger
	// Settings are extra "name=value" server settings passed with -c.
	Settings []string
	// TLSCert and TLSKey, when set (PEM), turn on ssl with this server
	// certificate; clients then may connect with sslmode=verify-full and
	// sslrootcert naming its CA. Plain connections are still accepted.
	TLSCert, TLSKey []byte
}

// Server is a running throwaway PostgreSQL server. Its superuser is
// "postgres" with trust authentication on 127.0.0.1 only.
type Server struct {
	dir    string
	bin    string
	port   int
	opts   Options
	log    *slog.Logger
	cred   *syscall.Credential
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	dbs    int
}

// FindBinDir returns the directory holding initdb and postgres.
func FindBinDir() (string, error) {
	if d := os.Getenv("HAFE_PG_BINDIR"); d != "" {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", ErrNoBinaries
}

func pgMajor(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// Start initialises a new cluster in a temporary directory and starts it on
// a free loopback port.
func Start(ctx context.Context, opts Options) (*Server, error) {
	bin := opts.BinDir
	if bin == "" {
		var err error
		if bin, err = FindBinDir(); err != nil {
			return nil, err
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := os.MkdirTemp("", "hafe-pg-")
	if err != nil {
		return nil, fmt.Errorf("pgtemp: %w", err)
	}
	s := &Server{dir: dir, bin: bin, opts: opts, log: log}
	if err := s.init(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := s.start(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// initdb refuses to run as root, so as root the server runs as postgres.
func (s *Server) init(ctx context.Context) error {
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("pgtemp: running as root needs a postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(s.dir, uid, gid); err != nil {
			return fmt.Errorf("pgtemp: %w", err)
		}
	}
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, "initdb"),
		"-D", s.dataDir(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgtemp: initdb: %w: %s", err, lastLines(string(out), 5))
	}
	if s.opts.TLSCert != nil {
		// The server refuses a key others may read, or one not its own.
		for name, b := range map[string][]byte{"server.crt": s.opts.TLSCert, "server.key": s.opts.TLSKey} {
			f := filepath.Join(s.dataDir(), name)
			if err := os.WriteFile(f, b, 0o600); err != nil {
				return fmt.Errorf("pgtemp: %w", err)
			}
			if s.cred != nil {
				if err := os.Chown(f, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
					return fmt.Errorf("pgtemp: %w", err)
				}
			}
		}
	}
	return nil
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }

func (s *Server) start(ctx context.Context) error {
	if s.port == 0 {
		port, err := freePort()
		if err != nil {
			return err
		}
		s.port = port
	}
	args := []string{"-D", s.dataDir(), "-p", strconv.Itoa(s.port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=" + s.dir,
		"-c", "fsync=off", "-c", "max_connections=200"}
	if s.opts.TLSCert != nil {
		args = append(args, "-c", "ssl=on", "-c", "ssl_cert_file=server.crt", "-c", "ssl_key_file=server.key")
	}
	for _, kv := range s.opts.Settings {
		args = append(args, "-c", kv)
	}
	logFile, err := os.OpenFile(filepath.Join(s.dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("pgtemp: %w", err)
	}
	cmd := exec.Command(filepath.Join(s.bin, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Own process group, so a Ctrl-C at the terminal reaches us, not the
	// server: we stop it in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("pgtemp: start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logFile.Close(); close(exited) }()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	if err := s.waitReady(ctx, exited); err != nil {
		cmd.Process.Kill()
		<-exited
		return err
	}
	s.log.Info("postgres started", "port", s.port, "dir", s.dir)
	return nil
}

func (s *Server) waitReady(ctx context.Context, exited <-chan struct{}) error {
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	for {
		c, err := net.DialTimeout("tcp", s.addr(), time.Second)
		if err == nil {
			c.Close()
			// The port opens before recovery finishes; the pid file's last
			// line says "ready" once connections are accepted.
			// A hot standby's says "standby".
			if b, err := os.ReadFile(filepath.Join(s.dataDir(), "postmaster.pid")); err == nil && (strings.Contains(string(b), "ready") || strings.Contains(string(b), "standby")) {
				return nil
			}
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
			return fmt.Errorf("pgtemp: postgres exited during start: %s", lastLines(string(b), 5))
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return errors.New("pgtemp: postgres did not become ready within 60s")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *Server) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL returns a connection URL for database db as the superuser.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", s.addr(), db)
}

// Port is the server's TCP port on 127.0.0.1; it stays the same across Restart.
func (s *Server) Port() int { return s.port }

// CreateDatabase creates database name using the createdb binary.
func (s *Server) CreateDatabase(ctx context.Context, name string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, "createdb"), "-h", "127.0.0.1", "-p", strconv.Itoa(s.port), "-U", "postgres", name)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgtemp: createdb %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Restart stops the server immediately (as a crash would: SIGQUIT, no
// checkpoint) and starts it again on the same port.
func (s *Server) Restart(ctx context.Context) error {
	s.signal(syscall.SIGQUIT)
	return s.start(ctx)
}

// Stop shuts the server down fast and removes its directory.
func (s *Server) Stop() error {
	s.signal(syscall.SIGINT)
	return os.RemoveAll(s.dir)
}

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
	s.log.Info("postgres stopped", "port", s.port, "signal", sig.String())
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtemp: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// NewDatabase creates a fresh database with a unique name and returns its URL.
func (s *Server) NewDatabase(ctx context.Context, prefix string) (string, error) {
	s.mu.Lock()
	s.dbs++
	name := fmt.Sprintf("%s_%d", prefix, s.dbs)
	s.mu.Unlock()
	if err := s.CreateDatabase(ctx, name); err != nil {
		return "", err
	}
	return s.URL(name), nil
}

// StartStandby starts a streaming standby of primary: pg_basebackup -R
// from it into a new temporary directory, then a hot standby that
// connects back as application name name (what synchronous_standby_names
// and pg_stat_replication see).
func StartStandby(ctx context.Context, primary *Server, name string) (*Server, error) {
	dir, err := os.MkdirTemp("", "hafe-pg-standby-")
	if err != nil {
		return nil, fmt.Errorf("pgtemp: %w", err)
	}
	s := &Server{dir: dir, bin: primary.bin, opts: primary.opts, log: primary.log, cred: primary.cred}
	if s.cred != nil {
		if err := os.Chown(dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("pgtemp: %w", err)
		}
	}
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, "pg_basebackup"), "-D", s.dataDir(), "-R", "-X", "stream", "-c", "fast", "--no-sync",
		"-d", fmt.Sprintf("host=127.0.0.1 port=%d user=postgres application_name=%s", primary.port, name))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtemp: pg_basebackup: %w: %s", err, lastLines(string(out), 5))
	}
	if err := s.start(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// Promote ends the standby's recovery (pg_ctl promote): it becomes a
// primary, on a new timeline.
func (s *Server) Promote(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, "pg_ctl"), "promote", "-w", "-D", s.dataDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgtemp: pg_ctl promote: %w: %s", err, lastLines(string(out), 5))
	}
	return nil
}

// Crash stops the server as a crash would (immediate shutdown, no
// checkpoint) and leaves it stopped; its directory stays until Stop.
func (s *Server) Crash() { s.signal(syscall.SIGQUIT) }
