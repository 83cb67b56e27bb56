"""Speed and memory of sdekit's trained samplers against a hand-written floor.

    python benchmarks/speed.py                     # everything (about 10 minutes on 2 CPU cores)
    python benchmarks/speed.py --quick             # fewer repetitions, K up to 512
    python benchmarks/speed.py --only speed        # or: memory, compile

For `pis` and `dds` with the PIS-grad controller (2 x 64) on `funnel` (d = 10) and
`many-well-32` at K = 128, batch 256, it measures

- the training-step time of `sdekit.train` (one chunk of `--train-steps` steps per call)
  and the sampling throughput of `sampler.sample` (particles x steps per second), and the
  same for a *floor*: a minimal, hand-written, jit-compiled `lax.scan` implementation of
  the same step and loss (same network, same Adam + clipping, same time grid), written
  below from scratch with plain jax / equinox / optax. sdekit and the floor are timed
  interleaved, repetition by repetition (alternating who goes first), and compared by
  medians: ratio = sdekit time / floor time, so > 1 means sdekit is slower; the paired
  ratio is the median over repetitions of the ratio of neighbouring calls;
- the training-step time with `remat=True` (checkpointed steps), relative to without;
- compile time: the first call minus the steady-state median;
- peak memory: XLA's `memory_analysis()` of the compiled loss-and-gradient of one step
  (temporaries, bytes) for K = 128 ... 1024 with and without `remat=True`, and the
  process's maximum resident set size.

It prints tables and writes `benchmarks/results/speed.json` (the device is recorded from
`jax.devices()`). It runs unchanged on a GPU (`JAX_PLATFORMS=cuda`).
"""

import argparse
import functools
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import sdekit

RESULTS = Path(__file__).parent / "results" / "speed.json"
TARGETS = ("funnel", "many-well-32")
SAMPLERS = ("pis", "dds")
LEARNING_RATE, GRAD_CLIP = 5e-3, 1.0


# --------------------------------------------------------------------------------------
# The floor: PIS / DDS written by hand (no sdekit), the overhead a library must not add to.
# --------------------------------------------------------------------------------------


def funnel_log_prob(x):
    x0, rest = x[0], x[1:]
    c = 0.5 * math.log(2 * math.pi)
    lp0 = -0.5 * (x0 / 3.0) ** 2 - math.log(3.0) - c
    return lp0 - 0.5 * jnp.sum(rest**2) * jnp.exp(-x0) - (x.shape[0] - 1) * (0.5 * x0 + c)


def many_well_32_log_prob(x):
    a, b = x[0::2], x[1::2]
    return jnp.sum(-(a**4) + 6.0 * a**2 + 0.5 * a - 0.5 * b**2)


FLOOR_TARGETS = {"funnel": (funnel_log_prob, 10), "many-well-32": (many_well_32_log_prob, 32)}


class FloorNet(eqx.Module):
    """PIS-grad: NN(x, emb(t)) + NN_t(emb(t)) * clip(grad log gamma(x)), clipped."""

    state_net: eqx.nn.MLP
    time_net: eqx.nn.MLP
    features: int = eqx.field(static=True)

    def __init__(self, d, width, depth, features, key):
        k1, k2 = jax.random.split(key)
        self.state_net = _zero_last(eqx.nn.MLP(d + 2 * features, d, width, depth, jax.nn.gelu, key=k1))
        self.time_net = _zero_last(eqx.nn.MLP(2 * features, d, width, depth, jax.nn.gelu, key=k2))
        self.features = features

    def __call__(self, t, x, score):
        omega = jnp.linspace(0.1, 100.0, self.features)
        emb = jnp.concatenate([jnp.sin(omega * t), jnp.cos(omega * t)])
        # first layer split as W_x x + (W_e emb + b), as sdekit's controllers do: the time
        # part is then computed once per time step, not per particle
        first, *rest = self.state_net.layers
        h = first.weight[:, : x.shape[0]] @ x + (first.weight[:, x.shape[0] :] @ emb + first.bias)
        for layer in rest:
            h = layer(jax.nn.gelu(h))
        u = h + self.time_net(emb) * jnp.clip(score, -100, 100)
        return jnp.clip(u, -1e4, 1e4)


def _zero_last(mlp):
    last = mlp.layers[-1]
    return eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp,
                       (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))


