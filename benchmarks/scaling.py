"""Strong and weak scaling of `pis` training and sampling over processes (`jax.distributed`).

    python benchmarks/scaling.py                       # 1, 2 and 4 processes on this host
    python benchmarks/scaling.py --processes 1 2 --quick

For `pis` (PIS-grad controller, 2 x 64) on `funnel` (d = 10) at K = 128 it launches P
processes on localhost (gloo collectives on CPU; one device each) and measures, in each
configuration,

- the training-step time of `sdekit.train` (steady state: the time between the second and
  the last chunk of 25 steps, compilation excluded), for a global batch of 256 (strong
  scaling) and of 64 per process (weak scaling);
- the sampling time of `sampler.sample` (compiled, the median of 3 calls) for 8192 particles
  in all (strong) and 2048 per process (weak);
- each process's peak resident memory;
- as a control, `alone`: P independent single processes (no `jax.distributed`), each with
  the weak-scaling work of one process, run at once: how much of the host's throughput P
  processes can have at all. Weak scaling cannot beat it.

On CPU every process runs XLA single-threaded, so P processes use P cores; with more
processes than cores they share them, and the figures say so (`cores` in the results).
It prints a table and writes `benchmarks/results/scaling.json`. On a GPU host, run it with
`--devices-per-process 1` under `CUDA_VISIBLE_DEVICES` per process, or launch the worker
under SLURM (`docs/performance.md`, "Several processes").
"""

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "scaling.json"
STRONG_BATCH, WEAK_BATCH = 256, 64
STRONG_N, WEAK_N = 8192, 2048
CHUNK = 25


def worker(args: argparse.Namespace) -> None:
    """One process of a run: join it, time training and sampling, print JSON (process 0)."""
    import equinox as eqx
    import jax

    import sdekit

    if args.mode == "alone":  # one of P independent single processes run at once
        p = 1
    else:
        sdekit.initialize_distributed(args.coordinator, args.processes, args.process_id)
        p = jax.process_count()
    batch = STRONG_BATCH if args.mode == "strong" else WEAK_BATCH * p
    n = STRONG_N if args.mode == "strong" else WEAK_N * p
    p = args.processes
    sampler = sdekit.compose("funnel", {"name": "pis", "steps": 128, "batch": batch,
                                        "train_iters": CHUNK * args.chunks})
    sampler = eqx.tree_at(lambda s: s.train_options,
                          sampler, sdekit.TrainOptions(steps=CHUNK * args.chunks, chunk=CHUNK))
    beats = []
    trained, _ = sdekit.train(sampler, jax.random.key(0), progress=False,
                              callback=lambda step: beats.append((time.perf_counter(), step)))
    (t_a, a), (t_b, b) = beats[1], beats[-1]  # after the first two chunks
    step_seconds = (t_b - t_a) / (b - a)
    key = jax.random.key(1)
    jax.block_until_ready(trained.sample(key, n))  # compile
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(trained.sample(key, n).x)
        times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from jax.experimental import multihost_utils

    peak = [rss] if args.mode == "alone" else multihost_utils.process_allgather(jax.numpy.asarray(rss))
    if jax.process_index() == 0:
        print(json.dumps({"processes": p, "mode": args.mode, "batch": batch, "n": n,
                          "train_step_seconds": step_seconds,
                          "sample_seconds": statistics.median(times),
                          "peak_rss_mib": [float(v) for v in peak]}), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(processes: int, mode: str, chunks: int) -> dict:
    """Run `worker` in `processes` processes on localhost; the JSON of process 0."""
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
                                      "intra_op_parallelism_threads=1"}
    address = f"localhost:{_free_port()}"
    procs = [subprocess.Popen(
        [sys.executable, __file__, "--worker", "--coordinator", address, "--processes",
         str(processes), "--process-id", str(i), "--mode", mode, "--chunks", str(chunks)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(processes)]
    try:
        outputs = [p.communicate(timeout=1800) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs):
        if p.returncode:
            raise RuntimeError(f"a worker failed (exit {p.returncode}):\n{err[-3000:]}")
    line = [s for s in outputs[0][0].splitlines() if s.startswith("{")][-1]
    return json.loads(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--quick", action="store_true", help="4 chunks of training, not 8")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--coordinator", help=argparse.SUPPRESS)
    parser.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("strong", "weak", "alone"), help=argparse.SUPPRESS)
    parser.add_argument("--chunks", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.processes = args.processes[0]
        return worker(args)
    chunks = 4 if args.quick else args.chunks
    rows = [launch(p, mode, chunks) for mode in ("strong", "weak", "alone") for p in args.processes]
    print(f"{'mode':7}{'P':>3}{'batch':>7}{'n':>7}{'train step ms':>15}{'sample s':>10}"
          f"{'speed-up':>10}{'peak RSS MiB':>14}")
    for row in rows:
        base = next(r for r in rows if r["mode"] == row["mode"] and r["processes"] == 1)
        work = {"strong": 1, "weak": row["processes"], "alone": row["processes"]}[row["mode"]]
        speedup = work * base["train_step_seconds"] / row["train_step_seconds"]
        print(f"{row['mode']:7}{row['processes']:>3}{row['batch']:>7}{row['n']:>7}"
              f"{1e3 * row['train_step_seconds']:>15.2f}{row['sample_seconds']:>10.3f}"
              f"{speedup:>10.2f}{max(row['peak_rss_mib']):>14.0f}")
    import jax

    RESULTS.write_text(json.dumps({
        "rows": rows, "cores": os.cpu_count(), "jax": jax.__version__,
        "machine": platform.platform(), "load_average": os.getloadavg()}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
