"""Throughput: the serial loop, the vectorised inner loop and the Ray service, side by side.

For each workload (sine: meta-batch 32, 5 inner SGD steps of 10 points; Omniglot 5-way 5-shot:
meta-batch 32, 5 inner Adam steps of 10 images, the Omniglot job defaults, on the shared zips
when they are there), in one run on the same machine, with the same seeds and the same number of
tasks:

1. serial: `reptile.serial.train_serial`, one task at a time (nn.Module + torch.optim);
2. vectorised: the trainer's round loop (`service.trainer.MetaTrainer`) on one inner-loop worker
   in this process, no Ray, no logging: `reptile.inner.run_tasks` on all tasks of a round at
   once, as the actors run it, in the family's batching mode (`stacked`: a model that takes
   weights stacked over tasks, and the family's written-out gradient; `vmap`:
   `torch.func.vmap` over the tasks, and autograd; `loop`: task by task), and again in each
   other mode the family's model supports, for comparison;
3. service: the same loop driving a `workers.pool.WorkerPool` on a local Ray (or the cluster at
   RAY_ADDRESS) and logging to MLflow through `service.tracking.Tracker` (wired by
   `service.runtime`), with 1 and 2 actors, and the counts `--actors` adds;
4. 2 and 3 again with `compile_inner_loop` (mode "+c"), after each compiled its step once
   (sine: meta-batch 32 and 128; Omniglot: 32). Compiling takes 5–60 s per process, so a
   --quick run takes a few minutes the first time and less once torch's cache holds the code.

It prints tasks/s; milliseconds per round split into compute (the inner loops; for the service,
the slowest chunk), overhead (the rest of the round: Ray dispatch and gather, the meta-update)
and logging (between rounds: metrics to the tracker, bookkeeping); peak RSS per actor; each
path's ratio to serial; and its GFLOP/s against the roofline: the FLOPs of one task on that
path (matmuls and convolutions, forward and backward, counted by `FlopCounterMode`) times
tasks/s, over float32 `torch.mm` GFLOP/s on one thread per core used. Then tasks/s and the
overhead against the meta-batch size (sine: 1, 2, 4 … 256; --quick: a subset) and the number of
actors, drawn to a PNG and logged as a run of the MLflow experiment "reptile-bench"; last, the
issue's bars, each with this run's value and whether it met it (`bars` in the --json line).
In-process paths use one thread, like an actor; serial and vectorised run once more on all of
the machine's cores ("threads" column), since "one process" may use the whole machine.

    python -m bench.throughput [--quick] [--json] [--workload NAME] [--data-dir DIR]
                               [--tracking-uri URI] [--actors N [N ...]]

Modules: `workloads` (what is measured), `inprocess` (the trainer's in-process runner and
sink), `measurement` (the timings), `report` (tables, figure, --json, MLflow), `bars`.
"""
