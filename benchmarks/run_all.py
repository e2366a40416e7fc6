"""Runs every benchmark (`make bench`); each rewrites its section of BENCHMARKS.md.

    python benchmarks/run_all.py [NAME ...]     # e.g. `losses eval`

Takes about two hours on a 2-core CPU; run on a quiet machine.
"""

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = ["losses", "heads", "eval", "export", "decoders", "train", "resume", "hierarchy", "scale", "distributed",
              "glosses"]


def main(argv=None):
    names = (argv if argv is not None else sys.argv[1:]) or BENCHMARKS
    failed = []
    for name in names:
        script = os.path.join(HERE, f"bench_{name}.py")
        if not os.path.exists(script):
            print(f"no benchmark {name!r} ({script})", file=sys.stderr)
            failed.append(name)
            continue
        start = time.time()
        print(f"== bench_{name}", flush=True)
        code = subprocess.call([sys.executable, script], cwd=os.path.dirname(HERE))
        print(f"== bench_{name}: exit {code}, {time.time() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
