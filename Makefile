# chatd: make help lists the targets.
SHELL := /bin/bash
GO ?= go
BUF := .tools/node_modules/.bin/buf

.PHONY: help build run test test-short test-python test-web test-browser web fuzz generate lint breaking fmt vet bench services-up services-down clean

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## build chatd, chatctl, chatbench and grpcfloor (a bare grpc-go server, for the idle-memory and CPU-per-message floors) into bin/
	$(GO) build -o bin/ ./cmd/...

run: build ## run chatd on its embedded defaults (gRPC :9090, HTTP :8080, ./data)
	./bin/chatd

$(BUF): .tools/package.json .tools/package-lock.json
	cd .tools && npm ci --no-audit --no-fund --loglevel=error
	@touch $(BUF)

generate: $(BUF) ## regenerate gen/ from proto/ with buf and local plugins
	$(BUF) generate

lint: $(BUF) ## buf lint, gofmt check and go vet
	$(BUF) lint
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'))" || { gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

fmt: ## gofmt -w the Go sources (gen/ excluded)
	gofmt -w $$(git ls-files '*.go' | grep -v '^gen/')

vet: ## go vet ./...
	$(GO) vet ./...

breaking: $(BUF) ## buf breaking against main
	$(BUF) breaking --against '.git#branch=main'

test: ## the whole suite: generated code up to date, lint, all Go tests (starts Redis and Cassandra)
	./scripts/test.sh

test-python: ## the Python client suite: stubs from proto/ by grpcio-tools, pytest against a real chatd
	./scripts/test-python.sh

web: ## rebuild the TypeScript generated from proto/ and the web app bundle embedded in chatd (client/web; npm)
	cd client/web && npm ci --no-audit --no-fund --loglevel=error && npm run generate && npm run build:app

test-web: ## the TypeScript client suite: generated code and bundle up to date, unit tests (scripts/test-web.sh)
	./scripts/test-web.sh

test-browser: ## the web app in Debian's chromium (playwright-core) against a real chatd and chatctl
	./scripts/test-browser.sh

fuzz: ## run every Go fuzz target briefly, or for FUZZTIME each (e.g. make fuzz FUZZTIME=10m)
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

test-short: ## unit and single-node tests only (no external services)
	$(GO) test -short -count=1 ./...

services-up: ## start Redis and a Cassandra CQL server for development (scripts/services.sh up)
	scripts/services.sh up

services-down: ## stop them (scripts/services.sh down)
	scripts/services.sh down

bench: ## Go micro-benchmarks of the hot path
	$(GO) test -run '^$$' -bench . -benchmem ./server/...

clean: ## remove build output
	rm -rf bin/
