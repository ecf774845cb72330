// Package harness runs hafe's integration tests on real containers:
// PostgreSQL from HAFE_PG_IMAGE and hafe front-ends from HAFE_IMAGE, on a
// Docker network that each test creates for itself, with testcontainers-go.
//
// A test starts with RequireDocker, then NewNetwork, StartPostgres and
// StartHafe (or StartHafes); each returns URLs for the host side (the test
// process) and for the network (one container talking to another), and a
// Container handle that can kill, pause, cut off and restart the container —
// the faults the tests inject.
//
// A typical fault test:
//
//	nw := harness.NewNetwork(t)
//	pg := harness.StartPostgres(t, nw, harness.PostgresConfig{})
//	if code, out := harness.RunHafe(t, nw, time.Minute, "db", "install", "--db", pg.NetworkURL); code != 0 {
//		t.Fatalf("db install: %s", out)
//	}
//	fes := harness.StartHafes(t, nw, 2, func(i int) harness.HafeConfig {
//		id := fmt.Sprintf("fe%d", i+1)
//		return harness.HafeConfig{Alias: id, Args: harness.ServeArgs(pg.NetworkURL, id)}
//	})
//	// POST a batch to fes[0].URL, read some lines, then:
//	fes[0].Kill(ctx) // or Disconnect, Pause, Isolate; pg.Restart(ctx, 0)
//	// retry with the same Idempotency-Key on fes[1].URL; check rows via pg.Connect(t).
//
// Front-ends serve Migratory TCP too with HafeConfig.MTCP (port 7000,
// advertised as ALIAS:7000 on the test network); a client in the test
// process reaches them through MTCPDialPath, which maps those addresses to
// the published ports.
//
// Images are built locally, never pulled: the first use of an image in a test
// process runs test/images/build-postgres.sh or build-hafe.sh (cheap when
// nothing changed). Set HAFE_PG_IMAGE_BUILD=0 or HAFE_IMAGE_BUILD=0 to use an
// image as it is.
//
// The invariant: everything a test creates is removed by t.Cleanup — Ryuk,
// testcontainers' reaper, is disabled because it cannot be pulled here — and
// TESTCONTAINERS_HOST_OVERRIDE=localhost is set before testcontainers-go
// reads its configuration (this machine has a /.dockerenv, so testcontainers
// would otherwise dial the default gateway instead of the published ports).
package harness
