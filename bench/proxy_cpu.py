"""CPU per request of the proxy's workers and of nginx's, over plain HTTP and HTTPS, in the same run.

    PYTHONPATH=. .venv/bin/python -m bench.proxy_cpu [--seconds S] [--rounds N]

The rig of ``bench.proxy_tls_vs_nginx`` (same backends, certificate and worker count). For each load (plain
keep-alive, HTTPS keep-alive, HTTPS with ``Connection: close`` on every request, so a full handshake per request),
wrk runs for a fixed time against each, in turn, and the user+system CPU its workers used over the run (from
/proc/PID/stat) is divided by the requests wrk completed. Far less sensitive to other load on a shared box than
req/s: a neighbour slows both sides down, but hardly changes what one request costs. The median of the rounds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from bench.proxy_tls_vs_nginx import TlsRig
from bench.proxy_vs_nginx import ensure_tools, lua, parse, running_rig, wrk_command

TICK = os.sysconf("SC_CLK_TCK")
LOADS = ("plain", "keepalive", "close")


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU the processes ``pids`` have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / TICK


def cost(url: str, pids: list[int], seconds: float, workdir: Path, *, close: bool) -> tuple[float, float]:
    """Microseconds of the processes' CPU per request over one wrk run, and the run's req/s."""
    command = wrk_command(url, seconds, 64, lua(workdir, close=close))
    before = cpu_seconds(pids)
    load = parse(subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout)
    used = cpu_seconds(pids) - before
    return used * 1e6 / max(load.requests, 1), load.rps


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--loads", default="plain,keepalive,close", help="which loads, comma-separated: plain, keepalive, close"
    )
    args = parser.parse_args()
    ensure_tools()
    with running_rig(TlsRig) as rig:
        assert isinstance(rig, TlsRig) and rig.proxy is not None and rig.proxy.process is not None
        assert rig.nginx.process is not None
        proxy_pids, nginx_pids = children(rig.proxy.process.pid), children(rig.nginx.process.pid)
        plain_proxy, plain_nginx = rig.plain_urls
        loads = {
            "plain keep-alive": ((plain_proxy, plain_nginx), False),
            "HTTPS keep-alive": ((rig.proxy_url, rig.nginx_url), False),
            "HTTPS new connection per request": ((rig.proxy_url, rig.nginx_url), True),
        }
        chosen = args.loads.split(",")
        loads = {name: load for key, (name, load) in zip(LOADS, loads.items(), strict=True) if key in chosen}
        print(f"proxy workers {proxy_pids}, nginx workers {nginx_pids}; load average {os.getloadavg()}")
        for name, (urls, close) in loads.items():
            runs: tuple[list[tuple[float, float]], list[tuple[float, float]]] = ([], [])
            for _ in range(args.rounds):
                for url, pids, into in zip(urls, (proxy_pids, nginx_pids), runs, strict=True):
                    into.append(cost(url, pids, args.seconds, rig.workdir, close=close))
            (proxy_us, proxy_rps), (nginx_us, nginx_rps) = (sorted(r)[len(r) // 2] for r in runs)
            print(
                f"{name}: proxy {proxy_us:.1f} µs/request ({proxy_rps:,.0f} req/s), nginx {nginx_us:.1f} µs/request "
                f"({nginx_rps:,.0f} req/s); runs proxy {[round(us, 1) for us, _ in runs[0]]}"
            )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
