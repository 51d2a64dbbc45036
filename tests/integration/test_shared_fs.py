"""The shared-filesystem check at start, against a worker that really cannot see the run
directory: the driver runs in its own mount namespace (bubblewrap) with a private tmpfs over the
run directory's parent, as if on another node's disk, and joins the test session's Ray cluster,
whose workers live outside that namespace."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import ray
    sys.path.insert(0, sys.argv[1])
    from rlcore.topology import SharedFilesystemError, check_shared_filesystem

    ray.init(address=sys.argv[2], log_to_driver=False)

    @ray.remote(num_cpus=0)
    class Worker:
        pass

    run_dir = Path(sys.argv[3])
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        check_shared_filesystem({"learner rank": [Worker.remote()]}, run_dir, sys.argv[4])
        print("VISIBLE")
    except SharedFilesystemError as e:
        print("UNSEEN", e)
""")


def _private_namespace_prefix(private: Path) -> list[str]:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed: no way to give the driver a disk the workers lack")
    probe = subprocess.run(["bwrap", "--dev-bind", "/", "/", "--tmpfs", str(private), "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"the kernel refuses a mount namespace for bwrap: {probe.stderr.strip()}")
    return ["bwrap", "--dev-bind", "/", "/", "--tmpfs", str(private)]


def test_worker_that_cannot_see_the_run_directory_is_a_clear_error(ray_cluster, tiny_model, tmp_path):
    import ray

    gcs = ray.get_runtime_context().gcs_address
    private = tmp_path / "node_local_disk"
    private.mkdir()
    driver = [sys.executable, "-c", DRIVER, str(ROOT), gcs]

    shared = subprocess.run([*driver, str(tmp_path / "shared" / "run"), tiny_model],
                            capture_output=True, text=True, timeout=300)
    assert shared.stdout.strip() == "VISIBLE", shared.stderr[-2000:]

    unseen = subprocess.run([*_private_namespace_prefix(private), *driver, str(private / "run"), tiny_model],
                            capture_output=True, text=True, timeout=300)
    out = unseen.stdout
    assert out.startswith("UNSEEN"), unseen.stderr[-2000:]
    assert "learner rank 0" in out and f"{private}/run/.shared_fs_probe_" in out
    assert "read the model.path" not in out  # the model lies outside the private disk: that one is seen
    assert "filesystem that every node mounts" in out
