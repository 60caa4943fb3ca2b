"""Two hosts on one machine: two network namespaces joined by a veth pair (as root), each running `torchrun
--nnodes 2 --nproc_per_node 1 --rdzv-backend c10d` against the first one's address, on gloo, writing one run folder
on storage both see. The run equals the 2-process single-host run, and only rank 0 writes the folder."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from _cluster import (
    Watched,
    assert_same,
    environment,
    outcome,
    params,
    records,
    run,
    tiny_config,
    torchrun_command,
)

IP = shutil.which("ip") or "/usr/sbin/ip"
PORT = 29731


def ip(*args) -> subprocess.CompletedProcess:
    return subprocess.run([IP, *args], check=False, capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_hosts():
    """{name: (namespace, address, interface)} for two namespaces on 10.231.<pid>.0/24, deleted afterwards."""
    if os.geteuid() != 0 or not Path(IP).exists():
        pytest.skip("needs root and iproute2 (`ip netns`) to make two hosts on this machine")
    tag = os.getpid() % 250
    hosts = {"a": (f"ffa{os.getpid()}", f"10.231.{tag}.1", f"ffa{tag}"),
             "b": (f"ffb{os.getpid()}", f"10.231.{tag}.2", f"ffb{tag}")}
    made = []
    try:
        for namespace, _, _ in hosts.values():
            proc = ip("netns", "add", namespace)
            if proc.returncode:
                pytest.skip(f"cannot make a network namespace here: {proc.stderr.strip()}")
            made.append(namespace)
        (na, _, ia), (nb, _, ib) = hosts["a"], hosts["b"]
        steps = [("link", "add", ia, "type", "veth", "peer", "name", ib),
                 ("link", "set", ia, "netns", na), ("link", "set", ib, "netns", nb)]
        for namespace, address, interface in hosts.values():
            steps += [("-n", namespace, "addr", "add", f"{address}/24", "dev", interface),
                      ("-n", namespace, "link", "set", interface, "up"),
                      ("-n", namespace, "link", "set", "lo", "up")]
        for step in steps:
            proc = ip(*step)
            if proc.returncode:
                pytest.skip(f"cannot join the namespaces with a veth pair (`ip {' '.join(step)}`): "
                            f"{proc.stderr.strip()}")
        yield hosts
    finally:
        for namespace in made:
            ip("netns", "delete", namespace)


@pytest.mark.slow
def test_torchrun_across_two_hosts_equals_the_single_host_run(two_hosts, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(epochs=2, batch_size=8, image_size=16, checkpoint_minutes=0)))
    single = tmp_path / "single"
    proc = run(torchrun_command("train", config, "--out", single))
    assert proc.returncode == 0, proc.stderr[-4000:]

    shared = tmp_path / "shared" / "run"  # the folder both hosts see (one file system here)
    endpoint = f"{two_hosts['a'][1]}:{PORT}"
    jobs = []
    for name, (namespace, address, interface) in two_hosts.items():
        hosts_store = "true" if name == "a" else "false"  # the endpoint's host serves the rendezvous store
        launcher = ("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "ff-test",
                    "--rdzv-conf", f"join_timeout=120,is_host={hosts_store}", "--local-addr", address)
        command = [IP, "netns", "exec", namespace,
                   *torchrun_command("train", config, "--out", shared, "--auto-resume", nproc=1, launcher=launcher)]
        jobs.append(Watched(command, env=environment(GLOO_SOCKET_IFNAME=interface)))
    results = [job.finish(timeout=400) for job in jobs]
    for code, err in results:
        assert code == 0, err[-4000:]
    both = "".join(err for _, err in results)
    assert both.count("feed-fast train: new run in") == 1  # rank 0, on one of the hosts
    assert "  processes  2 processes (torchrun, gloo)" in both

    assert_same(params(single / "last.pt"), params(shared / "last.pt"))
    assert [outcome(r) for r in records(shared)] == [outcome(r) for r in records(single)]
    assert len(os.listdir(shared / "tensorboard")) == 1  # written once
