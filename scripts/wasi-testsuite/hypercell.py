# wasi-testsuite runtime adapter for Hypercell, modelled on the suite's adapters/wasmtime.py.
# The suite's driver loads this file as a module: importing it must have no side effects.
import os
import shlex
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Tuple

# $HYPERCELL may carry extra options ("hypercell --flag"), as $WASMTIME does for wasmtime;
# by default, the release build of the checkout this script lives in.
_DEFAULT = Path(__file__).resolve().parents[2] / "target" / "release" / "hypercell"
HYPERCELL = shlex.split(os.getenv("HYPERCELL", shlex.quote(str(_DEFAULT))))


def get_name() -> str:
    return "hypercell"


def get_version() -> str:
    # `hypercell --version` prints "hypercell X.Y.Z".
    result = subprocess.run(HYPERCELL[0:1] + ["--version"], encoding="UTF-8",
                            capture_output=True, check=True)
    return result.stdout.split()[1]


def get_wasi_versions() -> List[str]:
    # Cells run WASI preview1 commands only; the driver skips the other suites.
    return ["wasm32-wasip1"]


def get_wasi_worlds() -> List[str]:
    return ["wasi:cli/command"]


def compute_argv(test_path: str,
                 args_env_root: Tuple[List[str], Dict[str, str], Optional[str]],
                 proposals: List[str],
                 wasi_world: str,
                 wasi_version: str) -> List[str]:
    args, env, root = args_env_root
    argv = HYPERCELL[0:1] + ["run"] + HYPERCELL[1:]
    for name, value in env.items():
        argv += ["--env", f"{name}={value}"]
    if root:
        # A test's root directory is the program's "/", as under wasmtime.
        argv += ["--dir", f"{root}::/"]
    return argv + [test_path] + args
