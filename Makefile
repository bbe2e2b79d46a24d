# The two commands of the quick start:  make run   and   make test   (Debian 12, as root)

VENV    := .venv
PY      := $(VENV)/bin/python
PORT    ?= 8000
# The suite runs on MariaDB (local socket, root by unix_socket auth).
TEST_DATABASE_URL ?= mysql://root@localhost/panel
BUILD_PACKAGES := python3-venv python3-dev gcc pkg-config libvirt-dev default-libmysqlclient-dev gettext \
                  $(if $(shell command -v npm 2>/dev/null),,npm)

.PHONY: run test venv test-venv prepare unit e2e benchmarks clean FORCE

# The panel's own dependencies (production): what `make run` installs.
$(VENV)/.installed: requirements.txt
	@missing=$$(for p in $(BUILD_PACKAGES); do dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null | grep -q '^installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing" $$missing "(to build the panel's Python packages)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# The test suite's on top of them: what `make test` adds.
$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed
test-venv: $(VENV)/.installed-test

# noVNC and uPlot from npm (package-lock.json); again when the lock is newer or either is missing.
node_modules/.installed: package-lock.json $(if $(and $(wildcard node_modules/@novnc/novnc/core/rfb.js),$(wildcard node_modules/uplot/dist/uPlot.iife.min.js)),,FORCE) | $(VENV)/.installed
	npm ci --no-audit --no-fund --silent
	touch $@

FORCE:

# Migrations, translations and static files: what both run and test need.
prepare: venv node_modules/.installed
	$(PY) manage.py compilemessages --ignore=.venv --ignore=.cache -v 0
	$(PY) manage.py collectstatic --noinput -v 0

# The local host becomes a node (QEMU and libvirt installed and started, the demo OS built)
# unless PANEL_ONLY=1; a host that cannot run guests says so and the panel runs without it.
run: prepare
	@if [ -n "$(PANEL_ONLY)" ]; then echo "a panel only (PANEL_ONLY=1): no local node"; \
	elif deploy/local_node.sh install && deploy/local_node.sh start; then \
	  deploy/build_demo_os.sh || echo "the demo OS could not be built; servers need an OS image (templates_os/catalog/README.md)"; \
	else echo "going on as a panel only"; fi
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py create_admin
	$(if $(PANEL_ONLY),LOCAL_LIBVIRT_URI=) PORT=$(PORT) $(PY) manage.py runpanel

test: test-venv
	tests/infra/install_deps.sh
	tests/infra/start_services.sh
	deploy/build_demo_os.sh
	$(MAKE) --no-print-directory prepare
	# Unit tests in parallel; then the end-to-end tests in one process: one live panel, one
	# test cluster, and QEMU guests that want the CPUs for themselves.
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest -n 2 -q -m "not e2e and not browser" tests
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest -p no:xdist -q -m "e2e or browser" tests

unit: test-venv prepare
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest -n 2 -q -m "not e2e and not browser" tests

benchmarks: test-venv
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) benchmarks/power_action.py
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) benchmarks/server_list.py
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) benchmarks/placement.py
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) benchmarks/provision.py
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) benchmarks/backup.py

clean:
	rm -rf $(VENV) data .cache

# Production, after `git pull`: the panel's own backup first (it stops there if that fails),
# then dependencies, translations, static files, migrations and the units' restart.
.PHONY: upgrade
upgrade:
	deploy/upgrade.sh