def _log_normal(x, mean, std):
    return -0.5 * jnp.sum(((x - mean) / std) ** 2, -1) - x.shape[-1] * jnp.log(std) \
        - 0.5 * x.shape[-1] * math.log(2 * math.pi)


def floor_grid(kind, K):
    """Per-step constants: times, forward mean coefficient, forward/backward std."""
    if kind == "pis":  # pinned Brownian motion, sigma = 1, T = 1, Euler: x + h u
        t = np.linspace(1.0 - 1e-6, 0.0, K + 1)
        h = t[:-1] - t[1:]
        coef = (1 - t[:-1]) / (1 - t[1:])  # backward kernel x_{k-1} ~ N(coef x_k, std_b^2)
        return dict(t=t[:-1], h=h, std=np.sqrt(h), coef=coef, std_b=np.sqrt(h * coef),
                    prior_std=math.sqrt(1e-6))
    # dds: VP, linear beta in [0.1, 20], sigma = 1, exponential integrator
    t = np.linspace(1.0, 1e-3, K + 1)
    B = 0.1 * t + 0.5 * (20 - 0.1) * t**2
    dB = B[:-1] - B[1:]
    a = np.exp(-0.5 * dB)
    std = np.sqrt(-np.expm1(-dB))
    return dict(t=t[:-1], h=2 * (1 - a), std=std, coef=a, std_b=std, a=a, prior_std=1.0)


def floor_log_weights(kind, net, log_prob, grid, key, n, d):
    c = {k: jnp.asarray(v, jnp.float32) for k, v in grid.items()}
    score = jax.vmap(jax.grad(log_prob))
    control = jax.vmap(net, in_axes=(None, 0, 0))
    k0, kp = jax.random.split(key)
    x0 = c["prior_std"] * jax.random.normal(k0, (n, d))
    log_w0 = -_log_normal(x0, 0.0, c["prior_std"])

    def step(carry, inp):
        x, log_w = carry
        t, h, std, coef, std_b, k = inp
        u = control(t, x, score(x))
        mean = (coef * x if kind == "dds" else x) + h * u
        x_new = mean + std * jax.random.normal(k, x.shape)
        log_w = log_w + _log_normal(x, coef * x_new, std_b) - _log_normal(x_new, mean, std)
        return (x_new, log_w), None

    keys = jax.random.split(kp, grid["t"].shape[0])
    inputs = (c["t"], c["h"], c["std"], c["coef"], c["std_b"], keys)
    (x, log_w), _ = jax.lax.scan(step, (x0, log_w0), inputs)
    return x, log_w + jax.vmap(log_prob)(x)


def make_floor(kind, target, K, batch, steps, seed=0):
    """(params, opt_state, train_chunk, sample): a hand-written training loop and sampler."""
    log_prob, d = FLOOR_TARGETS[target]
    grid = floor_grid(kind, K)
    net = FloorNet(d, 64, 2, 64, jax.random.key(seed))
    optimizer = optax.chain(optax.clip_by_global_norm(GRAD_CLIP),
                            optax.adam(optax.cosine_decay_schedule(LEARNING_RATE, steps, 0.1)))

    params, static = eqx.partition(net, eqx.is_inexact_array)

    def loss(params, key):
        net = eqx.combine(params, static)
        return -jnp.mean(floor_log_weights(kind, net, log_prob, grid, key, batch, d)[1])

    @jax.jit
    def train_chunk(params, opt_state, key):
        def step(carry, k):
            params, opt_state = carry
            value, grads = jax.value_and_grad(loss)(params, k)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), jax.random.split(key, steps))
        return params, opt_state, losses

    @functools.partial(jax.jit, static_argnums=2)
    def sample(params, key, n):
        return floor_log_weights(kind, eqx.combine(params, static), log_prob, grid, key, n, d)

    return params, optimizer.init(params), train_chunk, sample


# --------------------------------------------------------------------------------------
# sdekit
# --------------------------------------------------------------------------------------


