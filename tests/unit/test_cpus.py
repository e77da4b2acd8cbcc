"""The CPUs the process may use, and the local model's default thread count."""

from pathlib import Path

import pytest

from tokenwire.providers.cpus import cgroup_cpu_quota, default_threads, usable_cpus


def files(tmp_path: Path, **contents: str) -> dict[str, Path]:
    paths = {}
    for name, text in contents.items():
        paths[name] = tmp_path / name
        paths[name].write_text(text)
    return paths


def test_a_cgroup_v2_quota_is_read_in_cpus(tmp_path: Path) -> None:
    p = files(tmp_path, v2="150000 100000\n")
    assert cgroup_cpu_quota(p["v2"], tmp_path / "no", tmp_path / "no") == 1.5


def test_no_quota_is_none(tmp_path: Path) -> None:
    p = files(tmp_path, v2="max 100000\n")
    assert cgroup_cpu_quota(p["v2"], tmp_path / "no", tmp_path / "no") is None
    assert cgroup_cpu_quota(tmp_path / "no", tmp_path / "no", tmp_path / "no") is None


def test_a_cgroup_v1_quota_is_read_when_there_is_no_v2(tmp_path: Path) -> None:
    p = files(tmp_path, quota="50000\n", period="100000\n", unlimited="-1\n")
    assert cgroup_cpu_quota(tmp_path / "no", p["quota"], p["period"]) == 0.5
    assert cgroup_cpu_quota(tmp_path / "no", p["unlimited"], p["period"]) is None


def test_usable_cpus_is_bounded_by_the_affinity_and_the_quota(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr("tokenwire.providers.cpus.cgroup_cpu_quota", lambda: None)
    assert usable_cpus() == 4
    monkeypatch.setattr("tokenwire.providers.cpus.cgroup_cpu_quota", lambda: 1.5)
    assert usable_cpus() == 2
    monkeypatch.setattr("tokenwire.providers.cpus.cgroup_cpu_quota", lambda: 0.2)
    assert usable_cpus() == 1


@pytest.mark.parametrize(
    ("cpus", "parallelism", "threads"),
    [(1, 1, 1), (2, 1, 1), (4, 1, 3), (8, 1, 7), (8, 2, 3), (2, 2, 1), (16, 4, 3)],
)
def test_the_default_leaves_a_core_for_the_gateway(
    cpus: int, parallelism: int, threads: int
) -> None:
    assert default_threads(parallelism, cpus) == threads
