# edgeflow: `make test` is the one test command (README, .ci/run).
GO          ?= go
BIN         ?= bin
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
LDFLAGS     ?= -s -w -X main.version=$(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: all build test services check fmt vet lint unit docker-api-min fuzz bench demo fleet-demo size footprint clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/edgeflow-agent ./cmd/agent
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/edgeflow ./cmd/controller

# test: the services the tests need (Docker engine, Compose CLIs), formatting,
# vet, staticcheck, then every test with the race detector.
test: services check unit docker-api-min

services:
	./scripts/services.sh

check: fmt vet lint

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

lint:
	$(GO) run $(STATICCHECK) ./...

unit:
	$(GO) test -race -count=1 -timeout 20m ./...

# docker-api-min: the Docker package's tests again with the API pinned to
# 1.40, the oldest engine API edgeflow supports (Docker 19.03).
docker-api-min:
	DOCKER_API_VERSION=1.40 $(GO) test -count=1 -timeout 10m ./steps/docker

# fuzz: a short run of every fuzz target (FUZZTIME=1m for longer).
FUZZTIME ?= 20s
fuzz:
	$(GO) test ./flow -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME)
	$(GO) test ./packaging -run '^$$' -fuzz '^FuzzManifest$$' -fuzztime $(FUZZTIME)
	$(GO) test ./packaging -run '^$$' -fuzz '^FuzzOpen$$' -fuzztime $(FUZZTIME)
	$(GO) test ./transport -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME)

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# demo: apply the sample flow with a failing step, as a newcomer would.
demo: build
	./scripts/demo.sh

# fleet-demo: a controller and three kiosk agents on this machine; deploy
# a flow whose health check fails on one kiosk, which rolls back.
fleet-demo: build
	BIN=$(BIN) ./scripts/fleet-demo.sh

# size: the stripped agent binary (target: at most 10 MiB on amd64).
size: build
	@ls -l $(BIN)/edgeflow-agent | awk '{printf "edgeflow-agent: %.2f MiB\n", $$5/1048576}'

# footprint: the agent's binary size, idle memory and CPU, and peak memory
# while it runs a flow, each against its target (docs/operations.md,
# Measuring); it builds what it measures.
footprint:
	BIN=$(BIN) MAKE=$(MAKE) ./scripts/footprint.sh

clean:
	rm -rf $(BIN)
