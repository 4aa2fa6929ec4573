"""Run directories: what a run writes (config, metrics, checkpoints, flow, summary, draws, plots) and rebuilding a
run's flow and target from it (:mod:`.run_dir`), their safety rules (:mod:`.run_files`), weights-only atomic
checkpoints (:mod:`.checkpoint`, :mod:`.convert`), MCMC ensembles on disk (:mod:`.ensemble`), and the baseline
samplers' runners that write the same format."""

from flowvi.runs.run_dir import (
    DTYPES,
    build,
    hierarchy_of,
    load_flow_weights,
    load_run,
    plot_training_curve,
    read_config,
    resolve_device,
    resolve_dtype,
    write_samples,
)

__all__ = [
    "DTYPES",
    "build",
    "hierarchy_of",
    "load_flow_weights",
    "load_run",
    "plot_training_curve",
    "read_config",
    "resolve_device",
    "resolve_dtype",
    "write_samples",
]
