"""Data-parallel training through tf.distribute: the strategy, its description, and scaling."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.inputs import parse_input_json
from deepsight_tf.core.settings import STRATEGIES

SCALING_RULES = ("linear", "sqrt", "none")
# Tasks of a TF_CONFIG cluster that run training steps (an "evaluator" or "ps" does not).
TRAINING_TASKS = ("chief", "worker")
TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)


def cluster_workers(tf_config: str | None = None) -> int:
    """How many training tasks (chief and workers) TF_CONFIG names; 0 when it is unset.

    `tf_config` is the JSON text (default: the TF_CONFIG environment variable). A malformed
    TF_CONFIG raises ConfigError here rather than deep inside TensorFlow's cluster resolver.
    """
    if tf_config is None:
        tf_config = os.environ.get("TF_CONFIG", "")
    if not tf_config.strip():
        return 0
    fix = f"set TF_CONFIG like {TF_CONFIG_EXAMPLE}"
    config = parse_input_json(tf_config, "TF_CONFIG")
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict):
        raise ConfigError(f'TF_CONFIG has no "cluster" object; {fix}')
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(
            isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses
        ):
            raise ConfigError(f'TF_CONFIG cluster "{job}" must be a list of "host:port"; {fix}')
    workers = sum(len(cluster.get(job, [])) for job in TRAINING_TASKS)
    if workers == 0:
        raise ConfigError(f'TF_CONFIG cluster names no "worker" or "chief"; {fix}')
    task = config.get("task")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        jobs = ", ".join(cluster)
        raise ConfigError(f'TF_CONFIG "task" must name this process\'s job ({jobs}); {fix}')
    index = task.get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        raise ConfigError(f'TF_CONFIG task "index" must be an integer, got {index!r}; {fix}')
    if not 0 <= index < len(cluster[task["type"]]):
        raise ConfigError(
            f"TF_CONFIG task index {index} is outside the {len(cluster[task['type']])} "
            f'"{task["type"]}" addresses; give each process its own index from 0'
        )
    return workers


def choose_strategy(name: str, tf_config: str | None = None, gpus: int | None = None) -> str:
    """The strategy `--strategy name` means here: "one", "mirrored" or "multiworker".

    auto: multiworker when TF_CONFIG (or `tf_config`) names more than one worker, else mirrored
    when more than one GPU is visible (or `gpus`), else one. Listing GPUs does not start
    TensorFlow's runtime, so this may run before make_strategy.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"--strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    if name != "auto":
        return name
    if cluster_workers(tf_config) > 1:
        return "multiworker"
    if gpus is None:
        gpus = len(tf.config.list_physical_devices("GPU"))
    return "mirrored" if gpus > 1 else "one"


