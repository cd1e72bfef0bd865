"""Record this rank's pid, then misbehave on rank 1 as argv[1] says; others hang."""

import os
import signal
import subprocess
import sys
import time

mode, outdir = sys.argv[1], sys.argv[2]
rank = int(os.environ["RINGCOMM_RANK"])
pids = [os.getpid()]
if "child" in sys.argv[3:]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pids.append(child.pid)
with open(os.path.join(outdir, f"pid{rank}.tmp"), "w") as f:
    f.write(" ".join(map(str, pids)))
os.replace(os.path.join(outdir, f"pid{rank}.tmp"), os.path.join(outdir, f"pid{rank}"))
if rank == 1 and mode != "hang":
    # Wait for every rank to have started, so the failure stops live ranks.
    while len([n for n in os.listdir(outdir) if n.startswith("pid") and "." not in n]) < int(
        os.environ.get("EXPECT_RANKS", "2")
    ):
        time.sleep(0.05)
    print(f"rank 1 about to {mode}", file=sys.stderr, flush=True)
    if mode == "exit3":
        sys.exit(3)
    if mode == "raise":
        raise RuntimeError("deliberate failure in rank 1")
    if mode == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode == "ok":
        sys.exit(0)
time.sleep(60)
