"""Ray for the sweep driver: where the cluster is (--address, RAY_ADDRESS, or a local Ray), reaching it with a
deadline, and whether it can hold the space's trials (now, or once its autoscaler adds a node)."""
from __future__ import annotations

import json
import os
import re
import time

from tuner.errors import UserError, excerpt
from tuner.space import SearchSpace

ADDRESS_TIMEOUT_S = 30.0  # --address: how long to wait for the cluster before giving up


def parse_address(address: str, named: str = "--address") -> tuple[str, int] | None:
    """(host, port) of a `host:port` or `ray://host:port` address to probe; None for `auto`/`local`. `named`:
    where the address came from (--address, or RAY_ADDRESS), for the errors."""
    if address in ("auto", "local"):
        return None
    unset = ", or unset RAY_ADDRESS to start a local Ray" if named == "RAY_ADDRESS" else ""
    if re.match(r"^https?://", address, re.IGNORECASE):
        raise UserError(f"{named} {excerpt(address)} is a dashboard address (what `ray job submit` takes), not the "
                        f"cluster's: give host:port of the head's GCS (e.g. 10.0.0.5:6379), ray://host:10001, or "
                        f"auto{unset}")
    host_port = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = host_port.rpartition(":")
    if "://" in host_port or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(
            c.isspace() or c in "/?#@" for c in host):
        raise UserError(f"{named} {excerpt(address)} is not a Ray address: give host:port of the head's GCS "
                        f"(e.g. 10.0.0.5:6379), ray://host:10001, or auto{unset}")
    return host.strip("[]"), int(port)


def probe_address(address: str, deadline: float, named: str = "--address") -> None:
    """Wait (Ctrl-C works) until the head's port accepts a connection, or give up at `deadline`."""
    import socket

    target = parse_address(address, named)
    if target is None:
        return
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(target, timeout=min(2.0, max(0.1, deadline - time.monotonic()))):
                return
        except socket.gaierror:
            raise UserError(f"{named} {excerpt(address)}: host {excerpt(target[0])} is unknown; fix {named} "
                            "(host:port of the Ray head)") from None
        except OSError as err:
            last = err.strerror or type(err).__name__
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    raise UserError(f"cannot reach the Ray cluster at {address} within {ADDRESS_TIMEOUT_S:.0f} s ({last}); start it "
                    f"with `ray start --head` or fix {named}")


def connect_ray(address: str | None, named: str = "--address") -> str:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # The old output engine honours verbose=0 entirely; the new one still prints its configuration box and a
    # TensorBoard hint although MLflow is the tracker (tuner.console prints the sweep instead)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune snapshots its experiment state (what --resume reads) every 10 s by default; a trial that ends
    # after the last snapshot is resumed from its last checkpoint. A 2 s period costs little.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # With epochs of a second or two, num_to_keep=2 forces a snapshot about every epoch and Tune warns each
    # time. Those snapshots keep --resume consistent at a small share of the epoch time
    # (docs/benchmarks.md#sweep-overhead), so the warning is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Every worker of the sweep (trials, the final fit) keeps Ray's teardown SystemExit off the console
    runtime_env = {"worker_process_setup_hook": "tuner.interrupts.quiet_exit_in_finalizers"}
    import logging

    # Tune's own advice when a run is interrupted (`Tuner.restore(path=...)`) and its warning about trials that
    # never reported (no result file yet) contradict or repeat the driver's line, which names `--resume NAME`
    logging.getLogger("ray.tune.tune").addFilter(
        lambda record: not record.getMessage().startswith("Experiment has been interrupted"))
    logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(
        lambda record: not record.getMessage().startswith("Failed to fetch metrics"))
    if not address:
        # The local cluster's token authentication, on by default, is announced as a WARNING ahead of the sweep's
        # own lines; it is the safe setting and needs nothing from the user (the "disabled" warning stays)
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
            lambda record: not record.getMessage().startswith("Token authentication is enabled"))
        ray.init(address="local", include_dashboard=False, logging_level="WARNING",  # never a stale cluster
                 runtime_env=runtime_env)
        return "local"
    import threading

    # ray.init in a thread warns that it set no SIGTERM handler; the driver sets its own right after
    # (interrupts.sigterm_as_sigint), so on the console that line would be noise
    logging.getLogger("ray._private.worker").addFilter(
        lambda record: not record.getMessage().startswith("SIGTERM handler is not set"))
    deadline = time.monotonic() + ADDRESS_TIMEOUT_S
    probe_address(address, deadline, named)
    # ray.init can still wait minutes (a port that answers but no GCS behind it): it runs in a thread that
    # the main thread polls, so Ctrl-C works and the wait ends at the deadline.
    outcome: dict[str, BaseException | None] = {}

    def connect() -> None:
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True, runtime_env=runtime_env)
            outcome["error"] = None
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = err

    thread = threading.Thread(target=connect, daemon=True, name="tuner-ray-connect")
    thread.start()
    while thread.is_alive() and time.monotonic() < deadline + 5:
        thread.join(0.2)
    if thread.is_alive():
        raise UserError(f"cannot reach the Ray cluster at {address} within {ADDRESS_TIMEOUT_S:.0f} s (it accepts "
                        f"connections but does not answer as a Ray head); check {named}")
    err = outcome.get("error")
    if isinstance(err, (ConnectionError, ValueError, RuntimeError)):
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"cannot reach the Ray cluster at {address} ({excerpt(reason)}); "
                        f"start it with `ray start --head` or fix {named} (with token auth, export "
                        "RAY_AUTH_MODE=token)") from None
    if err is not None:
        raise err
    return address


