"""Data parallelism over JAX devices: rows of the data sharded over a one-axis ``Mesh``.

EM and VB are sums over observations: every sufficient statistic is ``resp.T @ Z`` and the
objective a sum of per-row terms. With the rows sharded over a mesh axis ``"obs"``, XLA's SPMD
partitioner computes each shard's statistics on its own device and all-reduces the (K, p) sums;
parameters (kilobytes) are replicated. No engine code changes: the compiled program is the same
function, compiled for sharded inputs.

The row count is padded up to a multiple of the device count with zero rows of weight 0, so
they add nothing to any statistic. k-means / k-means++ initialisation treat weight-0 rows as
absent, so a sharded fit equals the single-device fit up to floating-point reduction order
(``init_params="random"`` draws its random numbers per row and then differs).

Several processes or hosts (multi-controller JAX): start one process per host, call
:func:`initialize_distributed` in each before any other JAX work, then run the same script in
every process; ``jax.devices()`` lists the devices of all processes and ``devices="all"`` shards
the rows over all of them, each process computing its own rows' statistics and the sums crossing
processes by all-reduce (gloo on CPU, NCCL on GPU). Every process passes the whole data set (each
places its own rows from it) and receives the same result. For data that no single host can
hold, see :mod:`bayesgmm.streaming`.

CPU devices emulated in one process (``--xla_force_host_platform_device_count``) need
:data:`CPU_COLLECTIVE_FLAG` in ``XLA_FLAGS`` too, and EM and VB run their lanes one at a time on
them (``lanes_apart`` of :func:`bayesgmm._em_core._run`): they share one thread pool, on which
jaxlib's LAPACK kernels wait.
"""

from __future__ import annotations

import collections
import hashlib
import os
from typing import NamedTuple

import jax
import numpy as np

AXIS = "obs"

