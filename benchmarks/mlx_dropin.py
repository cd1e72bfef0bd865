"""MLX's mx.distributed on ringcomm (the drop-in) beside ringcomm's direct call and MLX's own ring.

    python benchmarks/mlx_dropin.py [-n 2,4] [--sizes 4,4096,...] [--skip-lm]
                                    [--mlx-lm PATH] [--tokens 64]
    sudo python benchmarks/mlx_dropin.py --hosts 2 [--rate 10gbit] [--skip-lm] [...]

In one run, on ranks of this machine (each started by `ringcomm launch`, which also sets
MLX_RANK/MLX_HOSTFILE for MLX's ring):

1. all_sum of float32 MLX arrays, 4 B .. 64 MiB, timed as every peer is (_common.run):
   `dropin` (mx.distributed.all_sum after ringcomm.mlx.install()), `direct`
   (ringcomm.all_sum on the MLX array), `numpy` (ringcomm.all_sum on a NumPy array: the
   floor) and `mlx` (MLX's ring backend, mx.distributed.init(backend="ring")).
2. The decode step (100 all_sums of 16 KiB and one of 4 B, _common.decode): steps/s.
3. mlx-lm's llama, `Model.shard()` over the ranks, randomly initialised (8 layers, hidden
   512), greedy decoding with a KV cache and mlx-lm's own pipelining (the next token's graph is
   built while the last one is evaluated, as generate_step does): tokens/s on each backend.
   mlx-lm's package __init__ pulls transformers; only its model code is needed, so `--mlx-lm`
   may name a directory where `pip install --no-deps --target DIR mlx-lm` put it.

`--hosts 2` prints the same tables at p=2 with one rank on each of two test hosts: network
namespaces with their own hostname and sshd whose egress is shaped by tc to `--rate`
(benchmarks/testhosts.py, as benchmarks/multihost.py builds them). Every mode is started by
`ringcomm launch --hosts` over the hosts' ssh, so MLX's ring reads the MLX_HOSTFILE the launcher
writes (the hosts' addresses) and ringcomm crosses the link over TCP. Needs root; the hosts,
their processes and any shared-memory segment are removed on exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(HERE))

MODES = ("dropin", "direct", "numpy", "mlx")
_LM = re.compile(r"^lm (\w+) p=(\d+) tokens_per_s=([\d.]+)")


# --- rank side -------------------------------------------------------------------------------

def _rank_setup(mode: str):  # type: ignore[no-untyped-def]
    import mlx.core as mx

    if mode == "mlx":
        world = mx.distributed.init(strict=True, backend="ring")
        return mx, world, mx.distributed.all_sum
    import ringcomm

    if mode == "dropin":
        import ringcomm.mlx

        ringcomm.mlx.install()
        world = mx.distributed.init(strict=True)
        return mx, world, mx.distributed.all_sum
    world = ringcomm.init(strict=True)
    return mx, world, ringcomm.all_sum


def rank_allsum(mode: str, what: str, sizes: list[str]) -> None:
    import _common
    import numpy as np

    mx, world, all_sum = _rank_setup(mode)

    def make(count: int):  # type: ignore[no-untyped-def]
        out: list = []
        if mode == "numpy":
            a = np.ones(count, np.float32)

            def call_np() -> None:
                out[:] = [all_sum(a)]
            return call_np, lambda: float(out[0][0]), None
        x = mx.ones((count,), dtype=mx.float32)
        mx.eval(x)

        def call() -> None:
            y = all_sum(x)
            mx.eval(y)
            out[:] = [y]
        return call, lambda: out[0][0].item(), None

    def barrier() -> None:
        mx.eval(all_sum(mx.zeros((1,)))) if mode != "numpy" else all_sum(np.zeros(1))

    if what == "decode":
        _common.decode(mode, world.rank(), world.size(), make, sizes)
    else:
        _common.run(mode, world.rank(), world.size(), make, barrier, sizes)


def rank_lm(mode: str, tokens: int) -> None:
    import types

    mx, world, _ = _rank_setup(mode)
    if "mlx_lm" not in sys.modules:  # the model code alone: mlx_lm/__init__ imports transformers
        import importlib.util

        spec = importlib.util.find_spec("mlx_lm")
        assert spec is not None and spec.submodule_search_locations, "mlx_lm is not importable"
        pkg = types.ModuleType("mlx_lm")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["mlx_lm"] = pkg
    from mlx_lm.models import cache, llama

    mx.random.seed(0)
    args = llama.ModelArgs(model_type="llama", hidden_size=512, num_hidden_layers=8,
                           intermediate_size=1408, num_attention_heads=8, rms_norm_eps=1e-5,
                           vocab_size=8192, num_key_value_heads=8)
    model = llama.Model(args)
    mx.eval(model.parameters())
    model.shard(world)
    mx.eval(model.parameters())
    prompt = mx.arange(16) % args.vocab_size

    def generate(n: int) -> tuple[list[int], float]:
        # mlx-lm's generate_step: build token t+1's graph, async_eval it, then read token t
        kv = cache.make_prompt_cache(model)
        y = mx.argmax(model(prompt[None], cache=kv)[:, -1, :], axis=-1)
        mx.async_eval(y)
        out, t0 = [], time.perf_counter()
        for _ in range(n):
            nxt = mx.argmax(model(y[:, None], cache=kv)[:, -1, :], axis=-1)
            mx.async_eval(nxt)
            out.append(y.item())
            y = nxt
        return out, time.perf_counter() - t0

    generate(8)
    rates, first = [], None
    for _ in range(3):
        got, seconds = generate(tokens)
        first = first or got
        assert got == first, "greedy decoding is deterministic"
        rates.append(tokens / seconds)
    if world.rank() == 0:
        print(f"lm {mode} p={world.size()} tokens_per_s={statistics.median(rates):.1f} "
              f"tokens={first[:6]}", flush=True)


# --- driver ----------------------------------------------------------------------------------

def _launch(n: int, argv: list[str], env: dict[str, str], timeout: float) -> str:
    cmd = [sys.executable, "-m", "ringcomm", "launch", "-n", str(n), sys.executable, __file__,
           *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        print(f"# {' '.join(argv)} p={n} failed: {done.stderr.strip()[-600:]}", flush=True)
    return done.stdout


def _report(n: int, where: str, launch: Callable[[list[str]], str], sizes: list[str],
            args: argparse.Namespace) -> None:
    """Run every mode through `launch` (rank-side argv -> stdout) and print the tables."""
    import run as peers

    rows: dict[str, dict[int, float]] = {}
    for mode in MODES:
        text = launch(["--rank", "allsum", mode, *sizes])
        rows[mode] = {r.size_B: r.time_us for r in peers.parse(text)}
    print(f"\n### all_sum, p={n}{where} (rank 0's median µs; ratios from this run)\n")
    print("| size_B | drop-in | ringcomm direct (MLX array) | ringcomm (NumPy) | MLX ring "
          "| drop-in / direct | MLX ring / drop-in |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in sorted(rows["dropin"]):
        d, c, np_, m = (rows[k].get(size) for k in MODES)
        cell = lambda v: f"{v:.1f}" if v else "n/a"  # noqa: E731
        ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "n/a"  # noqa: E731
        print(f"| {size} | {cell(d)} | {cell(c)} | {cell(np_)} | {cell(m)} | {ratio(d, c)} "
              f"| {ratio(m, d)} |")
    decode: dict[str, float] = {}
    for mode in ("dropin", "direct", "mlx"):
        text = launch(["--rank", "decode", mode, args.decode_size])
        got = peers.parse(text)
        if got:
            decode[mode] = 1e6 / (got[0].time_us * 101)
    print(f"\n### decode step (100 all_sums of {args.decode_size} B + one of 4 B), p={n}{where}\n")
    print("| | steps/s |\n|---|---:|")
    for mode, rate in decode.items():
        print(f"| {mode} | {rate:.0f} |")
    if "dropin" in decode and "mlx" in decode:
        print(f"\ndrop-in / MLX ring: {decode['dropin'] / decode['mlx']:.2f}x steps/s")
    if args.skip_lm:
        return
    lm: dict[str, float] = {}
    for mode in ("dropin", "mlx"):
        text = launch(["--rank", "lm", mode, "--tokens", str(args.tokens)])
        for line in text.splitlines():
            m = _LM.match(line)
            if m:
                lm[m[1]] = float(m[3])
                print(f"# {line}")
    if lm:
        print(f"\n### mlx-lm llama (8 layers, hidden 512) Model.shard decode, p={n}{where}\n")
        print("| | tokens/s |\n|---|---:|")
        for mode, rate in lm.items():
            print(f"| {mode} | {rate:.1f} |")


def _hosts(rate: str, sizes: list[str], args: argparse.Namespace) -> int:
    """Every table at p=2 with one rank on each of two test hosts shaped to `rate`."""
    import testhosts

    envs = {"PYTHONPATH": os.pathsep.join(x for x in (args.mlx_lm, str(HERE.parent)) if x)}
    try:
        with testhosts.shaped("mlx_dropin", rate) as cluster:
            def launch(argv: list[str]) -> str:
                code, out, err = testhosts.launch(cluster, [sys.executable, __file__, *argv],
                                                  timeout=900, envs=envs)
                if code != 0 or "processes left on the hosts" in err:
                    print(f"# {' '.join(argv)} on 2 hosts failed (exit {code}): "
                          f"{err.strip()[-600:]}", flush=True)
                return out

            print(f"# 2 test hosts ({', '.join(cluster.ips[:2])}), one rank each, each host's "
                  f"egress shaped to {rate} (tc tbf); every mode started by ringcomm launch "
                  "--hosts over ssh (MLX's ring reads the MLX_HOSTFILE it writes: the hosts' "
                  "addresses)", flush=True)
            _report(2, f", 2 hosts at {rate}", launch, sizes, args)
    except testhosts.HostsUnavailable as e:
        print(e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlx_dropin: interrupted; the test hosts were removed", file=sys.stderr)
        return 130
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", default="2,4", help="rank counts, comma-separated")
    ap.add_argument("--sizes", default="4,4096,65536,1048576,16777216,67108864")
    ap.add_argument("--decode-size", default="16384")
    ap.add_argument("--skip-lm", action="store_true")
    ap.add_argument("--mlx-lm", default=None, help="a directory to put on PYTHONPATH for mlx_lm")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--hosts", type=int, choices=(2,),
                    help="run p=2 with one rank on each of 2 test hosts instead (root)")
    ap.add_argument("--rate", default="10gbit",
                    help="tc rate of each test host's link (with --hosts; default 10gbit)")
    ap.add_argument("--rank", nargs=2, metavar=("WHAT", "MODE"), help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.rank:
        what, mode = args.rank
        if what == "lm":
            rank_lm(mode, args.tokens)
        else:
            rank_allsum(mode, what, rest)
        return 0

    sizes = args.sizes.split(",")
    if args.hosts:
        if os.geteuid() != 0:
            ap.error("--hosts builds network namespaces: run it as root")
        try:
            import multihost

            multihost.rate_bits(args.rate)
        except argparse.ArgumentTypeError as e:
            ap.error(str(e))
        return _hosts(args.rate, sizes, args)
    env = dict(os.environ)
    if args.mlx_lm:
        env["PYTHONPATH"] = os.pathsep.join([args.mlx_lm, env.get("PYTHONPATH", "")])
    for n in [int(v) for v in args.n.split(",")]:
        _report(n, "", functools.partial(_launch, n, env=env, timeout=900), sizes, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
