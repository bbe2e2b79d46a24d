# The two commands of the quick start:  make run   and   make test   (Debian 12, as root)

VENV    := .venv
PY      := $(VENV)/bin/python
PORT    ?= 8000
# The suite runs on MariaDB (local socket, root by unix_socket auth).
TEST_DATABASE_URL ?= mysql://root@localhost/panel
BUILD_PACKAGES := python3-venv python3-dev gcc pkg-config libvirt-dev default-libmysqlclient-dev gettext \
                  $(if $(shell command -v npm 2>/dev/null),,npm)

.PHONY: run test venv prepare unit e2e benchmarks clean FORCE

$(VENV)/.installed: requirements.txt requirements-test.txt
	@missing=$$(for p in $(BUILD_PACKAGES); do dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null | grep -q '^installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing $$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed

# noVNC from npm (package-lock.json); again when the lock is newer or noVNC is missing.
node_modules/.installed: package-lock.json $(if $(wildcard node_modules/@novnc/novnc/core/rfb.js),,FORCE) | $(VENV)/.installed
	npm ci --no-audit --no-fund --silent
	touch $@

FORCE:

# Migrations, translations and static files: what both run and test need.
prepare: venv node_modules/.installed
	$(PY) manage.py compilemessages --ignore=.venv --ignore=.cache -v 0
	$(PY) manage.py collectstatic --noinput -v 0

run: prepare
	@if command -v libvirtd >/dev/null; then tests/infra/start_services.sh --libvirt-only || true; \
	  tests/infra/build_tiny_guest.sh || echo "the demo guest could not be built; servers need an OS image"; fi
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py create_admin
	PORT=$(PORT) $(PY) manage.py runpanel

test: venv
	tests/infra/install_deps.sh
	tests/infra/start_services.sh
	tests/infra/build_tiny_guest.sh
	$(MAKE) --no-print-directory prepare
	# Unit tests in parallel; then the end-to-end tests in one process: one live panel, one
	# test cluster, and QEMU guests that want the CPUs for themselves.
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest -n 2 -q -m "not e2e and not browser" tests
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest -p no:xdist -q -m "e2e or browser" tests

unit: prepare
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest -n 2 -q -m "not e2e and not browser" tests

benchmarks: venv
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) benchmarks/power_action.py
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) benchmarks/server_list.py
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) benchmarks/placement.py
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) benchmarks/provision.py
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) benchmarks/backup.py

clean:
	rm -rf $(VENV) data .cache
