"""Running the CLI the way a user does: a separate process, stdout and stderr captured."""

import subprocess
import sys


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptforge", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def assert_user_error(result: subprocess.CompletedProcess, fragment: str, code: int = 2) -> None:
    """One clear line on stderr, the user-error exit code, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0], lines[0]
