module orcd

go 1.26.8

require (
	github.com/ebitengine/purego v0.11.3 // indirect
	github.com/prometheus/client_golang v1.25.0 // indirect
)
