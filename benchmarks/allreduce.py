"""all_sum bandwidth and latency of ringcomm: `ringcomm bench` under another name.

    python benchmarks/allreduce.py -n 2 [--sizes 4,1m,64m] [--dtype float32]
"""

from ringcomm.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
