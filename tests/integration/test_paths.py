"""The project runs from an interpreter that lives under a path with a space in it.

A fresh clone in "/tmp/fresh clone/rl" ran `.ci/run` and hung: Ray started no worker
("bash: line 1: /tmp/fresh: No such file or directory"), because it execs workers through bash
with the interpreter's path unquoted. This test makes such an interpreter (a venv under a
directory with a space, seeing this environment's packages and the repository), starts a local
cluster through `rlcore.topology.connect` and runs a task on it.
"""
import site
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _venv_under_a_space(tmp_path: Path) -> Path:
    home = tmp_path / "with space" / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(home)
    python = home / "bin" / "python"
    target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    (Path(target) / "outer.pth").write_text("\n".join([*site.getsitepackages(), str(ROOT)]) + "\n")
    return python


def test_local_cluster_starts_workers_from_an_interpreter_under_a_space(tmp_path):
    python = _venv_under_a_space(tmp_path)
    script = textwrap.dedent(
        """
        import sys
        import ray
        from rlcore import topology
        from rlcore.config import load_config

        topology.connect(load_config(None, ["model.path=unused", "ray.num_cpus=1"]))
        try:
            print("worker:", ray.get(ray.remote(lambda: sys.executable).remote(), timeout=60))
        finally:
            ray.shutdown()
        """
    )
    done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=180,
                          cwd=str(tmp_path / "with space"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"worker: {python.parent}" in done.stdout
