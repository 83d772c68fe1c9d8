"""measure.compile_cache: a library's process-wide inductor settings undone after its load, applied again only
around its own compile (torchao's quantization turns on coordinate-descent tuning for the whole process)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture
def inductor_config():
    import torch._inductor.config as config

    saved = config.get_config_copy()
    yield config
    for name, value in saved.items():
        setattr(config, name, value)


def test_a_loads_settings_are_undone_and_returned(inductor_config) -> None:
    from pytest_quant.measure.compile_cache import changes_undone, inductor_settings

    before = inductor_settings()
    tuning, names = before["coordinate_descent_tuning"], before["triton.unique_kernel_names"]
    inductor_config.coordinate_descent_tuning = not tuning  # as torchao's recommended_inductor_config_setter does
    setattr(inductor_config, "triton.unique_kernel_names", not names)  # a nested setting too
    assert changes_undone(before) == {"coordinate_descent_tuning": not tuning, "triton.unique_kernel_names": not names}
    assert inductor_config.coordinate_descent_tuning is tuning
    assert inductor_config.triton.unique_kernel_names is names
    assert changes_undone(before) == {}  # nothing changed since


def test_applied_sets_them_for_the_block_only(inductor_config) -> None:
    from pytest_quant.measure.compile_cache import applied

    tuning = inductor_config.coordinate_descent_tuning
    with applied({"coordinate_descent_tuning": not tuning}):
        assert inductor_config.coordinate_descent_tuning is (not tuning)
    assert inductor_config.coordinate_descent_tuning is tuning
    with applied({}):  # a recipe whose library set nothing
        assert inductor_config.coordinate_descent_tuning is tuning


def test_measure_throughput_compiles_under_the_recipes_own_settings(inductor_config, monkeypatch) -> None:
    from pytest_quant.measure import throughput

    seen = []

    class Stop(Exception):
        pass

    def open_decoder(*args, **kwargs):
        seen.append(inductor_config.coordinate_descent_tuning)
        raise Stop

    monkeypatch.setattr(throughput, "open_decoder", open_decoder)
    tuning = inductor_config.coordinate_descent_tuning
    with pytest.raises(Stop):
        throughput.measure_throughput(torch.nn.Linear(2, 2), [1, 2], decode_tokens=2, repeats=1, warmup_runs=0,
                                      mode="compiled", compile_settings={"coordinate_descent_tuning": not tuning})
    assert seen == [not tuning] and inductor_config.coordinate_descent_tuning is tuning


@pytest.mark.parametrize("release, tuning, static, off", [
    ((2, 11), True, True, True),  # the H200's torch: its warm recheck would tune every one-config kernel again
    ((2, 11), False, True, False),  # no coordinate-descent tuning: nothing cached to lose
    ((2, 11), True, False, False),  # the static launcher already off
    ((2, 12), True, True, False),  # fixed in 2.12
    ((2, 14), True, True, False),
])
def test_the_static_launcher_is_off_while_a_tuned_compile_runs_on_a_torch_that_forgets_its_tuning(
        inductor_config, monkeypatch, release, tuning, static, off) -> None:
    from pytest_quant.measure import compile_cache

    monkeypatch.setattr(compile_cache, "torch_release", lambda: release)
    inductor_config.use_static_cuda_launcher = static
    inductor_config.coordinate_descent_tuning = False
    settings = {"coordinate_descent_tuning": True} if tuning else {}
    assert ("use_static_cuda_launcher" in compile_cache.with_warm_cache_fix(settings)) is off
    with compile_cache.applied(settings):
        assert inductor_config.use_static_cuda_launcher is (static and not off)
        assert inductor_config.coordinate_descent_tuning is tuning
    assert inductor_config.use_static_cuda_launcher is static and inductor_config.coordinate_descent_tuning is False
    inductor_config.coordinate_descent_tuning = tuning  # on process-wide (a library's load not undone: benchmarks)
    with compile_cache.applied({}):
        assert inductor_config.use_static_cuda_launcher is (static and not off)


@pytest.mark.parametrize("version, release", [("2.11.0+cu130", (2, 11)), ("2.12.0a0+git1234", (2, 12)),
                                              ("2.14.1", (2, 14)), ("3.0.0.dev20270101", (3, 0))])
def test_torch_release_is_the_major_and_minor_of_torchs_version(monkeypatch, version, release) -> None:
    from pytest_quant.measure.compile_cache import torch_release

    monkeypatch.setattr(torch, "__version__", version)
    assert torch_release() == release