def make_strategy(name: str, devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """The tf.distribute strategy for `--strategy`; create it before TF builds anything.

    auto: see choose_strategy. one: TensorFlow's default (one-device) strategy. mirrored:
    MirroredStrategy over all visible GPUs of this machine (or `devices`), gradients
    all-reduced each step. multiworker: MultiWorkerMirroredStrategy over the machines
    TF_CONFIG names, each with all its local GPUs.

    MultiWorkerMirroredStrategy configures collective ops, which TensorFlow allows only
    before its runtime starts: call this first, before any model, dataset or tensor exists.
    """
    name = choose_strategy(name)
    if name == "one":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    if devices:
        raise ValueError(
            "`devices` applies to the mirrored strategy only; a multiworker strategy uses "
            f"every local GPU (or the CPU). Received: devices={list(devices)}"
        )
    if cluster_workers() == 0:
        raise ConfigError(
            f"--strategy multiworker needs TF_CONFIG on every machine, e.g. {TF_CONFIG_EXAMPLE} "
            "with that machine's own index (on one machine use --strategy mirrored)"
        )
    try:
        return _KerasMultiWorkerMirroredStrategy()
    except RuntimeError as exc:
        raise RuntimeError(
            "make_strategy('multiworker') must run before TensorFlow initialises its runtime "
            f"(before any tensor, model or dataset is made). Received: {exc}"
        ) from exc


class _KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose `reduce` takes what Keras 3's fit passes it.

    Keras 3 (keras-team/keras#20585) calls `reduce` in two ways the multi-worker strategy
    refuses and MirroredStrategy never sees: with a tuple of per-replica tensors (the batch
    that builds the model) and with `axis=0` on scalars (each step's loss and metrics). Here
    each tensor is reduced on its own, and a scalar across replicas only (it has no axis 0).
    """

    def reduce(self, reduce_op: Any, value: Any, axis: Any) -> Any:
        reduce_one = super().reduce

        def reduce_tensor(v: Any) -> Any:
            local = self.experimental_local_results(v)[0]
            rank = tf.TensorShape(getattr(local, "shape", ())).rank
            return reduce_one(reduce_op, v, None if rank == 0 else axis)

        return tf.nest.map_structure(reduce_tensor, value)


def strategy_kind(strategy: tf.distribute.Strategy) -> str:
    """The kind of `strategy`: one, mirrored or multiworker (else its class name)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multiworker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    # The default strategy's class is private; its name is the stable way to recognise it.
    if isinstance(strategy, tf.distribute.OneDeviceStrategy) or (
        type(strategy).__name__ == "_DefaultDistributionStrategy"
    ):
        return "one"
    return type(strategy).__name__


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's artifacts (always, except on non-chief workers)."""
    return bool(strategy.extended.should_checkpoint)


def describe_strategy(strategy: tf.distribute.Strategy) -> dict[str, Any]:
    """kind, replicas, workers, devices and chief: what a run's config.json records."""
    kind = strategy_kind(strategy)
    workers = 1
    resolver = getattr(strategy, "cluster_resolver", None)
    if kind == "multiworker" and resolver is not None:
        cluster = resolver.cluster_spec().as_dict()
        workers = max(1, sum(len(cluster.get(job, [])) for job in TRAINING_TASKS))
    if kind == "one":
        # The default strategy places ops as TensorFlow does: the first GPU, else the CPU.
        gpus = tf.config.list_logical_devices("GPU")
        devices = [(gpus or tf.config.list_logical_devices("CPU"))[0].name]
    else:
        devices = list(strategy.extended.worker_devices)
    return {
        "kind": kind,
        "replicas": int(strategy.num_replicas_in_sync),
        "workers": workers,
        "devices": devices,
        "chief": is_chief(strategy),
    }


def scale_for_replicas(
    per_replica_batch: int, lr: float, replicas: int, rule: str = "linear"
) -> tuple[int, float]:
    """The global batch and the learning rate for it: the one place both scale with replicas.

    `--batch-size` is the batch of one replica and `--lr` the rate tuned for that batch, so a
    one-device run is unchanged. With R replicas each step sees a global batch of
    R * per_replica_batch examples (Keras averages the loss over the global batch), and:

        linear  lr * R        Goyal et al. 2017, "Accurate, Large Minibatch SGD": k times the
                              batch, k times the rate; pair it with a warm-up, which OneCycle's
                              rising phase (--pct-start) already is.
        sqrt    lr * sqrt(R)  keeps the variance of the update constant (Krizhevsky 2014,
                              Hoffer et al. 2017); the gentler choice for Adam-type optimizers.
        none    lr            the rate was already chosen for the global batch.
    """
    if isinstance(per_replica_batch, bool) or not (
        isinstance(per_replica_batch, int) and per_replica_batch >= 1
    ):
        raise ValueError(
            f"`per_replica_batch` must be a positive integer. Received: {per_replica_batch!r}"
        )
    if isinstance(replicas, bool) or not (isinstance(replicas, int) and replicas >= 1):
        raise ValueError(f"`replicas` must be a positive integer. Received: {replicas!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"`lr` must be a positive finite number. Received: {lr!r}")
    if rule not in SCALING_RULES:
        raise ValueError(f"`rule` must be one of {SCALING_RULES}. Received: rule={rule!r}")
    factor = {"linear": replicas, "sqrt": math.sqrt(replicas), "none": 1}[rule]
    return per_replica_batch * replicas, float(lr) * factor


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` set to shard by data across workers, as in-memory pipelines must.

    tf.distribute's default (AUTO) first tries to give each worker its own files; deepsight's
    pipelines read arrays in memory, so AUTO falls back to DATA with a warning on every
    worker. Each worker builds the same seeded global batches and keeps its replicas' share.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
