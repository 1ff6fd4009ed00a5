# The test command of the README, also run by CI (.ci/run).
.PHONY: test build

build:
	CGO_ENABLED=0 go build -o bin/orcd ./cmd/orcd

test:
	go vet ./...
	cd server/testdata/openai-client && npm ci --no-audit --no-fund
	ORCD_REQUIRE_OPENAI_CLIENT=1 go test -count=1 -timeout 60m ./...
	go test -race -count=1 -timeout 60m ./...