#: XLA:CPU's concurrency-optimised scheduler may order a program's independent all-reduces
#: differently in each process, and gloo then pairs collectives of different sizes (an abort:
#: "collective mismatch"). :func:`initialize_distributed` turns it off.
CPU_COLLECTIVE_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def on_shared_cpu_threads(array) -> bool:
    """Whether ``array`` lies on more than one CPU device of this process. Such devices are
    emulated (``--xla_force_host_platform_device_count``) and run on one thread pool, on which
    jaxlib's LAPACK kernels wait: EM and VB then run their lanes one after another
    (``lanes_apart`` of :func:`bayesgmm._em_core._run`). Devices of other processes do not count."""
    if not isinstance(array, jax.Array):
        return False
    here = jax.process_index()
    return sum(d.platform == "cpu" and d.process_index == here for d in array.sharding.device_set) > 1


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, local_device_ids=None,
                           initialization_timeout: int = 300) -> None:
    """Join this process to a multi-process JAX run: the way to fit EM and VB on a cluster.

    Start one process per host (or several on one machine), each running the same script, and
    call this in every process before any other JAX work. ``jax.devices()`` then lists the
    devices of every process, and ``fit_em(x, K, devices="all")`` or ``fit_vb(...,
    devices="all")`` shards the rows over all of them: each process computes its own rows'
    sufficient statistics and the sums cross processes by all-reduce. Every process passes the
    whole data set and gets the same :class:`~bayesgmm.FitResult`, equal to a one-process fit up
    to floating-point summation order.

    On CPU it selects gloo collectives (``jax_cpu_collectives_implementation``) and appends
    :data:`CPU_COLLECTIVE_FLAG` to ``XLA_FLAGS``, without which XLA:CPU may run a program's
    all-reduces in different orders in different processes.

    Parameters
    ----------
    coordinator_address : str, optional
        ``"host:port"`` of process 0, which every process can reach. None: detected from the
        cluster environment (SLURM, Open MPI, ...) as :func:`jax.distributed.initialize` does.
    num_processes : int, optional
        How many processes take part (None: detected).
    process_id : int, optional
        This process's number, 0 to ``num_processes - 1`` (None: detected).
    local_device_ids : sequence of int, optional
        The local devices this process uses (None: all of them).
    initialization_timeout : int, default 300
        Seconds to wait for every process to join.

    Raises
    ------
    RuntimeError
        From :func:`jax.distributed.initialize` when JAX has already computed something in this
        process, or when the processes cannot reach each other in time.

    Examples
    --------
    In each of two processes (``process_id`` 0 and 1)::

        import bayesgmm as bg
        bg.initialize_distributed("10.0.0.1:1234", num_processes=2, process_id=RANK)
        fit = bg.fit_em(x, 3, devices="all")   # the same result in both processes
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if CPU_COLLECTIVE_FLAG.split("=")[0] not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {CPU_COLLECTIVE_FLAG}".strip()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id, local_device_ids=local_device_ids,
                               initialization_timeout=initialization_timeout)


class RowSharding(NamedTuple):
    """Where the rows go: the mesh (None: one device, no sharding) and the padded row count."""

    mesh: object
    num_rows: int
    num_padded: int

    @property
    def num_devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.devices.size


#: The row buckets of small data: fits of up to 512 rows share one program, and fits of 513 to
#: 2048 rows another.
SMALL_BUCKETS = (512, 2048)

#: Above this many rows the data are not padded: compilation is then a small part of a fit, and
#: padding would copy the data.
MAX_BUCKETED = 2**20


def row_bucket(num_rows: int, small_buckets: tuple = SMALL_BUCKETS) -> int:
    """Rows the compiled program is built for: the first of ``small_buckets`` (default
    :data:`SMALL_BUCKETS`) that holds ``num_rows``, or above them the next multiple of 1/8 of the
    power of two below ``num_rows`` (8 buckets per octave: at most 12.5% padding); ``num_rows``
    itself above :data:`MAX_BUCKETED`.

    The data are padded with zero rows of weight 0, which add nothing to any statistic, so a new
    N within a bucket reuses the program instead of compiling one (a simulation study over N,
    bootstrap subsets, a test suite). The price is the padding's arithmetic: small, except on
    tiny data sets, where a warm fit then takes about twice as long (tenths of a second)."""
    n = int(num_rows)
    for bucket in small_buckets:
        if n <= bucket:
            return bucket
    if n > MAX_BUCKETED:
        return n
    step = 2 ** (n.bit_length() - 4)
    return -(-n // step) * step


#: The samplers' (NUTS, SVI, Gibbs) largest bucket of small data: every Gibbs fit of up to this
#: many rows runs one program (NUTS and SVI split it at 320 rows, :data:`SAMPLER_FINE_BUCKETS`).
#: Not 512: at 512 rows XLA:CPU splits the per-row loops of the gradient over its threads, and a
#: sampler's thousands of small sequential steps then wait on the threads at each step (Old
#: Faithful, K=2: 150-200 us per leapfrog step at 272-511 rows, 490 us at 512 rows on two cores;
#: up to 7x beside other busy processes).
SAMPLER_SMALL_BUCKET = 511

#: NUTS's and full-batch SVI's buckets of small data: up to 320 rows (the classic small data sets:
#: Old Faithful's 272 rows and subsets of it, iris, the galaxies), then up to
#: :data:`SAMPLER_SMALL_BUCKET`.
SAMPLER_FINE_BUCKETS = (320, SAMPLER_SMALL_BUCKET)


def sampler_row_bucket(num_rows: int, *, coarse: bool = False) -> int:
    """Rows a sampler's compiled program is built for: :data:`SAMPLER_FINE_BUCKETS` (every N up
    to 320 rows shares one program, every N of 321 to 511 rows another); above them,
    :func:`row_bucket`'s 8 buckets per octave (at most 12.5% padding). With ``coarse``, every N up
    to :data:`SAMPLER_SMALL_BUCKET` shares one program, then one bucket up to 2048 rows (as EM).

    NUTS and SVI evaluate every row at each of thousands of gradient steps, so padding costs
    them in proportion and their buckets are fine; a Gibbs sweep is cheap beside compiling its
    program, so it takes the coarse buckets. NUTS on Old Faithful (272 rows, K=2, 4 x 2000
    steps) samples in 1.0-1.2 s padded to 320 rows and in 1.35-1.9 s padded to 511; on its first
    150 rows the bucket of 320 takes 0.96-1.4 s against 1.2-1.9 s at 511 (three warm fits per
    setting, two rounds). The price of the second bucket is one more program for studies whose
    sizes straddle 320 rows.

    Parameters
    ----------
    num_rows : int
        N, the data's rows.
    coarse : bool
        Gibbs's buckets: one up to 511 rows, one up to 2048.

    Returns
    -------
    int
        The padded row count (at least ``num_rows``).
    """
    return row_bucket(num_rows, (SAMPLER_SMALL_BUCKET, 2048) if coarse else SAMPLER_FINE_BUCKETS)


def resolve(devices, num_rows: int) -> RowSharding:
    """Turn the public ``devices`` argument into a :class:`RowSharding`.

    ``devices``: None (no sharding), ``"all"`` (every device of ``jax.devices()``), an int (the
    first that many devices), a sequence of ``jax.Device`` or a one-axis ``jax.sharding.Mesh``.
    """
    from jax.sharding import Mesh

    if devices is None:
        return RowSharding(None, num_rows, row_bucket(num_rows))
    if isinstance(devices, Mesh):
        if len(devices.axis_names) != 1:
            raise ValueError(
                f"devices: a Mesh must have exactly one axis (the rows are sharded over it); got axes "
                f"{devices.axis_names}. Build it as jax.sharding.Mesh(np.array(jax.devices()), ('obs',))."
            )
        mesh = Mesh(devices.devices.reshape(-1), (AXIS,))
    else:
        available = jax.devices()
        if isinstance(devices, str):
            if devices != "all":
                raise ValueError(f"devices must be None, 'all', an int, a list of jax devices or a Mesh; got {devices!r}.")
            chosen = available
        elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
            if not 1 <= devices <= len(available):
                raise ValueError(
                    f"devices={devices} but {len(available)} JAX device(s) are available; pass a number "
                    f"from 1 to {len(available)} (on CPU, set XLA_FLAGS='--xla_force_host_platform_device_count=N "
                    f"{CPU_COLLECTIVE_FLAG}' before importing JAX to get N devices whose collectives run in one order)."
                )
            chosen = available[: int(devices)]
        else:
            chosen = list(devices) if isinstance(devices, (list, tuple, np.ndarray)) else []
            if not chosen or not all(isinstance(d, jax.Device) for d in chosen):
                raise ValueError("devices must be None, 'all', an int, a non-empty list of jax devices or a Mesh.")
            if len(set(chosen)) != len(chosen):
                raise ValueError(f"devices lists a device more than once ({chosen}); each shard of the rows needs a "
                                 "device of its own.")
        mesh = Mesh(np.array(chosen), (AXIS,))
    if spans_processes(mesh):  # every process reaches the same verdict from the same global list: none waits
        per_process = collections.Counter(d.process_index for d in mesh.devices.flat)
        if len(set(per_process.values())) > 1:
            counts = ", ".join(f"process {p}: {n}" for p, n in sorted(per_process.items()))
            raise ValueError(
                f"devices: a multi-process fit needs the same number of devices from every process; these hold "
                f"{counts}. Pass devices as a list with as many of each process's devices (e.g. "
                "[next(d for d in jax.devices() if d.process_index == p) for p in range(jax.process_count())], one "
                "each), or give every process as many devices (XLA_FLAGS on CPU).")
    size = mesh.devices.size
    return RowSharding(mesh, num_rows, -(-num_rows // size) * size)


def by_rows(mesh):
    """The sharding that splits an array's leading (row) axis over ``mesh``'s one axis."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec(AXIS))


