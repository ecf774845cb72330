# hafe: make demo | make test | make images | make image | make compose-smoke
#
# Integration tests run containers built locally (no registry is needed):
#   HAFE_PG_IMAGE  PostgreSQL image (default hafe-postgres:15, built from
#                  Debian packages by test/images/build-postgres.sh; set e.g.
#                  postgres:17 to use one from your registry instead)
#   HAFE_IMAGE     hafe image (default hafe:dev, FROM scratch, static binary)

GO            ?= go
TEST_TIMEOUT  ?= 40m
TEST_FLAGS    ?=
PKGS          ?= ./...
# Files tests keep for review (the dashboard's screenshots), under
# $(TEST_OUTPUT)/_artifacts/<random>/: go test -artifacts.
TEST_OUTPUT   ?= $(CURDIR)/test-output
FUZZTIME      ?= 30s

export HAFE_PG_IMAGE ?= hafe-postgres:15
export HAFE_IMAGE    ?= hafe:dev
# This machine looks like a container (/.dockerenv): without the override,
# testcontainers dials the default gateway instead of the published port.
export TESTCONTAINERS_HOST_OVERRIDE ?= localhost
# No registry to pull Ryuk from: the tests clean up after themselves.
export TESTCONTAINERS_RYUK_DISABLED ?= true

.PHONY: all images image image-postgres image-hafe compose-smoke test test-short test-clean demo vet fuzz-short

all: vet test

images: image-postgres image-hafe

image-postgres:
	test/images/build-postgres.sh

image-hafe:
	test/images/build-hafe.sh

# The hafe image from the root Dockerfile (FROM scratch: the script builds the
# static binary and the build context, no base image is pulled).
image: image-hafe

# compose.yaml started, one batch through it with curl, removed (CI runs it).
compose-smoke: images
	packaging/compose/smoke.sh

test: images
	mkdir -p $(TEST_OUTPUT)
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -artifacts -outputdir $(TEST_OUTPUT) $(TEST_FLAGS) $(PKGS)

# Unit tests only: packages that need containers skip themselves under -short.
test-short:
	$(GO) test -count=1 -short -timeout 10m $(TEST_FLAGS) $(PKGS)

# Containers and networks that a crashed or killed test run left behind (Ryuk,
# which would reap them, is disabled). Removes every testcontainers-labelled
# one on this Docker daemon: not while other test runs are going on.
test-clean:
	@docker ps -aq --filter label=org.testcontainers=true | xargs -r docker rm -f -v
	@docker network ls -q --filter label=org.testcontainers=true | xargs -r docker network rm

vet:
	$(GO) vet $(PKGS)

demo:
	$(GO) run ./cmd/hafe demo

# Every Fuzz target in the module, FUZZTIME each (go test allows one -fuzz
# target per run, so they run one after another).
fuzz-short:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for fn in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$fn ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done
