# syntax=docker/dockerfile:1
#
# chatd container image: a static Go binary on distroless, run as non-root.
#
#   docker build -t chatd:dev .
#   docker run --rm -p 4000:4000 chatd:dev          # single node, dev mode, SQLite
#
# Build stage: the module is downloaded in its own layer, so a source change
# does not re-download dependencies.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# CGO_ENABLED=0: a static binary (no libc, no dynamic loader), which is what
# distroless/static needs; the SQLite driver is pure Go. -trimpath drops local
# paths from the binary, -s -w its symbol tables.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/chatd ./cmd/chatd

# Runtime stage: no shell, no package manager; CA certificates and tzdata
# only. The :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/chatd /usr/local/bin/chatd
# The working directory is the nonroot user's home: the default SQLite file
# (chat.db, single-node use only) lands there. Production sets
# CHAT_DATABASE_URL to PostgreSQL.
WORKDIR /home/nonroot
ENV CHAT_ADDR=:4000 \
    CHAT_CLUSTER_ADDR=:7946 \
    CHAT_LOG_FORMAT=json
USER 65532:65532
# HTTP and WebSocket clients.
EXPOSE 4000/tcp
# memberlist gossip: TCP (push/pull, fallback probes) and UDP (probes, gossip).
EXPOSE 7946/tcp 7946/udp
ENTRYPOINT ["/usr/local/bin/chatd"]
CMD ["serve"]