def spans_processes(mesh) -> bool:
    """Whether ``mesh`` (or None) holds devices of more than one process (multi-controller JAX)."""
    return mesh is not None and len({d.process_index for d in mesh.devices.flat}) > 1


def put_rows(x: np.ndarray, sharding):
    """``jax.device_put(x, sharding)`` for host rows. Across processes each process places its
    own shards from its copy of ``x``: ``device_put`` would first check that every process holds
    the same array by gathering all of ``x`` onto every process (N rows through the network per
    fit, and per chunk of every pass when streaming). A fit checks its processes' agreement once,
    from digests (:func:`agree_across_processes`)."""
    if sharding is None or not spans_processes(getattr(sharding, "mesh", None)):
        return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: np.asarray(x[index]))


def _digest(value) -> bytes:
    """Eight bytes that identify ``value``: arrays by dtype, shape and contents, containers by
    their items, anything else by its ``repr``."""
    h = hashlib.blake2b(digest_size=8)
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        value = jax.random.key_data(value)  # a typed PRNG key: its raw numbers
    if value is None or isinstance(value, (bool, int, float, str, np.generic)):
        h.update(repr(value).encode())
    elif isinstance(value, dict):
        for name in sorted(value):
            h.update(repr(name).encode() + _digest(value[name]))
    elif isinstance(value, (list, tuple)):
        h.update(b"seq")
        for item in value:
            h.update(_digest(item))
    elif hasattr(value, "shape") and hasattr(value, "dtype"):
        arr = np.ascontiguousarray(np.asarray(value))
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(memoryview(arr).cast("B"))
    else:
        leaves = jax.tree_util.tree_leaves(value)
        if len(leaves) == 1 and leaves[0] is value:
            h.update(repr(value).encode())
        else:
            h.update(_digest(list(leaves)))
    return h.digest()


