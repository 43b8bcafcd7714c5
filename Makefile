# The two commands a newcomer needs: `make run` (the main job, end to end on fixture content)
# and `make test`. Both run `make setup` first, which installs what is missing and is fast otherwise.
VENV   := .venv
PY     := $(VENV)/bin/python
OUT    ?= out/run
PYTEST_ARGS ?=
# The builder finds its tools on PATH; this puts the mkosi and ukify that `make setup` extracts
# into .tools/bin first, for every target (an installed builder needs nothing of the kind).
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.PHONY: setup run test unit bench clean

setup:
	@bash tools/setup.sh

run: setup
	$(PY) -m tests.e2e.main_job --output $(OUT)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The suite once more on fixture content whose kernel package is rebuilt under another
# VERSION-RELEASE (same kernel binary): proves no test expects the version Debian serves today.
# Booting does not depend on the package version, so boot tests are left to `make test`.
OTHER_KERNEL_EVR ?= 9.8.7-6.alt
.PHONY: test-other-kernel
test-other-kernel: setup
	MKOSI_INITRD_FIXTURE_KERNEL_EVR=$(OTHER_KERNEL_EVR) $(PY) -m pytest -m "not boot and not realcontent" $(PYTEST_ARGS)

.PHONY: test-real
test-real: setup
	$(PY) -m pytest -m realcontent $(PYTEST_ARGS)

unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: setup
	$(PY) -m tests.bench.bench
	$(PY) -m tests.bench.library_bench

clean:
	rm -rf out build .pytest_cache

# The SRPM and RPMs of mkosi-initrd-initrd, built locally from the fixture repository with the
# fixture variants; everything under $(RPM_OUT) (see tools/make-rpm.sh).
RPM_OUT ?= out/rpm
.PHONY: rpm
rpm: setup rpm-builder
	@bash tools/make-rpm.sh $(RPM_OUT)

# The SRPM and RPMs of the builder itself (spec/mkosi-initrd-builder.spec): python3-mkosi-initrd-builder
# and koji-builder-plugin-mkosi-initrd, under $(RPM_BUILDER_OUT) (see tools/make-builder-rpm.sh).
RPM_BUILDER_OUT ?= out/rpm-builder
.PHONY: rpm-builder
rpm-builder: setup
	@bash tools/make-builder-rpm.sh $(RPM_BUILDER_OUT)
