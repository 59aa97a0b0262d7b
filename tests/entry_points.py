"""Running an entry point (``python -m vmae2.train`` / ``vmae2.finetune``) in a subprocess, shared by its tests."""
import os
import signal
import subprocess
import sys


def stop_with_sigterm(module: str, args: list[str], after: str = "step 2/") -> str:
    """Run ``python -m module *args``, send it SIGTERM once it prints a line starting with ``after``, check that it
    exits cleanly (status 0, "stopped by signal") and return what it printed after that line."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if line.startswith(after):
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 0 and "stopped by signal" in rest, rest
    return rest
