"""Options that several commands share: jobs and Ray, object storage, the summary's maps."""

from __future__ import annotations

import argparse

from loralens.store.schema import UserError


def add_jobs(p: argparse.ArgumentParser) -> None:
    """``--jobs``: folds trained at once in processes of this machine."""
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="folds trained at once, each in its own process on --device (default 1: one after the other "
                        "in this process); on a GPU, a small model's LoRA folds keep it busier together (each process "
                        "holds its own model in GPU memory; frozen runs gain little, as each process encodes every "
                        "utterance)")


def add_cluster(p: argparse.ArgumentParser, unit: str) -> None:
    """The flags that run a command's jobs on Ray (see ``loralens.precompute.executors.RayExecutor``)."""
    g = p.add_argument_group("Ray (the cluster extra: pip install -e \".[cluster]\")")
    g.add_argument("--ray", action="store_true", help=f"run each {unit} as a Ray task (default: one after the other "
                                                      "in this process)")
    g.add_argument("--address", default=None, help="the Ray cluster (auto, HOST:6379, ray://HOST:10001; default "
                                                   "$RAY_ADDRESS, else a local one on this machine)")
    g.add_argument("--cpus", type=float, default=1, metavar="N", help=f"CPU cores each {unit}'s task holds (default 1)")
    g.add_argument("--gpus", type=float, default=None, metavar="N",
                   help=f"GPUs each {unit}'s task holds (default 1 where the cluster has GPUs, else 0)")
    g.add_argument("--retries", type=int, default=1,
                   help="times Ray reruns a task whose worker or node died (default 1; finished work is kept)")


def fold_indices(text: str) -> list[int]:
    """``--only-folds``: a comma list of fold indices (argparse names the flag when it refuses one)."""
    try:
        folds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        folds = []
    if not folds or min(folds) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected fold indices (0, 1, ...) separated by commas, like 0,3")
    return folds


def executor(args: argparse.Namespace):
    """The executor that ``--jobs`` and the Ray flags ask for: in this process, in processes, or on Ray."""
    from loralens.precompute.executors import LocalExecutor, ProcessExecutor, RayExecutor

    jobs = getattr(args, "jobs", 1)
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: expected a positive number")
    if args.ray and jobs > 1:
        raise UserError("--jobs runs folds in processes of this machine, --ray on a Ray cluster; choose one")
    if not args.ray:
        return LocalExecutor() if jobs == 1 else ProcessExecutor(jobs)
    return RayExecutor(address=args.address, num_cpus=args.cpus, num_gpus=args.gpus, max_retries=args.retries)


def add_storage(p: argparse.ArgumentParser) -> None:
    """The flags that reach a store on object storage (fsspec storage options, ``store.storage``)."""
    g = p.add_argument_group("object storage (a store at an s3://, gs://, ... URL)")
    g.add_argument("--endpoint-url", default=None, metavar="URL",
                   help="an S3-compatible server, e.g. http://127.0.0.1:9000 (MinIO, Ceph)")
    g.add_argument("--anonymous", action="store_true", help="read a public bucket without credentials")
    g.add_argument("--profile", default=None, help="a profile of the AWS credentials file")
    g.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to fsspec as is (repeatable; a JSON VALUE is parsed: anon=true, "
                        "client_kwargs='{\"region_name\": \"eu-west-1\"}')")


def storage(args: argparse.Namespace) -> dict | None:
    """The fsspec storage options of the object-storage flags (None where none is given)."""
    from loralens.store.storage import storage_options

    return storage_options(args.endpoint_url, args.anonymous, args.profile, args.storage_option)


def maps(text: str) -> tuple[str, ...]:
    """``--maps``: the 2-D map methods, checked."""
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    if unknown := [m for m in methods if m not in ("umap", "tsne")]:
        raise UserError(f"--maps {text!r}: unknown {unknown}; expected a comma list of umap, tsne")
    return methods