def make_sdekit(kind, target, K, batch, steps, seed=0, **options):
    sampler = sdekit.compose(
        target, {"name": kind, "steps": K, "batch": batch, "train_iters": steps,
                 "learning_rate": LEARNING_RATE, "grad_clip": GRAD_CLIP, **options},
        controller={"name": "pis-grad", "width": 64, "depth": 2, "seed": seed},
    )
    # one chunk per call of sdekit.train: the steps the floor runs in one jitted scan
    opts = sampler.train_options
    return eqx.tree_at(lambda s: s.train_options, sampler, sdekit.TrainOptions(
        steps=steps, learning_rate=opts.learning_rate, grad_clip=opts.grad_clip, chunk=steps,
        final_lr_fraction=opts.final_lr_fraction))


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------


def _timed(fn):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def speed(kind, target, K, batch, steps, n_sample, reps):
    """Interleaved repetitions of sdekit and the floor; medians and ratios."""
    model = make_sdekit(kind, target, K, batch, steps)
    remat = make_sdekit(kind, target, K, batch, steps, remat=True)
    net, opt_state, train_chunk, floor_sample = make_floor(kind, target, K, batch, steps)
    key = jax.random.key(1)
    runs = {
        "sdekit_train": lambda i: sdekit.train(model, jax.random.fold_in(key, i), progress=False)[0],
        "floor_train": lambda i: train_chunk(net, opt_state, jax.random.fold_in(key, i)),
        "sdekit_remat_train": lambda i: sdekit.train(remat, jax.random.fold_in(key, i), progress=False)[0],
        "sdekit_sample": lambda i: model.sample(jax.random.fold_in(key, i), n_sample),
        "floor_sample": lambda i: floor_sample(net, jax.random.fold_in(key, i), n_sample),
    }
    first = {name: _timed(lambda: fn(0)) for name, fn in runs.items()}
    times = {name: [] for name in runs}
    groups = (("sdekit_train", "floor_train", "sdekit_remat_train"), ("sdekit_sample", "floor_sample"))
    for i in range(1, reps + 1):
        for group, calls in zip(groups, (1, 3)):  # sampling is short: three pairs per repetition
            for j in range(calls):
                order = group if (i + j) % 2 else group[::-1]  # alternate who goes first
                for name in order:
                    times[name].append(_timed(lambda: runs[name](100 * i + j)))
    med = {name: statistics.median(v) for name, v in times.items()}

    def paired(a, b):  # the median of ratios of neighbouring calls: robust to load changes
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    out = {
        "sampler": kind, "target": target, "K": K, "batch": batch, "train_steps_per_call": steps,
        "n_sample": n_sample, "reps": reps,
        "sdekit_step_s": med["sdekit_train"] / steps, "floor_step_s": med["floor_train"] / steps,
        "sdekit_sample_throughput": n_sample * K / med["sdekit_sample"],
        "floor_sample_throughput": n_sample * K / med["floor_sample"],
        "sdekit_train_compile_s": first["sdekit_train"] - med["sdekit_train"],
        "floor_train_compile_s": first["floor_train"] - med["floor_train"],
        "sdekit_sample_compile_s": first["sdekit_sample"] - med["sdekit_sample"],
        "floor_sample_compile_s": first["floor_sample"] - med["floor_sample"],
        "times": times,
    }
    out["train_ratio"] = med["sdekit_train"] / med["floor_train"]
    out["train_ratio_paired"] = paired("sdekit_train", "floor_train")
    out["sample_ratio_paired"] = paired("sdekit_sample", "floor_sample")
    out["sdekit_remat_step_s"] = med["sdekit_remat_train"] / steps
    out["remat_cost"] = med["sdekit_remat_train"] / med["sdekit_train"]
    out["sample_ratio"] = med["sdekit_sample"] / med["floor_sample"]
    return out


def memory(kind, target, K, batch, remat):
    """Bytes of XLA temporaries of the compiled loss-and-gradient of one training step."""
    model = make_sdekit(kind, target, K, batch, 10, remat=remat)
    params, static = eqx.partition(model, model.trainable())

    def value_and_grad(params, key):
        return eqx.filter_value_and_grad(lambda p: eqx.combine(p, static).loss(key)[0])(params)

    t0 = time.perf_counter()
    compiled = jax.jit(value_and_grad).lower(params, jax.random.key(0)).compile()
    stats = compiled.memory_analysis()
    return {"sampler": kind, "target": target, "K": K, "batch": batch, "remat": remat,
            "temp_bytes": int(stats.temp_size_in_bytes),
            "argument_bytes": int(stats.argument_size_in_bytes),
            "compile_s": time.perf_counter() - t0}


