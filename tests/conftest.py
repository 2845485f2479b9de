"""Shared fixtures: real MariaDB servers (more fixtures join as components are built)."""

pytest_plugins = [
    "tests.fixtures.reports",
    "tests.fixtures.session_exit",
    "tests.fixtures.mariadb",
    "tests.fixtures.sandbox",
    "tests.fixtures.control_plane",
    "tests.fixtures.kube",
    "tests.fixtures.whm_nodes",
    "tests.fixtures.node_certs",
    "tests.fixtures.operator_process",
    "tests.fixtures.proxy_process",
    "tests.fixtures.tls_nodes",
    "tests.fixtures.shim_process",
    "tests.fixtures.netns",
    "tests.fixtures.slow_links",
    "tests.fixtures.object_store",
    "tests.fixtures.local_cluster",
    "tests.fixtures.e2e",
]
