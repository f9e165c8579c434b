"""A process for the launcher's own tests (``forked``): ``python -m emeterai_testkit.sample_process
exit:<code>|wait`` prints its argument, working directory, ``EMETERAI_SAMPLE`` and failpoints, then
exits with that code, or waits until a signal ends it."""

from __future__ import annotations

import os
import sys
import time

from emeterai_shared import failpoints

if __name__ == "__main__":
    what = sys.argv[1]
    print(f"argument={what} cwd={os.getcwd()} sample={os.environ.get('EMETERAI_SAMPLE')} "
          f"failpoints={failpoints.spec()}", flush=True)
    if what == "wait":
        while True:
            time.sleep(60)
    sys.exit(int(what.removeprefix("exit:")))
