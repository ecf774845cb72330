package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
)

// Default image names; HAFE_PG_IMAGE and HAFE_IMAGE override them.
const (
	DefaultPostgresImage = "hafe-postgres:15"
	DefaultHafeImage     = "hafe:dev"
)

// testcontainers-go reads its configuration once, on first use: these must be
// in the environment before any call into it, so they are set at package
// initialisation (an explicit value in the environment wins).
var tcDefaults = map[string]string{
	"TESTCONTAINERS_HOST_OVERRIDE": "localhost",
	"TESTCONTAINERS_RYUK_DISABLED": "true",
}

func init() { setTestcontainersDefaults() }

func setTestcontainersDefaults() {
	for k, v := range tcDefaults {
		if _, ok := os.LookupEnv(k); !ok {
			os.Setenv(k, v)
		}
	}
}

// PostgresImage is the PostgreSQL image the tests run: $HAFE_PG_IMAGE or
// DefaultPostgresImage.
func PostgresImage() string { return envOr("HAFE_PG_IMAGE", DefaultPostgresImage) }

// HafeImage is the hafe image the tests run: $HAFE_IMAGE or DefaultHafeImage.
func HafeImage() string { return envOr("HAFE_IMAGE", DefaultHafeImage) }

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// InCI reports whether the tests run in CI (CI set to anything but "" or
// "false"), where a missing Docker is a failure rather than a reason to skip.
func InCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v != "" && v != "false" && v != "0"
}

var docker struct {
	once   sync.Once
	client *testcontainers.DockerClient
	err    error
}

// dockerClient is one Docker client for the whole test process; it is never
// closed (the process ends first).
func dockerClient() (*testcontainers.DockerClient, error) {
	docker.once.Do(func() {
		setTestcontainersDefaults()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		docker.client, docker.err = testcontainers.NewDockerClientWithOpts(ctx)
		if docker.err == nil {
			// Info is cached by testcontainers; Ping proves the daemon answers now.
			if _, err := docker.client.Ping(ctx, client.PingOptions{}); err != nil {
				docker.err = err
			}
		}
		if docker.err != nil {
			docker.err = fmt.Errorf("docker daemon unavailable: %w", docker.err)
		}
	})
	return docker.client, docker.err
}

// RequireDocker skips the test when Docker does not answer (or under
// -short), and fails it instead when running in CI.
func RequireDocker(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("container test: skipped under -short")
	}
	if _, err := dockerClient(); err != nil {
		if InCI() {
			t.Fatalf("CI=%s but %v", os.Getenv("CI"), err)
		}
		t.Skipf("skipping container test: %v (with CI=true this is a failure)", err)
	}
}

// image builds, at most once per test process and image.
var builds struct {
	sync.Mutex
	done map[string]error
}

// ensureImage runs test/images/<script> once per process for image, unless
// the variable skipVar is "0". The scripts themselves skip what is up to
// date and serialise concurrent builds from parallel test packages.
func ensureImage(t testing.TB, image, script, skipVar string) {
	t.Helper()
	if os.Getenv(skipVar) == "0" {
		return
	}
	builds.Lock()
	defer builds.Unlock()
	if builds.done == nil {
		builds.done = map[string]error{}
	}
	err, ok := builds.done[image]
	if !ok {
		err = runBuildScript(t, script, nil)
		builds.done[image] = err
	}
	if err != nil {
		t.Fatalf("image %s: %v (set %s=0 to use the image as it is)", image, err, skipVar)
	}
}

// BuildHafeImage builds an image like the hafe image from another main
// package of the module (pkg, e.g. "./test/internal/fakehafe"), once per test
// process, and returns its name.
func BuildHafeImage(t testing.TB, image, pkg string) string {
	t.Helper()
	RequireDocker(t)
	builds.Lock()
	defer builds.Unlock()
	if builds.done == nil {
		builds.done = map[string]error{}
	}
	err, ok := builds.done[image]
	if !ok {
		err = runBuildScript(t, "build-hafe.sh", []string{"HAFE_IMAGE=" + image, "HAFE_PKG=" + pkg})
		builds.done[image] = err
	}
	if err != nil {
		t.Fatalf("image %s from %s: %v", image, pkg, err)
	}
	return image
}

func runBuildScript(t testing.TB, script string, env []string) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	path := filepath.Join(root, "test", "images", script)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "bash", path)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	t.Logf("%s (%s):\n%s", script, time.Since(start).Round(time.Millisecond), strings.TrimSpace(string(out)))
	if err != nil {
		return fmt.Errorf("%s: %w", script, err)
	}
	return nil
}

// RepoRoot is the root of the hafe module: the nearest directory above the
// working directory holding go.mod and test/images.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if fileExists(filepath.Join(dir, "go.mod")) && fileExists(filepath.Join(dir, "test", "images")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("hafe repository root not found above the working directory")
		}
		dir = parent
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// cleanupContext is for t.Cleanup functions: the test's own context is
// already cancelled when they run.
func cleanupContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Minute)
}