def agree_across_processes(rows: RowSharding, what: str, **facts) -> None:
    """Raise on every process where the processes of a multi-process fit (rows sharded over
    several processes' devices) were not given the same call: ``facts`` (the data, the options,
    the seed's key, ...) are compared by digests gathered from every process. Without this, a
    difference ran on: different seeds returned a fit that was neither seed's, a different
    ``reg_covar`` a different result in each process, a different K or tolerance waited forever,
    a different N or structure aborted in gloo ("collective mismatch").

    First every process says whether it got this far (:class:`ProcessCall`: a process whose own
    checks refused its call says so instead, and the others raise too)."""
    if not spans_processes(rows.mesh):
        return
    _gather_refusals(what, refused=False)
    # x64 on in one process only: its data and options were "different", which they were not
    facts = {**facts, "precision (jax_enable_x64)": str(jax.dtypes.canonicalize_dtype(np.float64))}
    names = sorted(facts)
    if len(names) > MAX_FACTS:
        raise RuntimeError(f"{len(names)} facts to compare across processes; at most {MAX_FACTS}")
    # one shape whatever the call: the function and the facts' names first, then each fact (a
    # call of another function, with other facts, compared a gather of another shape: gloo aborted)
    digests = [_digest((what, names))] + [_digest(facts[name]) for name in names]
    digests += [bytes(8)] * (MAX_FACTS + 1 - len(digests))
    every = _allgather(np.frombuffer(b"".join(digests), np.uint8).reshape(MAX_FACTS + 1, 8))  # (processes, 1 + facts, 8)
    if not (every[:, 0] == every[:1, 0]).all():
        raise ValueError(
            f"the processes of this multi-process {what} (process {jax.process_index()} of {jax.process_count()}) "
            "were not all running it: another process called another function (or another engine). Every process "
            "must run the same call with the same data, options and seed.")
    differ = [name for i, name in enumerate(names, start=1) if not (every[:, i] == every[:1, i]).all()]
    if differ:
        raise ValueError(
            f"the processes of this multi-process {what} were called with different {', '.join(differ)} "
            f"(process {jax.process_index()} of {jax.process_count()}): every process must run the same call "
            "with the same data, options and seed (it places its own rows from the full data).")


#: The most facts :func:`agree_across_processes` compares (its gather has one shape for every call).
MAX_FACTS = 24


def _allgather(mine: np.ndarray) -> np.ndarray:
    """Every process's ``mine`` (the same shape and dtype in each), stacked in process order:
    ``(processes, *mine.shape)``. Gathered over one device of each process (its first), so any
    numbers of local devices (``multihost_utils.process_allgather`` lays out ``jax.devices()`` as
    processes x local devices: with 2 devices in one process and 1 in another it failed)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    firsts = [min((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)
              for p in range(jax.process_count())]
    mesh = Mesh(np.array(firsts), ("process",))
    local = jax.device_put(mine[None], firsts[jax.process_index()])
    spread = jax.make_array_from_single_device_arrays((len(firsts),) + mine.shape,
                                                      NamedSharding(mesh, PartitionSpec("process")), [local])
    every = _REPLICATE(spread, NamedSharding(mesh, PartitionSpec()))
    return np.asarray(every.addressable_data(0))


def _replicate(a, sharding):
    return jax.lax.with_sharding_constraint(a, sharding)


_REPLICATE = jax.jit(_replicate, static_argnums=1)


def _gather_refusals(what: str, *, refused: bool) -> None:
    """Every process's word on whether its own checks let the call through (one byte each);
    raises in a process whose checks passed where another's did not."""
    every = _allgather(np.array([refused], np.uint8)).reshape(-1)
    others = [int(i) for i in np.flatnonzero(every) if i != jax.process_index()]
    if others and not refused:
        raise ValueError(
            f"process(es) {others} of this multi-process {what} refused the call with an error of their own (see "
            f"their output); process {jax.process_index()} stops too. Every process must run the same call with the "
            "same data, options and seed.")


