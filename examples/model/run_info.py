"""Where a result came from, for the scripts' JSON: the commit of the checkout they run in."""
import pathlib
import subprocess


def commit():
    """The HEAD commit of the repository holding these scripts, or None outside git."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=pathlib.Path(__file__).parent, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