def device_info():
    dev = jax.devices()
    return {"platform": dev[0].platform, "devices": [str(d) for d in dev],
            "device_kind": dev[0].device_kind, "jax": jax.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
            "x64": bool(jax.config.jax_enable_x64)}


def _fmt_table(rows, cols):
    head = " | ".join(c for c, _ in cols)
    lines = [head, " | ".join("---" for _ in cols)]
    for r in rows:
        lines.append(" | ".join(f(r) for _, f in cols))
    return "\n".join(lines)


SPEED_COLS = [
    ("sampler", lambda r: r["sampler"]), ("target", lambda r: r["target"]),
    ("sdekit step (s)", lambda r: f"{r['sdekit_step_s']:.4f}"),
    ("floor step (s)", lambda r: f"{r['floor_step_s']:.4f}"),
    ("train ratio (paired)", lambda r: f"{r['train_ratio']:.3f} ({r['train_ratio_paired']:.3f})"),
    ("remat step / plain", lambda r: f"{r['remat_cost']:.2f}"),
    ("sdekit sample (particle-steps/s)", lambda r: f"{r['sdekit_sample_throughput']:.3g}"),
    ("floor sample (particle-steps/s)", lambda r: f"{r['floor_sample_throughput']:.3g}"),
    ("sample ratio (paired)", lambda r: f"{r['sample_ratio']:.3f} ({r['sample_ratio_paired']:.3f})"),
    ("compile train sdekit/floor (s)",
     lambda r: f"{r['sdekit_train_compile_s']:.1f} / {r['floor_train_compile_s']:.1f}"),
    ("compile sample sdekit/floor (s)",
     lambda r: f"{r['sdekit_sample_compile_s']:.1f} / {r['floor_sample_compile_s']:.1f}"),
]


def memory_table(rows):
    Ks = sorted({r["K"] for r in rows})
    keys = sorted({(r["sampler"], r["target"]) for r in rows})
    lines = ["sampler | target | remat | " + " | ".join(f"K={K} (MiB)" for K in Ks),
             " | ".join("---" for _ in range(3 + len(Ks)))]
    for sampler, target in keys:
        for remat in (False, True):
            vals = {r["K"]: r["temp_bytes"] for r in rows
                    if (r["sampler"], r["target"], r["remat"]) == (sampler, target, remat)}
            cells = [f"{vals[K] / 2**20:.1f}" if K in vals else "" for K in Ks]
            lines.append(f"{sampler} | {target} | {remat} | " + " | ".join(cells))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions, K <= 512 for memory")
    parser.add_argument("--only", choices=("speed", "memory"), default=None)
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--K", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=20, help="steps per sdekit.train call")
    parser.add_argument("--n-sample", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "device": device_info()}
    print(f"device: {result['device']['devices']} ({result['device']['device_kind']}), "
          f"load average {result['device']['load_average']}")
    if args.only in (None, "speed"):
        rows = []
        for target in args.targets:
            for kind in args.samplers:
                rows.append(speed(kind, target, args.K, args.batch, args.train_steps, args.n_sample, reps))
                print(_fmt_table(rows[-1:], SPEED_COLS).splitlines()[-1], flush=True)
        result["speed"] = rows
        print("\n" + _fmt_table(rows, SPEED_COLS))
    if args.only in (None, "memory"):
        Ks = (128, 256, 512) if args.quick else (128, 256, 512, 1024)
        rows = []
        for target in args.targets:
            for kind in args.samplers:
                for K in Ks:
                    for remat in (False, True):
                        rows.append(memory(kind, target, K, args.batch, remat))
        result["memory"] = rows
        print("\nXLA temporaries of one training step's loss and gradient:\n" + memory_table(rows))
    result["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["device"]["load_average_end"] = os.getloadavg()
    print(f"\nprocess max RSS {result['max_rss_mib']:.0f} MiB; load average at end "
          f"{result['device']['load_average_end']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.only and args.out.exists():  # keep the other part of an earlier run
        old = json.loads(args.out.read_text())
        other = "memory" if args.only == "speed" else "speed"
        if other in old:
            result[other] = old[other]
            result[f"{other}_from"] = old.get(f"{other}_from", {"command": old.get("command"),
                                                                 "device": old.get("device")})
    args.out.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
