GO ?= go

.PHONY: run test deps vet fuzz bench build

# Run a single node on the embedded defaults (no services needed).
run:
	$(GO) run ./cmd/chatd

# Install what the tests need, then run every test with the race detector.
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 30m ./...

deps:
	./scripts/deps.sh

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags="-s -w" -o bin/chatd ./cmd/chatd

# Run each fuzz target for FUZZTIME (default 30s).
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./chat -run '^$$' -fuzz '^FuzzDecodeFrame$$' -fuzztime $(FUZZTIME)

bench:
	$(GO) test ./chat -run '^$$' -bench . -benchmem
