# Entry points. `make test` and `make demo` work on a fresh Debian machine: they install what is missing first.
.PHONY: setup test test-real test-faults toxiproxy seaweedfs test-backups databases test-databases control-plane images test-cluster e2e lint unit crds demo e2e-kind clean

VENV := .venv/bin
# The tiers run their test files on both cores (pytest-xdist; each worker has its own sandbox, servers and ports).
# Fault scenarios, whose detection and recovery times are figures, run alone.
PYTEST_JOBS ?= 2
XDIST := -n $(PYTEST_JOBS) --dist loadfile
# A Python that dies of SIGABRT/SIGSEGV prints every thread's stack, also during interpreter shutdown (a CI run
# once ended "Aborted" after pytest's summary, with nothing else to go on).
export PYTHONFAULTHANDLER := 1

setup:
	@bash hack/setup

lint: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

# The fast tiers: unit, MariaDB and the sandbox API (under 15 minutes on 2 cores).
test: lint
	WHM_HA_REQUIRE_MARIADB=$${WHM_HA_REQUIRE_MARIADB:-1} $(VENV)/pytest $(XDIST)

# The backup tier (tests/backups) and its object store: SeaweedFS's `weed` (S3 on loopback), built once from its Go
# module (cached); on every database flavour (the roots of `make databases`).
seaweedfs:
	bash hack/build-seaweedfs

BACKUP_TIER := WHM_HA_REQUIRE_MARIADB=$${WHM_HA_REQUIRE_MARIADB:-1} WHM_HA_REQUIRE_SEAWEEDFS=1 $(VENV)/pytest --backups --databases

test-backups: setup seaweedfs databases
	$(BACKUP_TIER) $(XDIST) tests/backups tests/unit/test_backup_storage.py tests/unit/test_backup_dump.py --ignore=tests/backups/test_backup_faults.py
	$(BACKUP_TIER) tests/backups/test_backup_faults.py

# The fault tier: hosts in network namespaces (root; WHM_HA_REQUIRE_FAULTS=1 fails instead of skipping), slow
# links through toxiproxy, built once from its Go module (cached).
toxiproxy:
	bash hack/build-toxiproxy

test-faults: setup toxiproxy
	WHM_HA_REQUIRE_MARIADB=$${WHM_HA_REQUIRE_MARIADB:-1} $(VENV)/pytest tests/faults --faults

# The database flavour matrix: the tests parametrized by flavour, on MariaDB 11.8 and MySQL 9.7 from the roots
# hack/build-databases builds (root; cached; MariaDB 10.11 runs in `make test`, but for the three flavour files,
# test_operator_flavours, test_database_flavours and test_replication_tls, whose 10.11 cases run here too), then
# the flavour fault scenarios alone. WHM_HA_REQUIRE_DATABASES=1 fails instead of skipping when a root is missing.
databases:
	bash hack/build-databases

test-databases: setup databases
	WHM_HA_REQUIRE_MARIADB=$${WHM_HA_REQUIRE_MARIADB:-1} $(VENV)/pytest $(XDIST) --databases -m databases --ignore=tests/faults
	WHM_HA_REQUIRE_MARIADB=$${WHM_HA_REQUIRE_MARIADB:-1} $(VENV)/pytest --databases --faults -m databases tests/faults

control-plane:
	bash hack/build-control-plane

# The local-cluster tier: a single-node cluster (kubelet + containerd) running the images built here (root).
# WHM_HA_REQUIRE_CLUSTER=1 fails instead of skipping when binaries or images are missing.
images: control-plane
	bash hack/build-images

test-cluster: setup images
	bash hack/cluster-packages
	$(VENV)/pytest tests/cluster --cluster -v

# The real kube-apiserver + etcd tier: the tests that take kube_api, on the real server only.
test-real: setup control-plane
	WHM_HA_REQUIRE_MARIADB=$${WHM_HA_REQUIRE_MARIADB:-1} WHM_HA_REQUIRE_REAL_API=1 $(VENV)/pytest $(XDIST) --real-api -m real_api

unit: setup
	$(VENV)/pytest $(XDIST) tests/unit

crds: setup
	$(VENV)/whm-ha crds --out crds
	rm -f charts/whm-ha/crds/*.yaml && cp crds/*.yaml charts/whm-ha/crds/
	$(VENV)/python hack/render_manifests.py

demo: setup
	$(VENV)/whm-ha demo

# The end-to-end suite (tests/e2e): helm install, then pods killed under traffic and writes. `make e2e` runs it on
# the local cluster (root; what CI runs), `make e2e-kind` on kind (needs Docker and kind, as on users' machines).
e2e: setup images
	bash hack/cluster-packages
	$(VENV)/pytest tests/e2e --e2e=local -v -s

e2e-kind: setup
	$(VENV)/pytest tests/e2e --e2e=kind -v -s

clean:
	rm -rf .venv build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
