"""The CPUs the process may use, the local model's default thread count, and whether
llama.cpp's extra CPU buffers are used by default."""

from pathlib import Path

import pytest

from tokenwire.providers.cpus import (
    cgroup_cpu_quota,
    cpu_flags,
    default_threads,
    extra_buffers_by_default,
    read_cpuinfo,
    usable_cpus,
)
from tokenwire.providers.local import LocalOptions, choose_extra_buffers


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


# -- llama.cpp's extra CPU buffers: on by default only where no CPU advertises AMX ------


def cpuinfo(*flag_lines: str, key: str = "flags") -> str:
    """/proc/cpuinfo's text for one processor per line of flags."""
    return "".join(
        f"processor\t: {n}\nvendor_id\t: AnyVendor\nmodel name\t: A CPU\n{key}\t\t: {flags}\n\n"
        for n, flags in enumerate(flag_lines)
    )


EPYC = "fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16"
SAPPHIRE_RAPIDS = EPYC + " amx_bf16 avx512_fp16 amx_tile amx_int8"


def test_a_cpu_without_amx_gets_the_extra_buffers() -> None:
    assert extra_buffers_by_default(cpuinfo(EPYC, EPYC)) is True


@pytest.mark.parametrize("amx", ["amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "amx_complex"])
def test_any_amx_flag_turns_them_off(amx: str) -> None:
    assert extra_buffers_by_default(cpuinfo(f"{EPYC} {amx} vaes")) is False


def test_amx_on_any_one_cpu_turns_them_off() -> None:
    assert extra_buffers_by_default(cpuinfo(EPYC, SAPPHIRE_RAPIDS, EPYC)) is False


def test_only_the_flags_lines_count() -> None:
    # "amx" elsewhere (a model name, the bugs line) is not a flag the CPU advertises.
    text = cpuinfo(EPYC).replace("A CPU", "amx_tile lookalike") + "bugs\t\t: amx_bf16\n"
    assert extra_buffers_by_default(text) is True


def test_unknown_flags_count_as_unsafe() -> None:
    assert extra_buffers_by_default(None) is False
    assert extra_buffers_by_default("") is False
    assert extra_buffers_by_default("processor\t: 0\nmodel name\t: A CPU\n") is False


def test_an_arm_cpu_s_features_line_counts_as_its_flags() -> None:
    features = ["fp", "asimd", "aes", "crc32", "atomics", "asimddp", "sve", "i8mm"]
    arm = cpuinfo(" ".join(features), key="Features")
    assert cpu_flags(arm) == frozenset(features)
    assert extra_buffers_by_default(arm) is True


def test_cpuinfo_is_read_or_none(tmp_path: Path) -> None:
    p = files(tmp_path, cpuinfo=cpuinfo(EPYC))
    assert read_cpuinfo(p["cpuinfo"]) == cpuinfo(EPYC)
    assert read_cpuinfo(tmp_path / "no") is None


def test_the_option_defaults_to_auto_and_a_setting_overrides_the_cpu() -> None:
    assert LocalOptions().extra_buffers == "auto"
    assert choose_extra_buffers("auto", cpuinfo(EPYC)) is True
    assert choose_extra_buffers("auto", cpuinfo(SAPPHIRE_RAPIDS)) is False
    assert choose_extra_buffers(True, cpuinfo(SAPPHIRE_RAPIDS)) is True
    assert choose_extra_buffers(False, cpuinfo(EPYC)) is False


def test_auto_reads_this_machine_s_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tokenwire.providers.local.read_cpuinfo", lambda: cpuinfo(EPYC))
    assert choose_extra_buffers("auto") is True
    monkeypatch.setattr("tokenwire.providers.local.read_cpuinfo", lambda: cpuinfo(SAPPHIRE_RAPIDS))
    assert choose_extra_buffers("auto") is False
    monkeypatch.setattr("tokenwire.providers.local.read_cpuinfo", lambda: None)
    assert choose_extra_buffers("auto") is False


@pytest.mark.parametrize("value", ["on", "yes", 1, None])
def test_the_option_takes_only_auto_or_a_boolean(value: object) -> None:
    with pytest.raises(ValueError, match="extra_buffers"):
        LocalOptions.model_validate({"extra_buffers": value})
