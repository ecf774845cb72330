# hafe's container image: one static binary (CGO_ENABLED=0) in an image FROM
# scratch, nothing else. It is not a multi-stage build, so that no base image
# has to be pulled from a registry: build it with
#
#   make image            # HAFE_IMAGE=hafe:dev by default
#
# which runs test/images/build-hafe.sh: it compiles ./cmd/hafe into a build
# context's rootfs/hafe, adds an empty world-writable rootfs/tmp for
# os.TempDir, and runs `docker build` with this file. `docker build .` from
# the repository root does not work: the binary is not in the tree.
FROM scratch
ARG HAFE_SHA256=unknown
LABEL dev.hafe.binary-sha256=${HAFE_SHA256}
COPY rootfs/ /
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["/hafe"]
