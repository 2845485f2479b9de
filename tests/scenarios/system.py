"""The demo's whole system for the scenario tests: started as `whm-ha demo` starts it, stopped after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kubernetes import client

from whm_ha.db.local_server import HOST_MARIADB, Flavour, free_port
from whm_ha.demo.main import start_system
from whm_ha.demo.stack import Stack
from whm_ha.demo.view import Observer


@contextmanager
def running_system(
    workdir: Path, *, api: str = "sandbox", flavour: Flavour = HOST_MARIADB
) -> Iterator[tuple[Stack, client.ApiClient, Observer]]:
    """The stack in ``workdir`` on free ports, Healthy; once it is stopped, no process's log holds a traceback."""
    stack = Stack(workdir, proxy_port=free_port(), shim_port=free_port(), flavour=flavour)
    try:
        api_client, observer = start_system(stack, api=api, say=lambda _: None)
        yield stack, api_client, observer
    finally:
        stack.stop()
    for log in workdir.glob("*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), f"{log.name}: {log.read_text()[-3000:]}"
