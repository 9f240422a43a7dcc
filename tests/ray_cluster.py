"""A local Ray cluster on 127.0.0.1 for the tests of the `ray:` engine and the Ray Data recipe.

`local_cluster(num_cpus)` starts a head node owned by this process (so `ray.shutdown()`
stops exactly the processes it started), bound to the loopback address, and yields its
GCS address; a `cai` subprocess reaches it through `RAY_ADDRESS`. `num_cpus` is Ray's
logical count: the replicas' `num_cpus` are drawn from it, not from the two real cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

#: set while the cluster runs, and passed on to subprocesses through the environment
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray then binds to 127.0.0.1, not the machine's address
    "RAY_AUTH_MODE": "disabled",  # a loopback-only test cluster: no token written to ~/.ray
    "RAY_USAGE_STATS_ENABLED": "0",
}


def import_ray():  # noqa: ANN201 - the module, or a skip
    """Ray, or a skip where it is not installed (a failure in CI, which installs the dev extra)."""
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ray is not installed; CI installs it with the dev extra (pip install -e '.[dev]')")
        pytest.skip("ray is not installed (pip install 'constitutional-ai[ray]')")
    return ray


@contextmanager
def local_cluster(num_cpus: int = 4) -> Iterator[str]:
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)  # before Ray is imported: it reads them then
    try:
        ray = import_ray()
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # the first variable, for a Ray imported earlier
        context = ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                           _node_ip_address="127.0.0.1")
        address = context.address_info["gcs_address"]
        assert address.startswith("127.0.0.1:"), address
        try:
            yield address
        finally:
            ray.shutdown()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
