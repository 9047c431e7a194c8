# comfyui-gateway: the commands the README gives.
CARGO ?= cargo
SIM_LISTEN ?= 127.0.0.1:8188
# How long the simulator takes per sampler step in the demo, so progress is visible.
SIM_STEP_MS ?= 150
export LISTEN_ADDR ?= 127.0.0.1:8000

.PHONY: run demo test test-real-comfyui bench fmt lint build sim browser-deps

build:
	$(CARGO) build --release --bins

## sim: the ComfyUI simulator's binary (its own crate, crates/comfyui-sim)
sim:
	$(CARGO) build --release -p comfyui-sim

## run: the gateway against COMFYUI_URL (default http://127.0.0.1:8188)
run:
	$(CARGO) run --release --bin comfyui-gateway

## demo: the gateway against the bundled ComfyUI simulator; Ctrl-C stops both
demo: build sim
	@target/release/comfyui-sim --listen $(SIM_LISTEN) --step-ms $(SIM_STEP_MS) & sim=$$!; \
	trap 'kill $$sim 2>/dev/null' EXIT; \
	echo "comfyui-gateway demo: open http://$(LISTEN_ADDR)/ (ComfyUI simulator on $(SIM_LISTEN))"; \
	COMFYUI_URL=http://$(SIM_LISTEN) target/release/comfyui-gateway; status=$$?; \
	kill $$sim 2>/dev/null; wait $$sim 2>/dev/null; exit $$status

## test: the whole suite (what .ci/run calls); never against a real ComfyUI
test: browser-deps
	env -u REAL_COMFYUI_URL $(CARGO) test --workspace --all-targets
	env -u REAL_COMFYUI_URL $(CARGO) test --workspace --doc

## test-real-comfyui: the smoke suite against the real ComfyUI at REAL_COMFYUI_URL (with the
## model-free test nodes installed: see tests/real-comfyui/README.md); skipped without it
test-real-comfyui:
	@if [ -z "$$REAL_COMFYUI_URL" ]; then \
	  echo "test-real-comfyui: SKIPPED: REAL_COMFYUI_URL is not set (e.g. REAL_COMFYUI_URL=http://127.0.0.1:8188 make test-real-comfyui; see tests/real-comfyui/README.md)"; \
	  exit 0; \
	fi; \
	echo "test-real-comfyui: against $$REAL_COMFYUI_URL"; \
	$(CARGO) test --test real_comfyui -- --nocapture --test-threads=1

# The browser test's npm package (playwright-core; it never downloads a browser). Chromium itself
# comes from the system: `apt-get install chromium` (.ci/run does it).
browser-deps:
	@if [ -z "$$SKIP_BROWSER_TESTS" ] && [ ! -d tests/browser/node_modules/playwright-core ] \
	    && command -v npm >/dev/null; then \
	  npm ci --prefix tests/browser --no-audit --no-fund; \
	fi

## bench: throughput, latency and memory figures; asserts nothing about time
bench:
	$(CARGO) bench --bench gateway

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
