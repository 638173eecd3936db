"""A resumable command for the launcher's time-limit test: counts to N, one step per 0.1 s, keeping its count in a
file after every step and starting from it, as a trainer resumes from its last checkpoint.

    python -m tests.resumable_counter FILE N
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

STEP_S = 0.1


def main(path: Path, until: int) -> None:
    count = int(path.read_text()) if path.is_file() else 0
    while count < until:
        time.sleep(STEP_S)
        count += 1
        partial = path.with_suffix(".partial")  # written whole, then renamed: a stop never leaves half a count
        partial.write_text(str(count))
        partial.replace(path)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
