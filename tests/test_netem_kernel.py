"""What the kernel's `sch_netem` does to a real link, measured: `splitdnn netem apply` (what the tier pod's init
container runs) on the egress of one namespace of a chain, UDP probes (tests/udp_probe.py) to the next namespace.

These need a kernel with `sch_netem`. This machine's has none, so here they skip with the reason the CI allow-list
names (tests/skip-allowlist.txt); `scripts/netem-vm.sh` boots Debian's kernel in a VM and runs them there. No
TensorFlow in this module: under software emulation its import alone costs minutes.
"""

import itertools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from splitdnn.agent import netns

NETNS_OK, NETNS_WHY = netns.available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(not NETNS_OK, reason=f"netem kernel tests: {NETNS_WHY}")]

PROBE = str(Path(__file__).with_name("udp_probe.py"))
PORT = 7777
# The one skip CI accepts (tests/skip-allowlist.txt), and only for the tests scripts/netem-vm.sh runs.
NO_NETEM = "kernel probe: sch_netem is absent on this kernel (scripts/netem-vm.sh runs this on a kernel with it)"


def splitdnn(*args, ns: str) -> subprocess.CompletedProcess:
    """`python -m splitdnn ARGS` in a network namespace (agent_harness has the same, with grpc and numpy imports
    that cost tens of seconds in the VM)."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "splitdnn", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
        check=False,
    )


def tc(*args, ns: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "tc", *args], capture_output=True, text=True, timeout=60, check=False
    ).stdout


def tc_show(dev: str, ns: str) -> str:
    return tc("qdisc", "show", "dev", dev, ns=ns)


@pytest.fixture(scope="module")
def link():
    """Two namespaces joined by a veth; a UDP echo server in the second. Tests shape the first one's egress."""
    chain = netns.Chain(2, prefix="sdnk", dev_prefix="sk").create()
    echo = None
    try:
        echo = subprocess.Popen(
            chain.exec_prefix(1) + [sys.executable, PROBE, "echo", chain.link_addr(0, 1), str(PORT)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert echo.stdout.readline().strip() == "ready"
        yield chain
    finally:
        if echo:
            echo.kill()
            echo.wait(10)
        chain.destroy()


def apply(chain, tmp_path, *args) -> tuple[dict, str]:
    """`splitdnn netem apply ARGS` on the first namespace's egress -> (its JSON report, its stdout)."""
    report = tmp_path / "netem.json"
    proc = splitdnn("netem", "apply", "--dev", chain.egress_dev(0), *args, "--report", report, ns=chain.ns(0))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(report.read_text())
    if not result["kernel"].get("netem"):
        tc("qdisc", "del", "dev", chain.egress_dev(0), "root", ns=chain.ns(0))
        pytest.skip(NO_NETEM)
    return result, proc.stdout


def probe(chain, n: int, gap_ms: float) -> tuple[int, list[float], list[int]]:
    """Send n probes from the first namespace to the echo server -> (n, sorted round trips in ms of those answered,
    their sequence numbers in the order the echoes came back)."""
    proc = subprocess.run(
        chain.exec_prefix(0) + [sys.executable, PROBE, "probe", chain.link_addr(0, 1), str(PORT), str(n), str(gap_ms)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    return out["sent"], sorted(out["rtt_ms"].values()), out["order"]


def overtaken(order: list[int]) -> int:
    """How many echoes came back right after one sent later than themselves."""
    return sum(b < a for a, b in itertools.pairwise(order))


def quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


@pytest.fixture
def shaped(link):
    yield link
    tc("qdisc", "del", "dev", link.egress_dev(0), "root", ns=link.ns(0))
    assert "netem" not in tc_show(link.egress_dev(0), link.ns(0))


def test_netem_delay_and_jitter_are_applied_by_the_kernel(shaped, tmp_path):
    chain = shaped
    _, base, base_order = probe(chain, 50, 4)
    result, stdout = apply(chain, tmp_path, "--delay", "40ms", "--jitter", "10ms")
    # the path the agent reads: tc applied everything, nothing is left to emulate in-process
    assert result["applied"] == {"delay": "40ms", "jitter": "10ms"} and result["not_applied"] == {}
    assert result["commands"][0][-4:] == ["netem", "delay", "40000us", "10000us"] and result["errors"] == []
    assert "netem" in tc_show(chain.egress_dev(0), chain.ns(0)) and "NOT applied" not in stdout
    sent, rtt, order = probe(chain, 200, 4)
    print(
        f"\nnetem delay 40ms jitter 10ms: {len(rtt)}/{sent} answered; rtt ms min {rtt[0]:.1f} p10 "
        f"{quantile(rtt, 0.1):.1f} median {statistics.median(rtt):.1f} p90 {quantile(rtt, 0.9):.1f} max {rtt[-1]:.1f};"
        f" {overtaken(order)} overtaken (unshaped: rtt median {statistics.median(base):.2f} ms, "
        f"{overtaken(base_order)}/{len(base_order)} overtaken)"
    )
    assert len(rtt) >= 0.9 * sent
    # netem holds each packet 40 ms ± 10 ms (uniform): none can come back sooner than 30 ms, however loaded the VM
    assert rtt[0] >= 30.0
    # jitter: netem releases packets in the order of their jittered times, so probes sent 4 ms apart overtake each
    # other (~30% of neighbours); a plain link keeps their order, and load only makes it slower, not reordered
    assert overtaken(order) >= 0.05 * len(order)


def test_netem_loss_is_applied_by_the_kernel(shaped, tmp_path):
    chain = shaped
    result, _ = apply(chain, tmp_path, "--loss", "20%")
    assert result["applied"] == {"loss": "20%"} and result["not_applied"] == {}
    assert "loss 20%" in " ".join(result["commands"][0])
    sent, rtt, _ = probe(chain, 500, 4)
    lost = 1 - len(rtt) / sent
    print(f"\nnetem loss 20%: {sent - len(rtt)}/{sent} probes lost = {lost:.1%}")
    # only the way out is shaped: 20% of 500 is 100 ± 9 (binomial); 0.12..0.28 is ± 4.5 standard deviations
    assert 0.12 <= lost <= 0.28


def test_the_agent_emulates_nothing_in_process_when_tc_applied_everything(shaped, tmp_path):
    """The agent's own decision (`splitdnn agent --netem-report`) on the report this kernel's tc produced. A real
    agent process is not started here: it imports TensorFlow, which takes minutes under software emulation."""
    from splitdnn.agent.netem import load_report
    from splitdnn.agent.server import emulation_plan

    chain = shaped
    flags = {"delay": "40ms", "jitter": "10ms", "loss": "1%", "rate": "50mbit"}
    apply(chain, tmp_path, *[arg for k, v in flags.items() for arg in (f"--{k}", v)])
    shown = tc_show(chain.egress_dev(0), chain.ns(0))
    assert "netem" in shown and "tbf" in shown, shown
    link, tc_applied, paths = emulation_plan(flags, load_report(str(tmp_path / "netem.json")))
    assert paths == {"tc"} and not link.active and sorted(tc_applied) == sorted(flags)