def check_cluster_resources(space: SearchSpace) -> None:
    """Refuse a trial no node can hold, on a cluster that cannot grow; where an autoscaler can add such a node
    (a `ray up` or KubeRay cluster whose GPU workers scale from zero), say so and go on: the trials' pending
    requests are what makes it add one."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    per_node_cpus = max((n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    per_node_gpus = max((n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    want = space.resources
    problem = None
    if want.gpus > per_node_gpus:
        problem = (f"resources.gpus={want.gpus:g} per trial but the largest node has {per_node_gpus:g} GPU "
                   f"({gpus:g} in the cluster)", "lower resources.gpus or add GPU nodes")
    elif want.cpus > per_node_cpus:
        problem = (f"resources.cpus={want.cpus:g} per trial but the largest node has {per_node_cpus:g} CPUs "
                   f"({cpus:g} in the cluster)", "lower resources.cpus")
    if problem is None:
        return
    if cluster_can_grow():
        print(f"{space.path}: {problem[0]} now; the cluster's autoscaler can add a node that fits, so the trials "
              f"wait for it (PENDING). If none comes, stop with Ctrl-C and {problem[1]}", flush=True)
        return
    raise UserError(f"{space.path}: {problem[0]}; {problem[1]}")


def local_storage_warning(storage: str, machines: int, can_grow: bool) -> str | None:
    """A local --storage on a cluster of several machines (or one that can add some): every node writes its
    trials' checkpoints there, so it must be one folder they all mount; otherwise the driver cannot register,
    resume or final-fit from them. Ray does not check it; a warning, since a shared mount is a local path too."""
    if "://" in storage or (machines <= 1 and not can_grow):
        return None
    where = f"{machines} machines" if machines > 1 else "machines its autoscaler adds"
    return (f"warning: --storage {storage} is a local path and the cluster runs on {where}: it must be a folder "
            "every node mounts (NFS); otherwise give --storage s3://bucket/prefix, or the trials' checkpoints stay "
            "on the nodes that wrote them")


def cluster_can_grow() -> bool:
    """Whether the connected cluster's autoscaler can add nodes: autoscaler v2 (KubeRay), or v1 with node types
    from a cluster config (`ray up`). Every head runs v1, but for a cluster of `ray start` nodes with a read-only
    provider, whose node types are the nodes' own ids (`node_<id>`)."""
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        if is_autoscaler_v2(fetch_from_server=True):
            return True
        status = json.loads(_internal_kv_get(DEBUG_AUTOSCALING_STATUS) or b"{}")
    except Exception:  # noqa: BLE001 - no readable report (an RPC error, no monitor yet): as a fixed cluster
        return False
    return autoscaler_adds_nodes(status)


def autoscaler_adds_nodes(status: dict) -> bool:
    """From the v1 autoscaler's status report (`ray status`'s source): node types that are not the read-only
    provider's `node_<id>` names, or a node being launched."""
    report = status.get("autoscaler_report") if isinstance(status, dict) else None
    if not isinstance(report, dict):
        return False
    types = report.get("node_type_mapping") or {}
    configured = isinstance(types, dict) and any(not str(kind).startswith("node_") for kind in types.values())
    return configured or bool(report.get("pending_launches")) or bool(report.get("pending_nodes"))


def warn_if_storage_is_local(storage: str, address: str) -> None:
    """Print local_storage_warning's line for the connected cluster, if it has one."""
    import ray

    machines = {n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")}
    warning = local_storage_warning(storage, len(machines), address != "local" and cluster_can_grow())
    if warning:
        print(warning, flush=True)
