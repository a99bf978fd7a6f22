"""Loopback runs of real agent processes: overload, in-process link emulation, and `splitdnn run` end to end."""

import json
import time

import numpy as np
import pytest

from agent_harness import rss_bytes, slices_dir, start_chain  # noqa: F401
from conftest import ROOT, run_cli
from splitdnn.agent.local import stop_all
from splitdnn.agent.metrics import scrape, value

pytestmark = pytest.mark.slow


# --- loopback: overload -----------------------------------------------------------------------------------------

def test_overload_drops_frames_accounts_for_all_and_memory_stays_flat(slices_dir, tmp_path):
    frames = 2400
    specs = [{"name": "device", "overheadRatio": 20}, {"name": "edge", "overheadRatio": 5}, {"name": "cloud"}]
    summary = tmp_path / "summary.json"
    source = ["--source", "synthetic", "--fps", "300", "--frames", str(frames), "--deadline", "500ms",
              "--max-inflight", "4", "--summary", str(summary)]
    agents = start_chain(slices_dir, tmp_path, specs, extra={0: source})
    try:
        rss = []
        deadline = time.monotonic() + 120
        while not summary.exists() and time.monotonic() < deadline:
            rss.append([rss_bytes(a.proc.pid) for a in agents])
            time.sleep(0.5)
        assert summary.exists(), agents[0].log_tail()
        result = json.loads(summary.read_text())
        samples = scrape(agents[0].metrics_url)
    finally:
        stop_all(agents)
    counted = {o: int(value(samples, "splitdnn_frames_total", outcome=o)) for o in ("completed", "dropped", "late", "failed")}
    assert result["offered"] == frames == sum(counted.values())
    assert {o: result[o] for o in counted} == counted
    assert result["dropped"] > frames / 2 and result["completed"] > 0 and result["failed"] == 0
    assert len(rss) >= 6
    warm, end = np.array(rss[len(rss) // 4]), np.array(rss[-1])
    assert (end - warm).max() < 40e6, f"RSS grew: {rss[len(rss) // 4]} -> {rss[-1]}"
