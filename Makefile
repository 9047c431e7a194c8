# comfyui-gateway: the commands the README gives.
CARGO ?= cargo
SIM_LISTEN ?= 127.0.0.1:8188
# How long the simulator takes per sampler step in the demo, so progress is visible.
SIM_STEP_MS ?= 150
export LISTEN_ADDR ?= 127.0.0.1:8000

.PHONY: run demo test bench fmt lint build

build:
	$(CARGO) build --release --bins

## run: the gateway against COMFYUI_URL (default http://127.0.0.1:8188)
run:
	$(CARGO) run --release --bin comfyui-gateway

## demo: the gateway against the bundled ComfyUI simulator; Ctrl-C stops both
demo: build
	@set -e; \
	target/release/comfyui-sim --listen $(SIM_LISTEN) --step-ms $(SIM_STEP_MS) & sim=$$!; \
	trap 'kill $$sim 2>/dev/null; wait $$sim 2>/dev/null' EXIT INT TERM; \
	echo "comfyui-gateway demo: open http://$(LISTEN_ADDR)/ (ComfyUI simulator on $(SIM_LISTEN))"; \
	COMFYUI_URL=http://$(SIM_LISTEN) target/release/comfyui-gateway

## test: the whole suite (what .ci/run calls)
test:
	$(CARGO) test --all-targets
	$(CARGO) test --doc

## bench: throughput, latency and memory figures; asserts nothing about time
bench:
	$(CARGO) bench --bench gateway

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
