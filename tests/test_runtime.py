import pytest

from reform_engine.runtime import PLACEMENT, Runtime


@pytest.mark.parametrize("kwargs,needle", [({"dtype": "float8"}, "dtype='float8' is not supported; use one of"),
                                           ({"device": "tpu-ish"}, "not a torch device; use 'auto', 'cpu'"),
                                           ({"threads": -1}, "threads=-1: use 0 for torch's default or a count >= 1"),
                                           ({"trunk_cache_gb": 0}, "trunk_cache='off' turns the cache off")])
def test_a_bad_runtime_is_refused_when_it_is_made(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Runtime(**kwargs)


def test_the_runtime_gives_every_model_loader_its_device_dtype_and_leave():
    runtime = Runtime(device="cpu", dtype="bfloat16", threads=2, seed=5, trust_remote_code=True)
    assert runtime.load_args() == {"device": "cpu", "dtype": "bfloat16", "trust_remote_code": True}
    assert runtime.trunk_args() == {"setting": "auto", "cap_gb": 4.0}
    # where and how a job runs, not what it computes (the seed changes results: it is no placement)
    assert PLACEMENT == ("device", "dtype", "threads", "trust_remote_code", "trunk_cache", "trunk_cache_gb")