class ProcessCall:
    """The checks of a fit that may span processes, as a context whose last step is
    :meth:`agree`: an exception raised inside it before that step (a process's own data found
    invalid, say) is reported to the other processes, which raise too, instead of waiting forever
    for this one where they compare their calls.

    ``devices`` is the fit's argument; nothing is exchanged unless it names devices of several
    processes.
    """

    def __init__(self, devices, what: str):
        self.devices, self.what, self.compared = devices, what, False

    def agree(self, rows: RowSharding, **facts) -> None:
        """:func:`agree_across_processes` for this call."""
        self.compared = True
        agree_across_processes(rows, self.what, **facts)

    def __enter__(self) -> "ProcessCall":
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, Exception) and not self.compared and self.devices is not None and jax.process_count() > 1:
            try:
                mesh = resolve(self.devices, 1).mesh
            except Exception:  # the devices themselves were refused: nothing is known of the others
                mesh = None
            if spans_processes(mesh):
                _gather_refusals(self.what, refused=True)
        return False


def pad_observed(observed, num_padded: int, sharding: "RowSharding | None" = None):
    """A missing-value mask (N, D) (or None) extended to ``num_padded`` rows: padding rows count as
    observed (they are zeros of weight 0, as :func:`shard_rows` makes them); with a ``sharding``
    that has a mesh, placed on it by rows as :func:`shard_rows` places the data."""
    if observed is not None and observed.shape[0] < num_padded:
        observed = np.concatenate([observed, np.ones((num_padded - observed.shape[0], observed.shape[1]), bool)])
    if observed is None or sharding is None or sharding.mesh is None:
        return observed
    return put_rows(observed, by_rows(sharding.mesh))


#: Byte alignment at which XLA's CPU client takes a NumPy array's memory as it is.
CPU_ALIGNMENT = 64


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-ordered array whose data start at a multiple of :data:`CPU_ALIGNMENT`
    bytes: placed on a CPU device (``jax.device_put``) it is used in place, not copied (NumPy's
    own allocations are 16-byte aligned, and copying 12.8 MB took 8-17 ms of a fit at N=1e5, D=16)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + CPU_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % CPU_ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def device_ready(x: np.ndarray) -> np.ndarray:
    """``x`` itself when its memory can be placed on a CPU device without a copy (C-ordered and
    aligned), else such a copy: the one copy the device would have made."""
    if not isinstance(x, np.ndarray) or (x.flags.c_contiguous and x.ctypes.data % CPU_ALIGNMENT == 0):
        return x
    out = aligned_empty(x.shape, x.dtype)
    out[...] = x
    return out


def shard_rows(sharding: RowSharding, x: np.ndarray, sample_weight):
    """Pad ``x`` (N, D) and its weights to the padded row count and place them on the mesh.

    Returns ``(x, sample_weight)``: JAX arrays sharded by rows, or without a mesh NumPy arrays
    padded to the row bucket in memory a CPU device uses in place (:func:`aligned_empty`; when no
    padding is needed, ``x`` itself if already so placed, else an aligned copy
    (:func:`device_ready`), and ``sample_weight`` unchanged). Padding rows are zeros with weight 0.
    """
    pad = sharding.num_padded - sharding.num_rows
    if sharding.mesh is None and not pad:
        return device_ready(x), sample_weight
    if sharding.mesh is None:  # padded into memory the CPU device uses in place
        padded, w = aligned_empty((sharding.num_padded, x.shape[1]), x.dtype), aligned_empty(sharding.num_padded, x.dtype)
        padded[: sharding.num_rows], padded[sharding.num_rows :] = x, 0
        w[: sharding.num_rows], w[sharding.num_rows :] = 1 if sample_weight is None else sample_weight, 0
        return padded, w
    w = np.ones(sharding.num_rows, x.dtype) if sample_weight is None else np.asarray(sample_weight, x.dtype)
    w = np.concatenate([w, np.zeros(pad, x.dtype)]) if pad else w
    x = np.concatenate([x, np.zeros((pad, x.shape[1]), x.dtype)]) if pad else x
    rows = by_rows(sharding.mesh)
    return put_rows(x, rows), put_rows(w, rows)
